"""Lead import: formats, duplicates, invalid numbers, encodings, re-import, reject report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine.leads import LeadFileError, load_leads, normalize_phone
from engine.store.memory import MemoryStore


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


@pytest.mark.parametrize(("raw", "e164"), [
    ("(212) 555-0142", "+12125550142"),
    ("+1 212 555 0142", "+12125550142"),
    ("011 44 20 7946 0958", "+442079460958"),
    ("+44 20 7946 0958", "+442079460958"),
])
def test_normalize(raw, e164):
    assert normalize_phone(raw, "US") == e164


@pytest.mark.parametrize("raw", ["", "12345", "not a number", "+1 212 555 01420000", "+1 000 555 0142"])
def test_normalize_rejects(raw):
    with pytest.raises(ValueError):
        normalize_phone(raw, "US")


def test_csv_rows_cleaned_rejected_and_merged(tmp_path):
    p = write(tmp_path, "leads.csv",
              "lead_id,phone,tier,tags,timezone,plan,consent_source,consent_expires\n"
              "A,(212) 555-0142,1,price;download,,gold,web-form,2027-01-31\n"
              "B,555,1,,,,,\n"
              "C,+1 212 555 0142,0,vip,,,,\n"
              "D,+1 415 555 0101,x,,,,,\n"
              "E,+1 415 555 0102,1,,Mars/Base,,,\n"
              "F,+1 415 555 0103,1,,,,,2027-13-45\n"
              "G,+44 20 7946 0958,2,,,silver,,\n")
    r = load_leads(p, "c1", "US")
    assert [lead.lead_id for lead in r.leads] == ["A", "G"]
    a = r.leads[0]
    assert a.phone == "+12125550142" and a.tier == 0  # merged with C: best tier kept
    assert a.tags == ("price", "download", "vip")
    assert a.attributes == {"plan": "gold"}
    assert a.consent_source == "web-form" and a.consent_expires.year == 2027
    assert a.timezone == "America/New_York"  # derived from the number
    assert r.leads[1].timezone == "Europe/London"
    assert r.merged == 1
    assert [(x.line, x.field) for x in r.rejects] == [(3, "phone"), (5, "tier"), (6, "timezone"),
                                                     (7, "consent_expires")]
    out = tmp_path / "rejects.csv"
    r.write_rejects(out)
    rows = list(csv.DictReader(out.open()))
    assert rows[0] == {"line": "3", "field": "phone", "value": "555", "reason": rows[0]["reason"]}
    assert rows[0]["reason"]


def test_jsonl_with_a_broken_line(tmp_path):
    p = write(tmp_path, "leads.jsonl",
              json.dumps({"lead_id": "A", "phone": "+12125550142", "tags": ["a", "b"], "age": 41}) + "\n"
              "{not json\n"
              + json.dumps(["a list"]) + "\n"
              + json.dumps({"lead_id": "B", "phone": "+12125550143"}) + "\n")
    r = load_leads(p, "c1")
    assert [lead.lead_id for lead in r.leads] == ["A", "B"]
    assert r.leads[0].tags == ("a", "b") and r.leads[0].attributes == {"age": 41}
    assert [(x.line, x.reason.split(":")[0]) for x in r.rejects] == [(2, "not valid JSON"), (3, "not a JSON object")]


def test_semicolon_csv_and_a_bom(tmp_path):
    p = write(tmp_path, "leads.csv", "\ufeffphone;name\n+12125550142;Ann\n+12125550143;Bob\n")
    r = load_leads(p, "c1")
    assert len(r.leads) == 2 and r.leads[0].attributes == {"name": "Ann"}


def test_wrong_encoding_is_refused_whole(tmp_path):
    p = write(tmp_path, "leads.csv", "phone,name\n+12125550142,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(LeadFileError, match=r"not UTF-8.*nothing was imported"):
        load_leads(p, "c1")


def test_missing_phone_column_is_refused_whole(tmp_path):
    p = write(tmp_path, "leads.csv", "name,email\nAnn,a@example.com\n")
    with pytest.raises(LeadFileError, match="no phone column"):
        load_leads(p, "c1")


def test_row_with_too_many_fields(tmp_path):
    p = write(tmp_path, "leads.csv", "phone,name\n+12125550142,Ann,extra\n+12125550143,Bob\n")
    r = load_leads(p, "c1")
    assert len(r.leads) == 1 and r.rejects[0].line == 2


def test_numbers_known_invalid_are_not_brought_back(tmp_path):
    p = write(tmp_path, "leads.csv", "phone\n+12125550142\n+12125550143\n")
    r = load_leads(p, "c1", known_invalid={"+12125550142"})
    assert [lead.phone for lead in r.leads] == ["+12125550143"]
    assert "invalid on an earlier call" in r.rejects[0].reason


async def test_reimport_updates_and_never_duplicates(tmp_path):
    store = MemoryStore()
    first = write(tmp_path, "a.csv", "lead_id,phone,tags\nA,+12125550142,x\nB,+12125550143,\n")
    assert await store.add_leads(load_leads(first, "c1").leads) == 2
    again = write(tmp_path, "b.csv", "lead_id,phone,tags\nZ,(212) 555-0142,y\nC,+12125550144,\n")
    assert await store.add_leads(load_leads(again, "c1").leads) == 1
    counts = await store.lead_counts("c1")
    assert sum(counts.values()) == 3
    claimed = await store.claim_leads("c1", 10, now=1e12, node_id="n", lease_s=60)
    a = next(lead for lead in claimed if lead.lead_id == "A")
    assert a.tags == ("y",)  # updated in place, id kept

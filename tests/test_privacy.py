"""Role views, the agent's screen-pop, notes, and the tamper-evident audit log."""

from __future__ import annotations

import json

import pytest
from helpers import campaign, human, run_script

import plugins.ranking as ranking
import plugins.risk as risk
from engine.audit import AuditLog
from engine.models import Alert, Lead
from engine.privacy import AccessDenied, add_note, screen_pop, view_lead


def lead() -> Lead:
    return Lead("L1", "t", "+12125550142", tags=("vip",),
                attributes={"first_name": "Ann", "email": "ann@example.com", "refused_products": "gold; silver"})


@pytest.fixture
def audit(tmp_path):
    return AuditLog(tmp_path / "audit.jsonl", clock=lambda: 1000.0)


def test_agent_sees_number_only_during_the_call(audit):
    with pytest.raises(AccessDenied):
        view_lead(lead(), role="agent", actor="A1", reason="browsing", audit=audit)
    v = view_lead(lead(), role="agent", actor="A1", reason="call", audit=audit, in_call=True)
    assert v["phone"] == "+12125550142" and v["attributes"] == {"first_name": "Ann"}
    assert [e["action"] for e in audit.entries()] == ["denied", "view"]


def test_supervisor_sees_masked_number_and_sensitive_fields(audit):
    v = view_lead(lead(), role="supervisor", actor="S1", reason="quality review", audit=audit)
    assert "555" not in v["phone"] and v["attributes"]["email"] == "***"
    admin = view_lead(lead(), role="admin", actor="root", reason="export", audit=audit)
    assert admin["attributes"]["email"] == "ann@example.com"


def test_every_access_is_audited_with_who_what_why_and_no_personal_data(audit):
    view_lead(lead(), role="admin", actor="root", reason="subject access request", audit=audit)
    add_note(lead(), note="call back after 5pm", tags=("callback",), agent_id="A1", audit=audit)
    entries = audit.entries()
    assert [(e["actor"], e["action"], e["reason"]) for e in entries] == [
        ("root", "view", "subject access request"), ("A1", "update", "note during call")]
    raw = audit.path.read_text()
    assert "+12125550142" not in raw and "ann@example.com" not in raw
    with pytest.raises(ValueError):
        audit.record(actor="x", role="admin", action="view", lead_id="L1", fields=(), reason="")


def test_audit_chain_detects_tampering(audit):
    for i in range(3):
        audit.record(actor=f"u{i}", role="admin", action="view", lead_id="L1", fields=("tags",), reason="r")
    assert audit.verify() is None
    lines = audit.path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["actor"] = "someone else"
    lines[1] = json.dumps(edited, separators=(",", ":"), sort_keys=True)
    audit.path.write_text("\n".join(lines) + "\n")
    assert audit.verify() == 3
    reopened = AuditLog(audit.path, clock=lambda: 0.0)
    reopened.record(actor="u", role="admin", action="view", lead_id="L1", fields=(), reason="r")  # appends


def test_screen_pop_payload(audit):
    alerts = (Alert("complained_before", "complained", "high", ("cancel",)), Alert("recommended_offer",
                                                                                  "recommended offer: premium"))
    pop = screen_pop(lead(), agent_id="A1", history=({"started": "x", "outcome": "no_answer", "phone": "+1"},),
                     alerts=alerts, audit=audit)
    assert pop["lead"]["phone"] == "+12125550142"
    assert pop["do_not_offer"] == ["gold", "silver"]
    assert pop["recommended_offer"] == "premium"
    assert [a["code"] for a in pop["alerts"]] == ["complained_before"]
    assert pop["history"] == [{"started": "x", "outcome": "no_answer", "disposition": None, "agent_id": None,
                               "note": None}]


def test_connected_call_puts_the_screen_pop_on_the_agents_screen(vrun, tmp_path):
    audit = AuditLog(tmp_path / "a.jsonl", clock=lambda: 0.0)
    cfg = campaign(retry={"max_attempts": 1}, ranking={"products": {"premium": ["vip"]}})
    plans = {"L1": human()}

    leads = [Lead("L1", "t", "+12125550001", tags=("vip",), attributes={"complained": "yes"})]
    dialer, _, _ = vrun(run_script(cfg, plans, leads=leads, plugins=[ranking, risk], audit=audit))
    pop = dialer.desk.screen_pops["A1"]
    assert pop["recommended_offer"] == "premium"
    assert pop["alerts"][0]["code"] == "complained_before"
    assert [e["reason"] for e in audit.entries()] == ["connected call"]

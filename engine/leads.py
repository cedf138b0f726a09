"""Reading leads for a campaign from CSV (the simple loader the ``run`` command uses).

Bad rows are reported with file, line, field and reason and never stop the
good ones; a file without a phone column is refused whole before anything is
stored.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import phonenumbers

from engine.models import Lead


@dataclass
class LeadFileError(Exception):
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class LoadReport:
    leads: list[Lead] = field(default_factory=list)
    rejects: list[tuple[int, str, str, str]] = field(default_factory=list)  # line, field, value, reason


KNOWN = {"lead_id", "phone", "tier", "score", "timezone", "tags", "consent_source", "consent_expires"}


def normalize_phone(raw: str, region: str) -> str:
    """E.164 from what an operator typed; raises ValueError with the reason."""
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(str(exc)) from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("not a possible number")
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def load_csv(path: str | Path, campaign_id: str, region: str = "US") -> LoadReport:
    path = Path(path)
    report = LoadReport()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LeadFileError(str(path), "file not found") from None
    except UnicodeDecodeError as exc:
        raise LeadFileError(str(path), f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "phone" not in [f.strip() for f in reader.fieldnames]:
        raise LeadFileError(str(path), f"no 'phone' column (columns: {reader.fieldnames})")
    seen: set[str] = set()
    for n, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        try:
            phone = normalize_phone(row["phone"], region)
        except ValueError as exc:
            report.rejects.append((n, "phone", row.get("phone", ""), str(exc)))
            continue
        if phone in seen:
            report.rejects.append((n, "phone", row["phone"], "duplicate of an earlier row"))
            continue
        seen.add(phone)
        try:
            tier = int(row.get("tier") or 1)
            score = float(row.get("score") or 0)
        except ValueError as exc:
            report.rejects.append((n, "tier/score", f"{row.get('tier')}/{row.get('score')}", str(exc)))
            continue
        report.leads.append(Lead(
            lead_id=row.get("lead_id") or f"L{n - 1:07d}",
            campaign_id=campaign_id,
            phone=phone,
            tier=tier,
            score=score,
            timezone=row.get("timezone") or None,
            tags=tuple(t for t in (row.get("tags") or "").replace(";", ",").split(",") if t),
            attributes={k: v for k, v in row.items() if k not in KNOWN and v},
            consent_source=row.get("consent_source") or None,
        ))
    return report

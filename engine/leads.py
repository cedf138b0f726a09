"""Lead import and cleaning: CSV or JSONL in, clean E.164 leads out, with a reject report.

Operators' files are messy. Every row is judged on its own: a bad row is
reported (line, field, value, reason) and never stops the good ones. A file
that cannot be read as a whole (wrong encoding, no phone column, not CSV/JSONL)
is refused before anything is returned, so nothing is ever half-imported.
Duplicates are merged by number (tags and attributes united, the first row's
identity kept), so re-importing a file updates leads instead of doubling them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

from engine.models import Lead

KNOWN = {"lead_id", "phone", "tier", "score", "timezone", "tags", "consent_source", "consent_expires"}
PHONE_COLUMNS = ("phone", "phone_number", "number", "msisdn", "telephone")


@dataclass
class LeadFileError(Exception):
    """The file as a whole cannot be imported; nothing from it was taken."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Reject:
    line: int
    field: str
    value: str
    reason: str


@dataclass
class LoadReport:
    leads: list[Lead] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    merged: int = 0  # rows folded into an earlier row with the same number

    def write_rejects(self, path: str | Path) -> None:
        with Path(path).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["line", "field", "value", "reason"])
            for r in self.rejects:
                w.writerow([r.line, r.field, r.value, r.reason])


def normalize_phone(raw: str, region: str) -> str:
    """E.164 from what an operator typed; raises ValueError with the reason."""
    if not raw or not raw.strip():
        raise ValueError("empty")
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(str(exc).split(") ", 1)[-1]) from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("not a possible number (wrong length)")
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid number for its region")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def zones_of(phone: str) -> tuple[str, ...]:
    """The IANA zones a number may be in (several for some area codes and mobiles)."""
    zones = pn_timezone.time_zones_for_number(phonenumbers.parse(phone))
    return tuple(z for z in zones if z != "Etc/Unknown")


def _parse_expiry(value: str) -> datetime:
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO date such as 2027-01-31 or 2027-01-31T12:00:00+00:00") from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, Any] | None, str]]]:
    """(columns, [(line, row or None, error)]) from CSV or JSONL text."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows: list[tuple[int, dict[str, Any] | None, str]] = []
        columns: set[str] = set()
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((n, None, f"not valid JSON: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                rows.append((n, None, "not a JSON object"))
                continue
            columns.update(obj)
            rows.append((n, obj, ""))
        if not any(r for _, r, _ in rows):
            raise LeadFileError(str(path), "no JSON object found; expected one lead per line")
        return sorted(columns), rows
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    if not reader.fieldnames:
        raise LeadFileError(str(path), "empty file")
    out = []
    for row in reader:
        if None in row:
            out.append((reader.line_num, None, f"{len(row[None]) + len(reader.fieldnames)} fields where the header "
                        f"has {len(reader.fieldnames)}"))
            continue
        out.append((reader.line_num, row, ""))
    return [c.strip() for c in reader.fieldnames], out


def load_leads(path: str | Path, campaign_id: str, region: str = "US", *,
               known_invalid: set[str] | None = None, now: datetime | None = None) -> LoadReport:
    """Read, clean and merge a CSV or JSONL lead file. Raises LeadFileError for an unreadable file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LeadFileError(str(path), "file not found") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LeadFileError(str(path), f"not UTF-8 text (invalid byte at offset {exc.start}); "
                            "save it as UTF-8 and import again — nothing was imported") from None
    columns, rows = _rows(path, text)
    phone_col = next((c for c in PHONE_COLUMNS if c in columns), None)
    if phone_col is None:
        raise LeadFileError(str(path), f"no phone column (looked for {', '.join(PHONE_COLUMNS)}; "
                            f"found {', '.join(columns) or 'none'}) — nothing was imported")
    report = LoadReport()
    by_phone: dict[str, Lead] = {}
    today = now or datetime.now(UTC)
    for line, row, error in rows:
        if row is None:
            report.rejects.append(Reject(line, "(row)", "", error))
            continue
        row = {str(k).strip(): v for k, v in row.items() if k is not None}
        value = str(row.get(phone_col) or "").strip()
        try:
            phone = normalize_phone(value, region)
        except ValueError as exc:
            report.rejects.append(Reject(line, phone_col, value, str(exc)))
            continue
        if known_invalid and phone in known_invalid:
            report.rejects.append(Reject(line, phone_col, value, "number found invalid on an earlier call"))
            continue
        try:
            lead = _lead(row, line, phone, campaign_id, phone_col, today)
        except _FieldError as exc:
            report.rejects.append(Reject(line, exc.field, exc.value, exc.reason))
            continue
        first = by_phone.get(phone)
        if first is None:
            by_phone[phone] = lead
            report.leads.append(lead)
        else:
            first.tags = tuple(dict.fromkeys(first.tags + lead.tags))
            first.attributes = {**lead.attributes, **first.attributes}
            first.tier = min(first.tier, lead.tier)
            report.merged += 1
    return report


class _FieldError(Exception):
    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field, self.value, self.reason = field, str(value), reason


def _lead(row: dict[str, Any], line: int, phone: str, campaign_id: str, phone_col: str, today: datetime) -> Lead:
    def text(key: str) -> str:
        v = row.get(key)
        return "" if v is None else str(v).strip()

    try:
        tier = int(text("tier") or 1)
    except ValueError:
        raise _FieldError("tier", text("tier"), "not a whole number") from None
    if not 0 <= tier <= 9:
        raise _FieldError("tier", tier, "must be 0 (highest intent) to 9")
    try:
        score = float(text("score") or 0)
    except ValueError:
        raise _FieldError("score", text("score"), "not a number") from None
    tz = text("timezone") or None
    if tz:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise _FieldError("timezone", tz, "unknown IANA time zone (e.g. America/Chicago)") from None
    else:
        zones = zones_of(phone)
        tz = zones[0] if len(zones) == 1 else None  # several zones: decided at dial time, most restrictive
    expires = None
    if text("consent_expires"):
        try:
            expires = _parse_expiry(text("consent_expires"))
        except ValueError as exc:
            raise _FieldError("consent_expires", text("consent_expires"), str(exc)) from None
    raw_tags = row.get("tags")
    if isinstance(raw_tags, list):
        tags = tuple(str(t).strip() for t in raw_tags if str(t).strip())
    else:
        tags = tuple(t.strip() for t in text("tags").replace(";", ",").split(",") if t.strip())
    attributes = {k: v for k, v in row.items() if k not in KNOWN and k != phone_col and v not in (None, "")}
    return Lead(
        lead_id=text("lead_id") or f"L{line:07d}",
        campaign_id=campaign_id,
        phone=phone,
        tier=tier,
        score=score,
        timezone=tz,
        tags=tags,
        attributes=attributes,
        consent_source=text("consent_source") or None,
        consent_expires=expires,
    )


def load_csv(path: str | Path, campaign_id: str, region: str = "US") -> LoadReport:
    """Kept for callers that only know CSV; same as ``load_leads``."""
    return load_leads(path, campaign_id, region)

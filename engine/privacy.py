"""Who may see which lead fields, and the agent's screen-pop built under those rules.

Roles see only what their work needs: an agent sees the number and the basic
tags only while on a call with that person; a supervisor sees everything but
the fields marked sensitive (masked); an admin sees all. Every view goes through
``view_lead``, which writes an audit entry first, so no access is unrecorded.
"""

from __future__ import annotations

from typing import Any

from engine.audit import AuditLog
from engine.models import Alert, Lead, mask_phone

ROLES = ("agent", "supervisor", "admin")
# Lead attributes a supervisor sees masked, and that a store encrypts at rest (with the number).
SENSITIVE_ATTRIBUTES = ("email", "address", "date_of_birth", "national_id")
# Encrypted at rest too: what agents write about a person during calls is personal data as well.
ENCRYPTED_ATTRIBUTES = (*SENSITIVE_ATTRIBUTES, "notes")
AGENT_ATTRIBUTES = ("first_name", "preferred_name", "language", "customer_type")


class AccessDenied(PermissionError):
    """The role may not see this lead now."""


def view_lead(lead: Lead, *, role: str, actor: str, reason: str, audit: AuditLog, in_call: bool = False,
              sensitive: tuple[str, ...] = SENSITIVE_ATTRIBUTES) -> dict[str, Any]:
    """The lead as ``role`` may see it; the access is audited before anything is returned."""
    if role not in ROLES:
        raise AccessDenied(f"unknown role {role!r}")
    if role == "agent" and not in_call:
        audit.record(actor=actor, role=role, action="denied", lead_id=lead.lead_id, fields=(), reason=reason)
        raise AccessDenied("agents see a lead only while on a call with that person")
    view: dict[str, Any] = {"lead_id": lead.lead_id, "tier": lead.tier, "tags": list(lead.tags)}
    if role == "agent":
        view["phone"] = lead.phone
        view["attributes"] = {k: lead.attributes[k] for k in AGENT_ATTRIBUTES if k in lead.attributes}
    elif role == "supervisor":
        view["phone"] = mask_phone(lead.phone)
        view["attributes"] = {k: ("***" if k in sensitive else v) for k, v in lead.attributes.items()}
        view["consent_source"] = lead.consent_source
    else:
        view["phone"] = lead.phone
        view["attributes"] = dict(lead.attributes)
        view["consent_source"] = lead.consent_source
        view["consent_expires"] = lead.consent_expires.isoformat() if lead.consent_expires else None
        view["timezone"] = lead.timezone
    shown = tuple(sorted({"lead_id", "tier", "tags", *view, *(f"attributes.{k}" for k in view["attributes"])}))
    audit.record(actor=actor, role=role, action="view", lead_id=lead.lead_id, fields=shown, reason=reason)
    return view


def screen_pop(lead: Lead, *, agent_id: str, history: tuple[dict[str, Any], ...], alerts: tuple[Alert, ...],
               audit: AuditLog) -> dict[str, Any]:
    """What the agent's screen shows when a call is connected to them."""
    view = view_lead(lead, role="agent", actor=agent_id, reason="connected call", audit=audit, in_call=True)
    return _pop(lead, view, history, alerts)


def _notes(lead: Lead) -> list[Any]:
    notes = lead.attributes.get("notes")
    return list(notes) if isinstance(notes, list) else []


def _pop(lead: Lead, view: dict[str, Any], history: tuple[dict[str, Any], ...],
         alerts: tuple[Alert, ...]) -> dict[str, Any]:
    """The screen around the lead's view: history, notes, what not to offer, alerts, the offer."""
    refused = lead.attributes.get("refused_products") or ""
    refused_list = refused if isinstance(refused, list) else [p.strip() for p in str(refused).split(";") if p.strip()]
    offer = next((a.message.removeprefix("recommended offer: ") for a in alerts if a.code == "recommended_offer"),
                 None)
    return {
        "lead": view,
        "history": [{k: h.get(k) for k in ("started", "outcome", "disposition", "agent_id", "note")} for h in history],
        "notes": _notes(lead),
        "do_not_offer": refused_list,
        "alerts": [{"code": a.code, "message": a.message, "severity": a.severity,
                    "avoid_phrases": list(a.avoid_phrases)} for a in alerts if a.code != "recommended_offer"],
        "recommended_offer": offer,
    }


def preview_pop(lead: Lead, *, agent_id: str, history: tuple[dict[str, Any], ...], alerts: tuple[Alert, ...],
                audit: AuditLog) -> dict[str, Any]:
    """What the agent's screen shows when a lead is offered for preview (before any dial).

    The agent decides on the person (name, tags, history, alerts, offer) but the number itself is
    shown only once the call is theirs: here it is masked, and the audit entry says so.
    """
    fields = ("lead_id", "tier", "tags", "phone_masked", *(("attributes.notes",) if _notes(lead) else ()),
              *(f"attributes.{k}" for k in AGENT_ATTRIBUTES if k in lead.attributes))
    audit.record(actor=agent_id, role="agent", action="view", lead_id=lead.lead_id, fields=fields,
                 reason="preview offered")
    view: dict[str, Any] = {"lead_id": lead.lead_id, "tier": lead.tier, "tags": list(lead.tags),
                            "phone": mask_phone(lead.phone),
                            "attributes": {k: lead.attributes[k] for k in AGENT_ATTRIBUTES if k in lead.attributes}}
    return _pop(lead, view, history, alerts)


def add_tags(lead: Lead, *, tags: tuple[str, ...], agent_id: str, audit: AuditLog) -> Lead:
    """Tags added by the agent during the call (no note); audited like a note; returns the lead to store."""
    audit.record(actor=agent_id, role="agent", action="update", lead_id=lead.lead_id, fields=("tags",),
                 reason="tags during call")
    lead.tags = tuple(dict.fromkeys(lead.tags + tags))
    return lead


def add_note(lead: Lead, *, note: str, tags: tuple[str, ...] = (), agent_id: str, audit: AuditLog) -> Lead:
    """Tags and a note added by the agent during the call; returns the updated lead to store."""
    audit.record(actor=agent_id, role="agent", action="update", lead_id=lead.lead_id,
                 fields=("attributes.notes", *(("tags",) if tags else ())), reason="note during call")
    notes = list(lead.attributes.get("notes", [])) if isinstance(lead.attributes.get("notes"), list) else []
    lead.attributes = {**lead.attributes, "notes": [*notes, note]}
    lead.tags = tuple(dict.fromkeys(lead.tags + tags))
    return lead

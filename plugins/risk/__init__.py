"""Built-in risk alerts: what the agent must know before speaking, and learning from complaints.

A lead's attributes may flag that the person complained before
(``complained``), asked not to be called often (``contact_rarely``), or is
sensitive to some words (``sensitive_words``: a list, or text separated by ``;``).
Each flag becomes an alert attached to the call (screen-pop), with the phrases
to avoid. A complaint disposition marks the lead high-sensitivity at once, for
every later call.
"""

from __future__ import annotations

from typing import Any

from engine.hooks import hookimpl
from engine.models import Alert


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y")


def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(str(w).strip() for w in value if str(w).strip())
    return tuple(w.strip() for w in str(value or "").split(";") if w.strip())


@hookimpl
def dialer_risk_alerts(ctx: Any, campaign: Any) -> list[Alert] | None:
    attrs = ctx.lead.attributes
    if not attrs:
        return None  # nothing flagged (most leads): what the checks below find too, without parsing
    alerts = []
    words = _words(attrs.get(campaign.risk.sensitive_words_attribute))
    if _truthy(attrs.get("complained")):
        alerts.append(Alert("complained_before", "This person complained before: be brief and courteous.",
                            "high", words))
    if _truthy(attrs.get("contact_rarely")):
        n = ctx.attempts_24h
        alerts.append(Alert("contact_rarely", f"Asked not to be called often ({n} call(s) in the last 24 h).",
                            "warning", words))
    if words and not alerts:
        alerts.append(Alert("sensitive_words", "Sensitive to some words: avoid them.", "warning", words))
    return alerts or None


@hookimpl
def dialer_after_call(call: Any, result: Any, campaign: Any, store: Any) -> Any:
    if call.disposition not in campaign.risk.complaint_dispositions:
        return None
    lead = call.lead
    lead.attributes = {**lead.attributes, "complained": "true", "sensitivity": "high"}
    return store.add_leads([lead])  # an update: same number, history kept

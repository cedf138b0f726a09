"""Built-in follow-up tasks: created by dispositions, dialled with priority when due.

The engine schedules the next attempt of a lead whose disposition asks for a
follow-up (``follow_up``, or the customer type's schedule for
``customer_follow_ups``); this plugin marks the lead as a follow-up task —
a score boost so it is dialled first in its tier (and so by its tier's lane and
agents) once due, with the due time, the reason and the agent it belongs to
(``same_agent``: the engine hands the call to that agent when they are free) —
and closes the task when the follow-up call reaches the customer. The screen-pop shows the customer type's
strategy and questions.
"""

from __future__ import annotations

from typing import Any

from engine.hooks import hookimpl
from engine.models import PREFERRED_AGENT_ATTR, Alert, Outcome
from engine.retry import agreed_time, follow_up_delay

PRIORITY = 1000.0  # added to the score while a follow-up is due: ahead of every fresh lead of its tier


@hookimpl
def dialer_after_call(call: Any, result: Any, campaign: Any, store: Any) -> Any:
    lead = call.lead
    attrs = dict(lead.attributes)
    changed = False
    if attrs.get("follow_up_due") and result.outcome == Outcome.CONNECTED:
        done = int(attrs.get("follow_ups_done", 0) or 0) + 1
        attrs.update(follow_ups_done=done, follow_up_completed=attrs.pop("follow_up_due"))
        attrs.pop(PREFERRED_AGENT_ATTR, None)
        attrs.pop("follow_up_reason", None)
        if attrs.pop("priority", None):
            lead.score -= PRIORITY
        changed = True
    delay = follow_up_delay(campaign, call.disposition, lead)
    if delay is not None and call.outcome == Outcome.CONNECTED:
        rule = campaign.dispositions[call.disposition]
        if not attrs.get("priority"):
            attrs["priority"] = True
            lead.score += PRIORITY
        started = call.wall_started.timestamp() if call.wall_started else 0.0
        # The time the agent agreed with the person (agent API), else the disposition's delay: the
        # same time the engine schedules the next attempt for (engine.retry.next_attempt_at).
        attrs["follow_up_due"] = agreed_time(lead, started) or started + delay
        attrs["follow_up_reason"] = call.disposition
        if rule.same_agent and call.agent_id:
            attrs[PREFERRED_AGENT_ATTR] = call.agent_id
        changed = True
    if not changed:
        return None
    lead.attributes = attrs
    return store.add_leads([lead])  # an update of the same number: history and schedule kept


@hookimpl
def dialer_risk_alerts(ctx: Any, campaign: Any) -> list[Alert] | None:
    lead = ctx.lead
    alerts = []
    kind = campaign.customer_types.get(str(lead.attributes.get("customer_type", "")))
    if kind is not None and (kind.strategy or kind.questions or kind.offer):
        text = kind.strategy + (f" Ask: {' / '.join(kind.questions)}" if kind.questions else "")
        alerts.append(Alert("customer_type", text.strip() + (f" Offer: {kind.offer}" if kind.offer else ""), "info"))
    if lead.attributes.get("follow_up_due"):
        reason = lead.attributes.get("follow_up_reason")
        alerts.append(Alert("follow_up", f"Follow-up agreed on the last call ({reason})", "info"))
    return alerts or None

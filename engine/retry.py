"""When a lead is tried again, from how its last attempt ended."""

from __future__ import annotations

from datetime import datetime

from engine.config import CampaignConfig
from engine.models import Lead, Outcome

AGREED_TIME_ATTR = "callback_requested_at"  # ISO time the agent agreed with the person (agent API)


def agreed_time(lead: Lead | None, now: float) -> float | None:
    """The follow-up time the agent agreed with the person, while it is still ahead.

    Once that time has passed (the follow-up was dialled, or the lead was reached another way) the
    attribute is history and the disposition's own delay applies again; an unreadable value is
    ignored rather than trusted, so a bad attribute can only fall back to the configured schedule.
    """
    raw = lead.attributes.get(AGREED_TIME_ATTR) if lead is not None else None
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(str(raw))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None  # a time without a zone is ambiguous for a call across time zones
    ts = at.timestamp()
    return ts if ts > now else None


def follow_up_delay(cfg: CampaignConfig, disposition: str | None, lead: Lead | None) -> float | None:
    """Delay of the follow-up task a disposition creates, or None when it creates none."""
    rule = cfg.dispositions.get(disposition or "")
    if rule is None:
        return None
    if rule.follow_up is not None:
        return rule.follow_up
    if rule.customer_follow_ups and lead is not None:
        kind = cfg.customer_types.get(str(lead.attributes.get("customer_type", "")))
        done = int(lead.attributes.get("follow_ups_done", 0) or 0)
        if kind is not None and done < len(kind.follow_ups):
            return kind.follow_ups[done]
    return None


def next_attempt_at(cfg: CampaignConfig, outcome: Outcome, disposition: str | None, attempts: int,
                    now: float, lead: Lead | None = None) -> float | None:
    """Wall-clock time of the next attempt, or None when the lead is finished.

    A follow-up task (from the disposition, or the customer type's schedule)
    comes first, at the time the agent agreed with the person when there is
    one. Otherwise an agent's disposition, when there is one, decides (a sale
    is final, a callback comes back after its delay); otherwise the outcome's
    delay from ``[retry]`` applies, until ``max_attempts`` is reached. Invalid
    numbers are never retried.
    """
    if outcome == Outcome.INVALID_NUMBER:
        return None
    follow_up = follow_up_delay(cfg, disposition, lead)
    if follow_up is not None:
        agreed = agreed_time(lead, now)
        if agreed is not None:
            return agreed  # the time agreed with the person beats the disposition's default delay
        return now + follow_up  # an agreed follow-up is kept even past max_attempts (caps still apply)
    if disposition is not None and disposition in cfg.dispositions:
        rule = cfg.dispositions[disposition]
        if rule.final or rule.dnc:
            return None
        if rule.retry_after is not None:
            return now + rule.retry_after if attempts < cfg.retry.max_attempts else None
    if outcome == Outcome.CONNECTED:
        return None  # talked to an agent and no disposition asked for more
    if attempts >= cfg.retry.max_attempts:
        return None
    delay = getattr(cfg.retry, outcome.value, cfg.retry.failed)
    return now + delay

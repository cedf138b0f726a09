"""When a lead is tried again, from how its last attempt ended."""

from __future__ import annotations

from engine.config import CampaignConfig
from engine.models import Outcome


def next_attempt_at(cfg: CampaignConfig, outcome: Outcome, disposition: str | None, attempts: int,
                    now: float) -> float | None:
    """Wall-clock time of the next attempt, or None when the lead is finished.

    An agent's disposition, when there is one, decides (a sale is final, a
    callback comes back after its delay); otherwise the outcome's delay from
    ``[retry]`` applies, until ``max_attempts`` is reached. Invalid numbers are
    never retried.
    """
    if outcome == Outcome.INVALID_NUMBER:
        return None
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

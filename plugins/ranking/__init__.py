"""Built-in ranking: intent tiers from rules, a score within the tier, the recommended offer.

Tiers come from the campaign's ``[[ranking.tiers]]`` rules over tags,
attributes and inactivity (the first matching rule wins). A tier rule with
``skip = true`` keeps the lead for nurture: the gate refuses to dial it. The
score orders leads within a tier: tag scores plus a recency bonus that halves
every ``recency_days`` since the lead's ``last_activity``. Products are matched
to the lead's tags, and the best match is shown to the agent as an alert. With
``best_time = true`` unanswered leads are retried at the local hour the
campaign's calls answer best (:mod:`plugins.ranking.besttime`), and within a
tier the leads whose zone is at a good hour right now are claimed first
(``dialer_claim_order``, scaled by ``best_time_weight``; 0 turns that off).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.hooks import hookimpl
from engine.models import Alert, Lead, Outcome, Veto
from plugins.ranking.besttime import HourlyRates

# Outcomes that say whether someone picks up at that hour (not network failures or our own stops).
_ANSWER_EVIDENCE = frozenset({Outcome.CONNECTED, Outcome.ABANDONED, Outcome.CUSTOMER_HANGUP, Outcome.NO_ANSWER,
                              Outcome.BUSY, Outcome.MACHINE})
_UNREACHED = frozenset({Outcome.NO_ANSWER, Outcome.BUSY, Outcome.MACHINE})
_EVIDENCE_VALUES = frozenset(o.value for o in _ANSWER_EVIDENCE)
_LIVE_VALUES = frozenset(o.value for o in _ANSWER_EVIDENCE if o.live)
_rates: dict[str, HourlyRates] = {}  # campaign id -> what this process has learnt this run
# The claim-order bonus of a zone whose local time is outside the calling window: after every lead of an
# open zone, whatever the scores (the gate would refuse those leads now anyway), in score order among
# themselves. Not -inf: Lua in Redis must read it back as a number.
CLOSED_BONUS = -1e9


def _last_activity(lead: Lead) -> datetime | None:
    raw = lead.attributes.get("last_activity")
    if not raw:
        return None
    try:
        d = datetime.fromisoformat(str(raw))
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _matches(rule: Any, lead: Lead, now: datetime) -> bool:
    if rule.tags_any and not set(rule.tags_any) & set(lead.tags):
        return False
    if any(str(lead.attributes.get(k)) != v for k, v in rule.attributes.items()):
        return False
    if rule.inactive_days is not None:
        last = _last_activity(lead)
        if last is None or (now - last).days < rule.inactive_days:
            return False  # unknown activity is not evidence of inactivity
    return bool(rule.tags_any or rule.attributes or rule.inactive_days is not None)


def tier_rule(lead: Lead, campaign: Any, now: datetime | None = None) -> Any | None:
    now = now or datetime.now(UTC)
    return next((r for r in campaign.ranking.tiers if _matches(r, lead, now)), None)


@hookimpl
def dialer_lead_tier(lead: Lead, campaign: Any) -> int | None:
    if not campaign.ranking.tiers:
        return None
    rule = tier_rule(lead, campaign)
    return rule.tier if rule is not None else campaign.ranking.default_tier


@hookimpl
def dialer_rank_lead(lead: Lead, campaign: Any) -> float | None:
    r = campaign.ranking
    score = sum(r.tag_scores.get(t, 0.0) for t in lead.tags)
    last = _last_activity(lead)
    if last is not None:
        age_days = max((datetime.now(UTC) - last).total_seconds() / 86400, 0.0)
        score += 10.0 * math.pow(0.5, age_days / r.recency_days)
    return score or None


def recommend(lead: Lead, campaign: Any) -> tuple[str, int] | None:
    """The product whose tags overlap the lead's tags most, with the overlap size."""
    if not campaign.ranking.products:
        return None  # what the search below finds, without setting it up (asked on every dial)
    best = max(((name, len(set(tags) & set(lead.tags))) for name, tags in campaign.ranking.products.items()),
               key=lambda x: x[1], default=None)
    return best if best and best[1] > 0 else None


@hookimpl
def dialer_check_dial(ctx: Any, campaign: Any) -> Veto | None:
    if not campaign.ranking.tiers:
        return None
    rule = tier_rule(ctx.lead, campaign)
    if rule is not None and rule.skip:
        return Veto("nurture_tier", f"tier {rule.name or rule.tier} is kept for nurture, not dialled")
    return None


@hookimpl
def dialer_risk_alerts(ctx: Any, campaign: Any) -> list[Alert] | None:
    best = recommend(ctx.lead, campaign)
    if best is None:
        return None
    return [Alert("recommended_offer", f"recommended offer: {best[0]}", "info")]


def _zone(lead: Lead, campaign: Any) -> ZoneInfo:
    try:
        return ZoneInfo(lead.timezone or campaign.campaign.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(campaign.campaign.timezone)


@hookimpl
async def dialer_campaign_start(campaign: Any, store: Any) -> None:
    """Start from what the store remembers of earlier runs (a shared store: every node's calls),
    then learn from this run's own calls as they end."""
    if not campaign.ranking.best_time:
        return
    rates = _rates[campaign.id] = HourlyRates()
    for row in await store.results(campaign.id):
        hour, outcome = row.get("local_hour"), row.get("outcome")
        if hour in (None, "") or outcome not in _EVIDENCE_VALUES:
            continue
        rates.observe(int(hour), outcome in _LIVE_VALUES)


@hookimpl
def dialer_after_call(call: Any, result: Any, campaign: Any) -> None:
    rates = _rates.get(campaign.id) if campaign.ranking.best_time else None
    if rates is None or call.wall_started is None or result.outcome not in _ANSWER_EVIDENCE:
        return
    hour = result.local_hour if result.local_hour is not None else \
        call.wall_started.astimezone(_zone(call.lead, campaign)).hour
    rates.observe(hour, result.outcome.live)


@hookimpl
def dialer_next_attempt(call: Any, outcome: Outcome, proposed: float, campaign: Any) -> float | None:
    r = campaign.ranking
    rates = _rates.get(campaign.id) if r.best_time else None
    if rates is None or outcome not in _UNREACHED:
        return None
    return rates.best_start(proposed, _zone(call.lead, campaign), min_dials=r.best_time_min_dials,
                            gain=r.best_time_gain)


@functools.lru_cache(maxsize=1024)
def _zone_named(name: str, fallback: str) -> ZoneInfo:
    """A zone by name; the campaign's (``fallback``) for ``""`` or a name that is no zone (a typo in the
    import: the compliance gate reads such a lead by its number's zones, the ranking by the campaign's)."""
    try:
        return ZoneInfo(name or fallback)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(fallback)


def _open(hours: Any, local: datetime) -> bool:
    """Whether the campaign's calling window (``[hours]``) is open at this local time."""
    window = hours.window(local.date())
    return window is not None and window[0] <= local.time() < window[1]


def zone_bonus(rates: HourlyRates, hour: int, *, weight: float, min_dials: int) -> float:
    """Score points for a zone at this local hour: ``weight`` per percentage point of live-answer rate
    the hour has above the campaign's overall rate (below: negative); 0 while the hour has fewer than
    ``min_dials`` calls, as the learner only speaks where it has seen enough."""
    if rates.dials[hour] < min_dials:
        return 0.0
    return weight * 100.0 * (rates.rate(hour) - rates.overall)


@hookimpl
def dialer_claim_order(campaign: Any, now: float, zones: Collection[str]) -> dict[str, float] | None:
    """Best time to call within a tier: each zone's bonus from the live-answer rate learnt for its current
    local hour (``zone_bonus``), so that, scores aside, the leads where it is now a good hour to call are
    claimed first. A zone whose local time is outside the calling window (``[hours]``, when the
    compliance gate checks them) comes last (``CLOSED_BONUS``): its leads could only be refused now.
    Zones are read as the ranking reads them (``""`` and unknown names: the campaign's). Off (None)
    unless ``best_time`` is on with a ``best_time_weight`` above 0."""
    r = campaign.ranking
    rates = _rates.get(campaign.id) if r.best_time and r.best_time_weight > 0 else None
    if rates is None or not zones:
        return None
    fallback = campaign.campaign.timezone
    out: dict[str, float] = {}
    for name in zones:
        local = datetime.fromtimestamp(now, _zone_named(name, fallback))
        if campaign.compliance.hours and not _open(campaign.hours, local):
            out[name] = CLOSED_BONUS
            continue
        bonus = zone_bonus(rates, local.hour, weight=r.best_time_weight, min_dials=r.best_time_min_dials)
        if bonus:
            out[name] = bonus
    return out or None

"""Best time to call: hourly answer rates learnt from the campaign's calls move unanswered retries to
the hour the list answers best, never earlier than the retry rules allow."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

import plugins.ranking as ranking
from engine.hooks import hookimpl
from engine.models import Q850, CallAttempt, CallResult, Outcome
from engine.store.memory import MemoryStore
from engine.testing import campaign, lead, run_script, unanswered
from plugins.ranking.besttime import HourlyRates

NY = ZoneInfo("America/New_York")


def at(hour: int, day: int = 5, minute: int = 0) -> float:
    return datetime(2026, 1, day, hour, minute, tzinfo=NY).timestamp()


def rates_with(pattern: dict[int, tuple[int, int]]) -> HourlyRates:
    r = HourlyRates()
    for hour, (dials, live) in pattern.items():
        for i in range(dials):
            r.observe(hour, i < live)
    return r


def test_an_hour_that_answers_clearly_better_is_chosen():
    r = rates_with({10: (100, 10), 14: (100, 12), 18: (100, 40)})
    moved = r.best_start(at(10, minute=20), NY, min_dials=50, gain=0.2)
    assert moved == at(18)  # later the same day, at the start of the hour


def test_the_next_day_when_the_good_hour_has_passed():
    r = rates_with({10: (100, 40), 19: (100, 5)})
    assert r.best_start(at(19, minute=30), NY, min_dials=50, gain=0.2) == at(10, day=6)


def test_no_move_without_enough_calls_or_a_clear_gain():
    r = rates_with({10: (100, 10), 18: (30, 25)})
    assert r.best_start(at(10), NY, min_dials=50, gain=0.2) is None  # 18:00 has too few calls
    r = rates_with({10: (100, 10), 18: (100, 11)})
    assert r.best_start(at(10), NY, min_dials=50, gain=0.2) is None  # 11 % against 10 %: not clear
    r = rates_with({10: (10, 0), 18: (100, 50)})
    assert r.best_start(at(10), NY, min_dials=50, gain=0.2) is None  # the proposed hour itself is unknown


def test_rates_shrink_towards_the_overall_rate():
    r = rates_with({10: (2, 2), 11: (200, 20)})
    assert 0.1 < r.rate(10) < 0.3  # two answers out of two is luck, not a 100 % hour
    assert r.rate(11) == pytest.approx(0.1, abs=0.02)


def _call(hour: int, outcome: Outcome, cfg, n: int) -> tuple[CallAttempt, CallResult]:
    the_lead = lead(f"+1212555{n:04d}", timezone="America/New_York")
    call = CallAttempt(f"c{n}", the_lead, cfg.id, 1, outcome=outcome,
                       wall_started=datetime.fromtimestamp(at(hour), UTC))
    result = CallResult(call_id=call.call_id, campaign_id=cfg.id, lead_id=the_lead.lead_id, attempt_no=1,
                        outcome=outcome, cause=None, disposition=None, agent_id=None, answer_kind=None,
                        started="", ring_s=None, wait_s=None, talk_s=None, phone_masked="")
    return call, result


def test_the_ranking_plugin_learns_from_calls_and_moves_only_unanswered_retries():
    cfg = campaign(ranking={"best_time": True, "best_time_min_dials": 20})
    asyncio.run(ranking.dialer_campaign_start(campaign=cfg, store=MemoryStore()))
    n = 0
    for hour, live_share in ((10, 0.1), (17, 0.5)):
        for i in range(40):
            n += 1
            outcome = Outcome.CONNECTED if i < live_share * 40 else Outcome.NO_ANSWER
            call, result = _call(hour, outcome, cfg, n)
            ranking.dialer_after_call(call=call, result=result, campaign=cfg)
    call, _ = _call(10, Outcome.NO_ANSWER, cfg, 999)
    proposed = at(10, minute=30)
    assert ranking.dialer_next_attempt(call=call, outcome=Outcome.NO_ANSWER, proposed=proposed,
                                       campaign=cfg) == at(17)
    # a callback the customer asked for, or a connected call, is not the learner's to move
    assert ranking.dialer_next_attempt(call=call, outcome=Outcome.CONNECTED, proposed=proposed, campaign=cfg) is None
    # off unless the campaign asks for it
    off = campaign()
    assert ranking.dialer_next_attempt(call=call, outcome=Outcome.NO_ANSWER, proposed=proposed, campaign=off) is None
    # a new run starts from what its store remembers: nothing here
    asyncio.run(ranking.dialer_campaign_start(campaign=cfg, store=MemoryStore()))
    assert ranking.dialer_next_attempt(call=call, outcome=Outcome.NO_ANSWER, proposed=proposed,
                                       campaign=cfg) is None


class MoveRetries:
    """A plugin that moves every retry two hours later, or asks for an earlier time (ignored)."""

    def __init__(self, by: float) -> None:
        self.by = by

    @hookimpl
    def dialer_next_attempt(self, proposed: float) -> float:
        return proposed + self.by


@pytest.mark.parametrize(("by", "gap"), [(7200.0, 7200.0), (-3000.0, 60.0)])
def test_the_engine_takes_a_later_retry_time_and_ignores_an_earlier_one(vrun, by, gap):
    cfg = campaign(retry={"max_attempts": 2, "busy": "60s"}, caps={"per_day": 5, "per_24h": 5})
    _, _, store = vrun(run_script(cfg, {"L1": unanswered(Q850.USER_BUSY)}, until=4 * 3600,
                                  plugins=[MoveRetries(by)]))
    rows = vrun(store.results("t"))
    assert [r["attempt_no"] for r in rows] == [1, 2]
    first, second = (datetime.fromisoformat(r["started"]).timestamp() for r in rows)
    assert gap <= second - first <= gap + 120  # due at the gap, claimed on a following pacing round


async def test_a_new_run_starts_from_the_hours_its_store_remembers():
    # Results of earlier runs (any node) carry the called party's local hour; the next run starts there.
    cfg = campaign(ranking={"best_time": True, "best_time_min_dials": 20})
    store = MemoryStore()
    n = 0
    for hour, live_share in ((10, 0.1), (17, 0.5)):
        for i in range(40):
            n += 1
            outcome = Outcome.CONNECTED if i < live_share * 40 else Outcome.NO_ANSWER
            call, result = _call(hour, outcome, cfg, n)
            the_lead = call.lead
            await store.add_leads([the_lead])
            [claimed] = await store.claim_leads("t", 1, now=at(9), node_id="n", lease_s=60)
            call.lead = claimed
            await store.finish_attempt(call, dataclasses.replace(result, local_hour=hour), now=at(hour),
                                       next_eligible=None, abandoned=False, live=outcome.live)
    await ranking.dialer_campaign_start(campaign=cfg, store=store)
    call, _ = _call(10, Outcome.NO_ANSWER, cfg, 999)
    assert ranking.dialer_next_attempt(call=call, outcome=Outcome.NO_ANSWER, proposed=at(10, minute=30),
                                       campaign=cfg) == at(17)

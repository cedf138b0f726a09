"""The call state machine, every outcome, through the real dialer on the simulated PBX."""

from __future__ import annotations

import pytest
from helpers import NO_ANSWER, DialAll, campaign, human, machine, run_script, unanswered

from engine.calls import TRANSITIONS, CallStateError, advance, final_outcome
from engine.config import ConfigError
from engine.models import Q850, AnswerKind, CallAttempt, CallState, Lead, Outcome


@pytest.mark.parametrize(
    ("plan", "outcome", "cause"),
    [
        (unanswered(Q850.USER_BUSY), Outcome.BUSY, 17),
        (NO_ANSWER, Outcome.NO_ANSWER, 19),
        (unanswered(Q850.CONGESTION), Outcome.CONGESTION, 34),
        (unanswered(Q850.TEMPORARY_FAILURE), Outcome.FAILED, 41),
        (unanswered(Q850.UNALLOCATED), Outcome.INVALID_NUMBER, 1),
        (unanswered(Q850.CALL_REJECTED), Outcome.REJECTED, 21),
        (human(), Outcome.CONNECTED, 16),
    ],
)
def test_single_call_outcomes(vrun, plan, outcome, cause):
    cfg = campaign(retry={"max_attempts": 1})
    dialer, summary, store = vrun(run_script(cfg, {"L1": plan}))
    rows = vrun(store.results("t"))
    assert [r["outcome"] for r in rows] == [outcome.value]
    assert rows[0]["cause"] == cause
    assert summary["errors"] == 0


def test_connected_call_walks_every_state_and_wraps_up(vrun):
    cfg = campaign(retry={"max_attempts": 1})
    seen: list[CallState] = []

    class Spy:
        from engine.hooks import hookimpl

        @hookimpl
        def dialer_after_call(self, call):
            seen.extend(state for _, state in call.history)

    dialer, summary, store = vrun(run_script(cfg, {"L1": human(after=4, talk=30)}, plugins=[Spy()]))
    assert seen == [CallState.ORIGINATING, CallState.RINGING, CallState.ANSWERED_HUMAN, CallState.CONNECTED,
                    CallState.ENDED]
    row = vrun(store.results("t"))[0]
    assert row["ring_s"] == pytest.approx(4.0)
    assert row["talk_s"] == pytest.approx(30.0)
    assert row["wait_s"] == pytest.approx(0.0)
    assert row["agent_id"] == "A1"
    assert row["phone"].startswith("+12") and "555" not in row["phone"]  # masked
    assert summary["connected"] == 1 and summary["live"] == 1


def test_live_answer_with_no_free_agent_is_abandoned_within_the_connect_limit(vrun):
    # One agent, two customers answering together: the second cannot be connected.
    cfg = campaign(campaign={"id": "t", "mode": "predictive"}, retry={"max_attempts": 1},
                   pacing={"max_dial_ratio": 2})
    plans = {"L1": human(after=5, talk=120), "L2": human(after=5, talk=120)}
    dialer, summary, store = vrun(run_script(cfg, plans, pacer=DialAll()))
    rows = {r["lead_id"]: r for r in vrun(store.results("t"))}
    got = sorted(r["outcome"] for r in rows.values())
    assert got == ["abandoned", "connected"]
    abandoned = next(r for r in rows.values() if r["outcome"] == "abandoned")
    assert abandoned["wait_s"] > 2.0  # connect limit, then the message played until the end
    assert dialer.pbx.abandon_messages == 1
    assert summary["abandoned"] == 1 and summary["live"] == 2


def test_machine_dropped_by_amd(vrun):
    cfg = campaign(amd={"enabled": True, "machine_action": "hangup"}, retry={"max_attempts": 1})
    dialer, summary, store = vrun(run_script(cfg, {"L1": machine()}))
    row = vrun(store.results("t"))[0]
    assert row["outcome"] == "machine" and row["agent_id"] is None
    assert summary["machines"] == 1 and summary["live"] == 0


def test_amd_false_positives_are_counted_as_abandons_when_configured(vrun):
    # Ten machines dropped by AMD; a quarter of machine verdicts are really people: 2.5 people hung up
    # on in silence, counted as 2 whole abandoned live answers (the half waits for the next drop).
    cfg = campaign(amd={"enabled": True, "machine_action": "hangup"}, retry={"max_attempts": 1},
                   abandon={"count_amd_false_positives": True, "amd_false_positive_rate": 0.25})
    plans = {f"L{i}": machine(after=2 + i) for i in range(10)}
    _, summary, store = vrun(run_script(cfg, plans, agents=2))
    rows = vrun(store.results("t"))
    assert [r["outcome"] for r in rows] == ["machine"] * 10  # each call is still what it was
    assert summary["machines"] == 10 and summary["amd_false_positives"] == 2
    assert summary["abandoned"] == 2 and summary["live"] == 2
    counts = vrun(store.abandon_counts("t", since=0, now=1e12))  # what the controller and reports read
    assert (counts.live, counts.abandoned) == (2, 2)


def test_amd_false_positive_counting_needs_a_rate():
    with pytest.raises(ConfigError, match="amd_false_positive_rate"):
        campaign(abandon={"count_amd_false_positives": True})


def test_machine_without_amd_reaches_an_agent_and_counts_as_live(vrun):
    cfg = campaign(retry={"max_attempts": 1})
    dialer, summary, store = vrun(run_script(cfg, {"L1": machine()}))
    row = vrun(store.results("t"))[0]
    assert row["outcome"] == "connected" and row["answer_kind"] == "unknown"
    assert row["disposition"] == "answering_machine"  # the simulated agent heard the machine


@pytest.mark.parametrize(("count", "expected"), [(True, "abandoned"), (False, "customer_hangup")])
def test_customer_who_hangs_up_before_the_connect_limit(vrun, count, expected):
    # The only agent is busy; the customer gives up after 1 s of silence (< 2 s connect limit). Never
    # connected to anyone: an abandon unless the campaign reads the rules otherwise.
    cfg = campaign(campaign={"id": "t", "mode": "predictive"}, retry={"max_attempts": 1},
                   pacing={"max_dial_ratio": 2}, abandon={"count_early_hangups": count})
    plans = {"L1": human(after=3, talk=100), "L2": human(after=3.5, talk=50, patience=1.0)}
    _, summary, store = vrun(run_script(cfg, plans, pacer=DialAll()))
    got = sorted(r["outcome"] for r in vrun(store.results("t")))
    assert got == sorted(["connected", expected])
    assert summary["abandoned"] == (1 if count else 0) and summary["live"] == 2


def test_busy_is_retried_until_max_attempts(vrun):
    cfg = campaign(retry={"max_attempts": 3, "busy": "60s"}, caps={"per_day": 5, "per_24h": 5})
    plans = {"L1": unanswered(Q850.USER_BUSY)}
    dialer, summary, store = vrun(run_script(cfg, plans, until=3600))
    rows = vrun(store.results("t"))
    assert [r["outcome"] for r in rows] == ["busy", "busy", "busy"]  # max_attempts, then closed
    assert [r["attempt_no"] for r in rows] == [1, 2, 3]
    counts = vrun(store.lead_counts("t"))
    assert counts["done"] == 1


def test_preview_agent_sees_the_lead_then_talks(vrun):
    cfg = campaign(campaign={"id": "t", "mode": "preview"}, retry={"max_attempts": 1})
    dialer, summary, store = vrun(run_script(cfg, {"L1": human(after=2, talk=40)}))
    row = vrun(store.results("t"))[0]
    assert row["outcome"] == "connected" and row["agent_id"] == "A1"
    assert summary["abandoned"] == 0
    assert dialer.desk.previews == 1


def test_stop_drains_calls_in_flight_and_interrupts_the_rest(vrun, monkeypatch):
    import asyncio

    from engine import dialer as d

    cfg = campaign(retry={"max_attempts": 3})
    made = []
    orig = d.Dialer.__init__

    def init(self, *a, **k):
        orig(self, *a, **{**k, "drain_timeout": 30.0})  # shorter than the call
        made.append(self)

    monkeypatch.setattr(d.Dialer, "__init__", init)

    async def main():
        task = asyncio.ensure_future(run_script(cfg, {"L1": human(after=2, talk=3000)}))
        await asyncio.sleep(10)  # the call is connected by now
        made[0].stop()
        return await task

    dialer, summary, store = vrun(main())
    rows = vrun(store.results("t"))
    assert [r["outcome"] for r in rows] == ["interrupted"]
    assert summary["after_drain"]["interrupted"] == 1
    assert vrun(store.lead_counts("t"))["pending"] == 1  # rescheduled, not lost


def test_stop_lets_a_short_call_finish(vrun, monkeypatch):
    import asyncio

    from engine import dialer as d

    cfg = campaign(retry={"max_attempts": 1})
    made = []
    orig = d.Dialer.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(d.Dialer, "__init__", init)

    async def main():
        task = asyncio.ensure_future(run_script(cfg, {"L1": human(after=2, talk=60)}))
        await asyncio.sleep(10)
        made[0].stop()
        return await task

    dialer, summary, store = vrun(main())
    assert [r["outcome"] for r in vrun(store.results("t"))] == ["connected"]
    assert summary["after_drain"]["interrupted"] == 0


def test_transition_table_refuses_impossible_moves():
    call = CallAttempt("c1", Lead("L1", "t", "+12125550001"), "t", 1)
    with pytest.raises(CallStateError):
        advance(call, CallState.CONNECTED, 0.0)
    for state in (CallState.ORIGINATING, CallState.RINGING, CallState.ANSWERED_HUMAN, CallState.CONNECTED,
                  CallState.ENDED):
        advance(call, state, 1.0)
    assert TRANSITIONS[CallState.ENDED] == frozenset()
    with pytest.raises(CallStateError):
        advance(call, CallState.RINGING, 2.0)


@pytest.mark.parametrize(
    ("last", "cause", "reason", "kind", "expected"),
    [
        (CallState.RINGING, 17, "busy", None, Outcome.BUSY),
        (CallState.RINGING, 0, "unknown", None, Outcome.UNKNOWN),
        (CallState.ABANDONED, 16, "normal", AnswerKind.HUMAN, Outcome.ABANDONED),
        (CallState.ANSWERED_MACHINE, 16, "normal", AnswerKind.MACHINE, Outcome.MACHINE),
        (CallState.ANSWERED_HUMAN, 16, "normal", AnswerKind.HUMAN, Outcome.CUSTOMER_HANGUP),
        (CallState.CONNECTED, 16, "normal", AnswerKind.HUMAN, Outcome.CONNECTED),
        (CallState.CONNECTED, 16, "interrupted", AnswerKind.HUMAN, Outcome.INTERRUPTED),
    ],
)
def test_final_outcome_table(last, cause, reason, kind, expected):
    call = CallAttempt("c1", Lead("L1", "t", "+12125550001"), "t", 1, answer_kind=kind)
    assert final_outcome(call, last, cause, reason) == expected


def test_per_day_cap_blocks_the_third_call_of_the_day(vrun):
    cfg = campaign(retry={"max_attempts": 5, "busy": "60s"}, caps={"per_day": 2, "per_24h": 5})
    dialer, summary, store = vrun(run_script(cfg, {"L1": unanswered(Q850.USER_BUSY)}, until=1800))
    assert [r["outcome"] for r in vrun(store.results("t"))] == ["busy", "busy"]
    blocks = vrun(store.blocks("t"))
    assert blocks and {b["rule"] for b in blocks} == {"cap_per_day"}


def test_backpressure_holds_dialling_while_the_loop_is_behind(vrun):
    from engine.dialer import MAX_LOOP_LAG_S

    cfg = campaign(retry={"max_attempts": 1})

    async def main():
        import numpy as np
        from helpers import Script, _agent_model, _customer_model

        from engine.clock import LoopClock
        from engine.dialer import Dialer
        from engine.models import Agent
        from engine.pbx.sim import SimBackend
        from engine.plugins import make_plugin_manager
        from engine.store.memory import MemoryStore
        from simulations.agents import SimDesk

        store = MemoryStore()
        await store.add_leads([Lead("L1", "t", "+12125550001")])
        backend = SimBackend(Script({"L1": human()}))
        d = Dialer(cfg, store=store, pbx=backend, desk=SimDesk(_agent_model(), _customer_model(), backend,
                                                               np.random.default_rng(1)),
                   agents=[Agent("A1")], plugins=make_plugin_manager(entry_points_too=False),
                   clock=LoopClock(__import__("datetime").datetime(2026, 1, 5, 14)))
        d.pool.login("A1")
        d.loop_lag = MAX_LOOP_LAG_S * 2
        await d._decide_and_dial()
        held = (d.counters.held, len(d._tasks))
        return held

    assert vrun(main()) == (1, 0)


def test_decision_time_is_reported(vrun):
    cfg = campaign(retry={"max_attempts": 1})
    _, summary, _ = vrun(run_script(cfg, {"L1": human(), "L2": human()}))
    assert summary["decision_ms"]["n"] == 2 and summary["decision_ms"]["p99"] >= summary["decision_ms"]["p50"] > 0


def test_a_results_file_that_cannot_be_written_loses_no_call(vrun, tmp_path):
    from engine.results import ResultWriter

    class FullDisk(ResultWriter):
        def write(self, row):
            raise OSError(28, "No space left on device")

    cfg = campaign(retry={"max_attempts": 1})
    writer = FullDisk(tmp_path, "full", ["csv"])
    _, summary, store = vrun(run_script(cfg, {"L1": human(talk=30)}, results=writer))
    assert [r["outcome"] for r in vrun(store.results("t"))] == ["connected"]  # the store has it
    assert vrun(store.lead_counts("t"))["done"] == 1 and summary["errors"] == 1


def test_a_burst_blocks_the_lead_on_dnc_and_the_one_over_its_cap_and_dials_the_rest(vrun):
    """The pacer hands out five dials at once: their contexts are read in one call and their
    reservations made in one call (the burst path), the lead on the DNC list and the one whose number
    has had its call today are blocked, each for its rule, and the other three are dialled."""
    from engine.store.memory import MemoryStore

    class Counting(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.bursts: list[tuple[str, int]] = []

        async def dial_contexts(self, leads, **kw):
            self.bursts.append(("contexts", len(leads)))
            return await super().dial_contexts(leads, **kw)

        async def reserve_attempts(self, calls, **kw):
            self.bursts.append(("reserve", len(calls)))
            return await super().reserve_attempts(calls, **kw)

    async def main():
        from engine.store.base import Caps

        store = Counting()
        await store.add_dnc(["+12125550002"])
        # +12125550003 was called today from another campaign: per-day cap 1 reached.
        await store.add_leads([Lead("x", "other", "+12125550003")])
        earlier = 1_767_600_000.0  # 2026-01-05 08:00 UTC, hours before the run's clock, the same day
        [other] = await store.claim_leads("other", 1, now=earlier, node_id="n", lease_s=60)
        call = CallAttempt("earlier", other, "other", 1)
        assert (await store.reserve_attempt(call, now=earlier, day_key="2026-01-05",
                                            caps=Caps(per_day=5, lock_s=1.0), node_id="n")).ok
        cfg = campaign(retry={"max_attempts": 1}, caps={"per_day": 1, "per_24h": 5})
        plans = {f"L{i}": human(talk=20) for i in range(1, 6)}
        return await run_script(cfg, plans, agents=5, store=store, pacer=DialAll(), until=1800)

    dialer, summary, store = vrun(main())
    rows = vrun(store.results("t"))
    assert sorted(r["lead_id"] for r in rows) == ["L1", "L4", "L5"]
    assert {r["outcome"] for r in rows} == {"connected"}
    blocks = vrun(store.blocks("t"))
    assert sorted((b["lead_id"], b["rule"]) for b in blocks) == [("L2", "dnc"), ("L3", "cap_per_day")]
    assert store.bursts[:2] == [("contexts", 5), ("reserve", 5)]
    assert summary["dials"] == 3 and summary["errors"] == 0
    assert summary["decision_ms"]["n"] == 5  # every dial decided, blocked or not, is timed


def test_a_store_outage_in_the_middle_of_a_burst_dials_none_of_it(vrun, monkeypatch):
    """The store takes the burst's reservations and then the connection drops (the reply is lost):
    nothing of the burst is dialled, dialling pauses (fail closed), and once the store is back the
    other leads are dialled; the ones whose reservations were taken are held, never dialled twice."""
    import asyncio

    from engine.pbx.sim import SimBackend
    from engine.store.base import StoreUnavailable
    from engine.store.memory import MemoryStore

    dialled: list[tuple[float, str]] = []
    orig = SimBackend.originate

    async def spy(self, call, **kw):
        dialled.append((asyncio.get_running_loop().time(), call.lead.lead_id))
        return await orig(self, call, **kw)

    monkeypatch.setattr(SimBackend, "originate", spy)

    class DropsTheReply(MemoryStore):
        failures = 1

        async def reserve_attempts(self, calls, **kw):
            res = await super().reserve_attempts(calls, **kw)
            if self.failures and len(calls) > 1:
                self.failures -= 1
                self.lost = [c.lead.lead_id for c, r in zip(calls, res, strict=True) if r.ok]
                raise StoreUnavailable("connection reset")
            return res

    store = DropsTheReply()
    cfg = campaign(retry={"max_attempts": 1})
    plans = {f"L{i:02d}": human(talk=20) for i in range(1, 31)}

    dialer, summary, store = vrun(run_script(cfg, plans, agents=2, store=store, pacer=DialAll(), until=3600))
    lost = set(store.lost)
    assert 1 < len(lost) < len(plans)  # the first burst
    assert not lost & {lead for _, lead in dialled}  # reserved but never confirmed: not dialled
    assert sorted(lead for _, lead in dialled) == sorted(set(plans) - lost)  # the rest, once each
    counts = vrun(store.lead_counts("t"))
    assert counts["in_call"] == len(lost)  # held until their number locks lapse, then recorded as lost
    assert summary["errors"] == 0

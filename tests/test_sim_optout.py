"""Opt-out in the ``sim`` backend: a person sent to the abandon message presses 9 with the model's
``opt_out_rate`` (scenario TOML ``[simulation.customers]``); the engine puts the number on DNC at once, as
it does for the asterisk backend's ``UserEvent DialerOptOut``."""

from __future__ import annotations

import asyncio

import numpy as np

from engine.clock import SystemClock
from engine.config import CustomerModel, campaign_from_dict
from engine.models import CallAttempt, Lead
from engine.pbx.base import Abandoned, Answered, CallEvent, Ended, OptOut, Ringing
from engine.pbx.sim import CallPlan, SimBackend
from engine.store.memory import MemoryStore
from simulations.model import CustomerBehaviour
from simulations.runner import run_sim_campaign
from simulations.vloop import run_virtual


def attempt(cid: str) -> CallAttempt:
    return CallAttempt(cid, Lead(f"L{cid}", "camp", "+12125550100"), "camp", 1)


def test_the_model_draws_opt_outs_without_changing_any_other_draw() -> None:
    def plans(model: CustomerModel) -> list[CallPlan]:
        b = CustomerBehaviour(model, np.random.default_rng(5))
        return [b.plan(attempt(str(i)), 30.0) for i in range(3000)]

    base = CustomerModel(answer_rate=0.5, machine_rate=0.1)
    without = plans(base)
    half = plans(base.model_copy(update={"opt_out_rate": 0.5}))
    every = plans(base.model_copy(update={"opt_out_rate": 1.0}))
    assert not any(p.opt_out for p in without)
    people = [i for i, p in enumerate(without) if p.answer_after is not None and not p.machine]
    assert people and all(every[i].opt_out for i in people)
    assert not any(p.opt_out for p in every if p.machine or p.answer_after is None)
    share = sum(half[i].opt_out for i in people) / len(people)
    assert 0.45 < share < 0.55
    for a, b in zip(without, half, strict=True):  # the same calls, opt-out aside: a seed stays a seed
        b.opt_out = False
        assert a == b


async def test_the_sim_backend_sends_opt_out_during_the_abandon_message_then_ends() -> None:
    plan = CallPlan(answer_after=0.01, patience=60.0, opt_out=True, opt_out_after=0.02)

    class One:
        def plan(self, call: CallAttempt, ring_timeout: float) -> CallPlan:
            return plan

    events: list[CallEvent] = []
    done = asyncio.Event()
    tasks: list[asyncio.Future[None]] = []

    def sink(ev: CallEvent) -> None:
        events.append(ev)
        if isinstance(ev, Answered):
            tasks.append(asyncio.ensure_future(be.abandon(ev.call_id)))
        if isinstance(ev, Ended):
            done.set()

    be = SimBackend(One(), optout_message_s=0.01)
    await be.start(sink)
    await be.originate(attempt("c1"), ring_timeout=30.0, caller_id="D <1>")
    async with asyncio.timeout(5):
        await done.wait()
    assert [type(e) for e in events] == [Ringing, Answered, Abandoned, OptOut, Ended]
    assert be.opt_outs == 1 and be.abandon_messages == 1
    await be.close()


def _scenario(opt_out_rate: float | None) -> dict[str, object]:
    customers: dict[str, object] = {"answer_rate": 0.9, "machine_rate": 0.0, "busy_rate": 0.0, "failed_rate": 0.0,
                                    "invalid_rate": 0.0, "talk_mean": "600s", "patience": "30s",
                                    "sale_rate": 0.0, "refusal_rate": 0.0, "callback_rate": 0.0}
    if opt_out_rate is not None:
        customers["opt_out_rate"] = opt_out_rate
    return {"campaign": {"id": "optout-sim", "mode": "fixed", "timezone": "America/New_York"},
            "hours": {"start": "00:00", "end": "24:00"},
            "pacing": {"max_dial_ratio": 4.0},
            "retry": {"max_attempts": 1},
            "simulation": {"agents": 1, "leads": 0, "duration": "900s", "customers": customers}}


def _run(opt_out_rate: float | None) -> tuple[MemoryStore, list[Lead], dict[str, object]]:
    cfg = campaign_from_dict(_scenario(opt_out_rate))
    people = [Lead(f"L{i:03d}", cfg.id, f"+1212555{4000 + i:04d}", timezone="America/New_York") for i in range(12)]
    store = MemoryStore()
    summary = run_virtual(run_sim_campaign(cfg, leads=people, store=store, until=900.0))
    return store, people, summary


async def _on_dnc(store: MemoryStore, people: list[Lead]) -> set[str]:
    now = SystemClock().now()
    return {p.lead_id for p in people if (await store.dial_context(p, now=now, day_key="d")).dnc}


def test_abandoned_people_who_press_9_go_on_dnc_in_a_simulated_campaign() -> None:
    """One agent on ten-minute calls, four dials at a time: most live answers are abandoned; with
    ``opt_out_rate = 1`` every abandoned person opts out, and only they are on DNC."""
    store, people, summary = _run(1.0)
    rows = asyncio.run(store.results("optout-sim"))
    abandoned = {r["lead_id"] for r in rows if r["outcome"] == "abandoned"}
    assert abandoned and summary["abandoned"] == len(abandoned)
    assert {r["lead_id"] for r in rows if r.get("disposition") == "dnc_request"} == abandoned
    assert asyncio.run(_on_dnc(store, people)) == abandoned
    store, people, _ = _run(None)  # the default: nobody presses 9
    assert asyncio.run(_on_dnc(store, people)) == set()


def test_the_emulator_draws_opt_outs_from_the_same_key_when_it_is_set() -> None:
    """``dialer pbx-emulator --scenario`` reads the same ``opt_out_rate``; unset, it keeps using
    ``refusal_rate`` as it always did."""
    from simulations.ami_emulator import ScenarioPlan

    numbers = [f"+1212555{i:04d}" for i in range(400)]
    model = CustomerModel(answer_rate=0.9, machine_rate=0.0, busy_rate=0.0, failed_rate=0.0, invalid_rate=0.0,
                          refusal_rate=0.5)

    def opted(m: CustomerModel) -> list[bool]:
        plan = ScenarioPlan(m, seed=3)
        return [p.opt_out for p in map(lambda n: plan(n, {}), numbers) if p.outcome == "answer" and not p.machine]

    assert 0.4 < sum(opted(model)) / len(opted(model)) < 0.6
    assert not any(opted(model.model_copy(update={"opt_out_rate": 0.0})))
    assert all(opted(model.model_copy(update={"opt_out_rate": 1.0})))

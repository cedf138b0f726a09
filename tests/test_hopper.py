"""Dials reserved ahead (engine/hopper.py): a decision's dials taken from leads already claimed, read and
reserved, with only the gate left; every lead still dialled once, nothing held after the run, a
refused or unused reservation given back whole. The Dialer runs in virtual time on the in-memory store
with the hopper switched on, and in real time on a real redis-server, where it is on by default."""

from __future__ import annotations

from typing import Any

import redis
from helpers import campaign, human, run_script

from engine.hooks import hookimpl
from engine.hopper import Ahead, Hopper, reserves_ahead
from engine.models import CallAttempt, Lead, Veto
from engine.pacing import Decision, Snapshot
from engine.pii import BlindIndex
from engine.store.base import DialContext
from engine.store.memory import MemoryStore
from engine.store.redis import RedisStore

INDEX = BlindIndex(b"hopper test blind-index key 32 b")


def entry(lead_id: str, at: float) -> Ahead:
    lead = Lead(lead_id=lead_id, campaign_id="t", phone="+12125550100")
    ctx = DialContext(lead=lead, now=0.0, day_key="2026-01-05", attempts_today=0, attempts_24h=0, dnc=False,
                      invalid_number=False, last_abandoned_at=None, in_flight=False)
    return Ahead(CallAttempt(call_id=f"c-{lead_id}", lead=lead, campaign_id="t", attempt_no=1), ctx, ctx.day_key, at)


def test_the_hopper_holds_half_again_the_largest_recent_ask_while_dials_are_asked_steadily() -> None:
    h = Hopper(max_age=1.0)
    assert h.wanted() == 0  # nothing asked yet: nothing reserved
    h.asked(1, now=0.0)
    assert h.wanted() == 0  # a single dial is no flow yet
    h.asked(4, now=0.1)  # a second dial asked for within the second: a flow
    assert h.wanted() == 6
    h.asked(10, now=0.3)
    h.asked(0, now=0.6)
    h.asked(2, now=0.9)
    assert h.wanted() == 15 and h.shortfall() == 15
    h.asked(2, now=1.35)  # the asks of 1, 4 and 10 are more than a second old
    assert h.wanted() == 3
    h.asked(0, now=2.0)
    h.asked(1, now=2.5)
    assert h.wanted() == 0  # one dial in the last second: nothing more reserved
    big = Hopper(most=50)
    big.asked(1000, now=0.0)
    big.asked(1000, now=0.1)
    assert big.wanted() == 50


def test_take_gives_the_oldest_and_puts_aged_entries_aside_to_give_back() -> None:
    h = Hopper(max_age=1.0)
    h.ready.extend([entry("a", 0.0), entry("b", 0.5), entry("c", 0.9), entry("d", 1.2)])
    got = h.take(2, now=1.6)  # a and b are older than a second: put aside, not dialled
    assert [a.call.lead.lead_id for a in got] == ["c", "d"]
    assert (h.taken, h.missed, len(h)) == (2, 0, 0)
    assert h.take(3, now=1.7) == [] and h.missed == 3
    assert h.busy and h.held_back == 2
    back = h.to_give_back()
    assert [a.call.lead.lead_id for a in back] == ["a", "b"] and h.given_back == 2 and not h.busy
    h.keep_back(back)  # the store was down: kept to be tried again
    assert h.held_back == 2 and h.given_back == 0
    h.ready.append(entry("e", 2.0))
    h.drain()
    assert [a.call.lead.lead_id for a in h.to_give_back()] == ["a", "b", "e"] and h.figures()["held"] == 0


class Steady:
    """Asks for ``n`` dials at every decision while fewer than ``limit`` calls ring: a hopper that is used
    and refilled all along."""

    name = "steady"

    def __init__(self, n: int, limit: int) -> None:
        self.n, self.limit = n, limit

    def decide(self, snap: Snapshot) -> Decision:
        return Decision(dials=self.n if len(snap.ringing) < self.limit else 0)


def ahead_campaign(**pacing: Any) -> Any:
    return campaign(pacing={"reserve_ahead": True, "interval": "0.25s", **pacing}, retry={"max_attempts": 1},
                    simulation={"agent": {"wrap_mean": "1s", "think_mean": "0s"}})


def attempts_in_order(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Each lead's attempt numbers as recorded; a lead dialled twice on one attempt, or an attempt
    reserved and lost, shows as anything but 1, 2, ..."""
    per_lead: dict[str, list[int]] = {}
    for row in rows:
        per_lead.setdefault(row["lead_id"], []).append(row["attempt_no"])
    return {lid: sorted(a) for lid, a in per_lead.items() if sorted(a) != list(range(1, len(a) + 1))}


async def leftovers(store: Any, dialer: Any, leads: list[Lead]) -> list[str]:
    """Leads the run left reserved: in a call, leased, or their number locked or counted though not dialled."""
    rows = {r["lead_id"] for r in await store.results("t")}
    wall = dialer.clock.now()
    ctxs = await store.dial_contexts(leads, now=wall, day_keys=[dialer._day_key(lead, wall) for lead in leads])
    out = [c.lead.lead_id for c in ctxs if c.in_flight]
    out += [c.lead.lead_id for c in ctxs if c.lead.lead_id not in rows and (c.attempts_today or c.attempts_24h)]
    counts = await store.lead_counts("t")
    if counts["in_call"] or counts["leased"]:
        out.append(f"counts {counts}")
    return out


class Run:
    """One virtual-time run on the in-memory store with reservations ahead: ``n`` leads, each answered
    after 2 s and talking ``talk`` s; what it recorded and what it left behind."""

    def __init__(self, vrun: Any, n: int, *, talk: float, agents: int, pacer: Steady, until: float,
                 plugins: tuple[object, ...] = (), **pacing: Any) -> None:
        self.leads = [Lead(lead_id=f"L{i}", campaign_id="t", phone=f"+1212555{i:04d}") for i in range(1, n + 1)]
        self.plans = {lead.lead_id: human(after=2, talk=talk) for lead in self.leads}

        async def main() -> Any:
            store = MemoryStore()
            dialer, summary, _ = await run_script(ahead_campaign(**pacing), self.plans, agents=agents, store=store,
                                                  leads=self.leads, pacer=pacer, until=until, plugins=plugins)
            left = await leftovers(store, dialer, self.leads)  # before anyone else claims what is left
            again = await store.claim_leads("t", n, now=dialer.clock.now() + 1, node_id="other", lease_s=60)
            return dialer, summary, left, again, await store.results("t"), await store.blocks("t")

        self.dialer, self.summary, self.left, self.again, self.rows, self.blocks = vrun(main())
        self.ahead = self.summary["reserve_ahead"]
        self.dialled = {r["lead_id"] for r in self.rows}


def test_every_lead_dialled_once_from_the_hopper_and_nothing_left_reserved(vrun: Any) -> None:
    run = Run(vrun, 40, talk=20, agents=4, pacer=Steady(1, 6), until=600)
    assert run.dialled == set(run.plans)  # every lead dialled
    assert attempts_in_order(run.rows) == {}  # none twice on one attempt, none lost
    assert run.ahead["taken"] > 0 and run.ahead["taken"] + run.ahead["missed"] >= len(run.rows)
    assert run.left == []
    assert len(run.dialer.decision_times) == len(run.rows)


def test_a_stop_gives_back_what_the_hopper_holds(vrun: Any) -> None:
    run = Run(vrun, 60, talk=30, agents=3, pacer=Steady(1, 6), until=15)
    assert 0 < len(run.dialled) < len(run.leads)  # stopped part-way
    assert run.ahead["given_back"] > 0 and run.ahead["held"] == 0
    assert run.left == []
    # What was held and never dialled is anyone's to claim at once, with no attempt spent on it.
    assert sorted(lead.lead_id for lead in run.again) == sorted(set(run.plans) - run.dialled)
    assert all(lead.attempts == 0 for lead in run.again)


def test_entries_too_old_are_given_back_and_read_again(vrun: Any) -> None:
    """A context older than the limit is not dialled on: the lead is given back and claimed afresh, its
    context read again. Here entries age (decisions every 0.1 s, limit 0.3 s, and no dial asked while
    two calls ring); every lead is still dialled, and no attempt is spent on an entry given back."""
    run = Run(vrun, 20, talk=5, agents=2, pacer=Steady(1, 2), until=600, interval="0.1s",
              reserve_ahead_max_age="0.3s")
    assert run.dialled == set(run.plans)
    assert attempts_in_order(run.rows) == {}
    assert run.ahead["given_back"] > 0
    assert run.left == []


class RefuseSome:
    def __init__(self, refused: set[str]) -> None:
        self.refused = refused

    @hookimpl
    def dialer_check_dial(self, ctx: DialContext, campaign: Any) -> Veto | None:
        if ctx.lead.lead_id in self.refused:
            return Veto("test.refused", "this lead may not be called")
        return None


def test_the_gate_still_decides_each_dial_and_its_refusal_undoes_the_reservation(vrun: Any) -> None:
    refused = {"L3", "L8", "L15"}
    run = Run(vrun, 20, talk=10, agents=3, pacer=Steady(1, 6), until=600, plugins=(RefuseSome(refused),))
    assert run.dialled == set(run.plans) - refused
    assert attempts_in_order(run.rows) == {}
    assert {(b["lead_id"], b["rule"]) for b in run.blocks} == {(lid, "test.refused") for lid in refused}
    assert run.ahead["taken"] > 0
    assert run.left == []  # the refused leads' numbers unlocked and uncounted


async def test_the_hopper_is_on_with_redis_and_off_in_memory_unless_configured() -> None:
    memory = MemoryStore()
    remote = RedisStore("redis://127.0.0.1:1/0", index=INDEX)  # never connected: only its kind matters
    try:
        assert [reserves_ahead(None, memory), reserves_ahead(True, memory), reserves_ahead(None, remote),
                reserves_ahead(False, remote)] == [False, True, True, False]
    finally:
        await remote.close()


async def test_on_redis_nothing_is_left_reserved_after_the_stop(redis_url: str) -> None:
    """Real time, a real redis-server, the default settings (reservations ahead on with Redis): after the
    stop no number is locked, no lead held, and no attempt counted but the ones dialled."""
    store = RedisStore(redis_url, prefix="hop", index=INDEX)
    leads = [Lead(lead_id=f"L{i}", campaign_id="t", phone=f"+1212555{i:04d}") for i in range(1, 31)]
    plans = {lead.lead_id: human(after=0.05, talk=0.1) for lead in leads}
    cfg = campaign(retry={"max_attempts": 1}, pacing={"interval": "0.05s"},
                   simulation={"agent": {"wrap_mean": "0.02s", "think_mean": "0s"}})
    try:
        # a few seconds of dialling, then the stop: what the hopper holds then is given back
        dialer, summary, _ = await run_script(cfg, plans, agents=3, store=store, leads=leads, pacer=Steady(1, 6),
                                              until=3.0)
        rows = await store.results("t")
        assert rows and attempts_in_order(rows) == {}
        assert summary["reserve_ahead"]["taken"] > 0
        assert await leftovers(store, dialer, leads) == []
    finally:
        await store.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert [k for k in client.scan_iter("hop:*lock:*")] == []  # every number unlocked
    finally:
        client.close()

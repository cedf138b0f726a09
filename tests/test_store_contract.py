"""One contract for every store: each test runs against MemoryStore and RedisStore (a real
redis-server), so the engine cannot come to depend on behaviour only one of them has.
The Redis-only tests at the bottom check what only Redis has to prove: nothing stored in
plain, the DNC footprint, connection loss, Cluster-safe keys, several nodes at once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from redis_server import RedisServer, _free_port, dump_all

from engine.crypto import DecryptError, FieldCipher, key_id
from engine.models import CallAttempt, CallResult, Lead, Outcome, Veto, mask_phone
from engine.pii import BlindIndex
from engine.store import redis as redis_store
from engine.store.base import Caps, Store, StoreUnavailable
from engine.store.memory import MemoryStore
from engine.store.redis import BUCKET_BITS, SCRIPTS, RedisStore, bucket_of

T0 = 1_767_600_000.0  # 2026-01-05 08:00 UTC, minute-aligned
DAY = "2026-01-05"
BIG = Caps(per_day=100, per_24h=100, lifetime=100, lock_s=60.0)
INDEX = BlindIndex(b"contract-test index key, 32 byte")


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        s: Any = MemoryStore(index=INDEX)
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix="test", index=INDEX)
    yield s
    await s.close()


def mk(lead_id: str, phone: str, *, campaign: str = "t", tier: int = 1, score: float = 0.0,
       next_eligible: float = 0.0, **kw: Any) -> Lead:
    return Lead(lead_id=lead_id, campaign_id=campaign, phone=phone, tier=tier, score=score,
                next_eligible=next_eligible, **kw)


def phone(i: int) -> str:
    return f"+1212555{i:04d}"


_calls = iter(range(1, 10**9))


def attempt(lead: Lead) -> CallAttempt:
    return CallAttempt(call_id=f"c{next(_calls)}", lead=lead, campaign_id=lead.campaign_id,
                       attempt_no=lead.attempts + 1)


def result(call: CallAttempt, outcome: Outcome = Outcome.NO_ANSWER) -> CallResult:
    return CallResult(call_id=call.call_id, campaign_id=call.campaign_id, lead_id=call.lead.lead_id,
                      attempt_no=call.attempt_no, outcome=outcome, cause=19, disposition=None, agent_id=None,
                      answer_kind=None, started="2026-01-05T08:00:00+00:00", ring_s=25.0, wait_s=None,
                      talk_s=None, phone_masked=mask_phone(call.lead.phone), tier=call.lead.tier)


async def dial(store: Store, lead: Lead, *, now: float, caps: Caps = BIG, day_key: str = DAY,
               outcome: Outcome = Outcome.NO_ANSWER, next_eligible: float | None = None,
               finish: bool = True, invalid: bool = False) -> tuple[CallAttempt, str]:
    """Reserve (and by default finish) one attempt; returns the call and the reservation's rule ('' = ok)."""
    call = attempt(lead)
    res = await store.reserve_attempt(call, now=now, day_key=day_key, caps=caps, node_id="n1")
    if res.ok:
        lead.attempts += 1  # as the next claim would say: a copy that does not move on is a stale claim
    if res.ok and finish:
        await store.finish_attempt(call, result(call, outcome), now=now + 30, next_eligible=next_eligible,
                                   abandoned=outcome == Outcome.ABANDONED, live=outcome.live,
                                   invalid_number=invalid)
    return call, res.rule


# -- leads ---------------------------------------------------------------------------------


async def test_add_leads_counts_new_and_updates_by_number(store: Store) -> None:
    assert await store.add_leads([mk("a", phone(1)), mk("b", phone(2)), mk("c", phone(3))]) == 3
    # The same number again, under another id, with new data: an update of lead "b", not a new lead.
    again = mk("b2", phone(2), score=7.0, tags=("vip",), attributes={"x": "1"}, timezone="America/Chicago")
    assert await store.add_leads([again]) == 0
    assert (await store.lead_counts("t"))["pending"] == 3
    got = await store.claim_leads("t", 10, now=T0, node_id="n1", lease_s=60)
    assert [lead.lead_id for lead in got] == ["b", "a", "c"]  # "b" now scores highest
    b = got[0]
    assert (b.phone, b.score, b.tags, b.attributes, b.timezone) == (phone(2), 7.0, ("vip",), {"x": "1"},
                                                                    "America/Chicago")
    assert b.status == "leased"
    with pytest.raises(ValueError, match="already used"):
        await store.add_leads([mk("a", phone(9))])  # an id already used for another number


async def test_update_keeps_the_dialling_history(store: Store) -> None:
    await store.add_leads([mk("a", phone(1))])
    [lead] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    await dial(store, lead, now=T0, next_eligible=T0 + 500)
    await store.add_leads([mk("a", phone(1), score=3.0, attempts=0, next_eligible=0.0)])
    assert await store.claim_leads("t", 1, now=T0 + 499, node_id="n1", lease_s=60) == []
    [again] = await store.claim_leads("t", 1, now=T0 + 500, node_id="n1", lease_s=60)
    assert (again.attempts, again.score) == (1, 3.0)


async def test_claim_in_rank_order_and_by_tier(store: Store) -> None:
    await store.add_leads([mk("t1s5", phone(1), tier=1, score=5), mk("t0s1", phone(2), tier=0, score=1),
                           mk("t0s9", phone(3), tier=0, score=9), mk("t2s99", phone(4), tier=2, score=99),
                           mk("t1s6", phone(5), tier=1, score=6)])
    only2 = await store.claim_leads("t", 5, now=T0, node_id="n1", lease_s=60, tiers={2})
    assert [x.lead_id for x in only2] == ["t2s99"]
    first = await store.claim_leads("t", 2, now=T0, node_id="n1", lease_s=60)
    rest = await store.claim_leads("t", 5, now=T0, node_id="n1", lease_s=60)
    assert [x.lead_id for x in first + rest] == ["t0s9", "t0s1", "t1s6", "t1s5"]
    assert await store.claim_leads("t", 5, now=T0, node_id="n1", lease_s=60) == []


async def test_next_eligible_is_respected(store: Store) -> None:
    await store.add_leads([mk("later", phone(1), next_eligible=T0 + 100), mk("other", phone(2), campaign="u")])
    assert await store.next_eligible_at("t") == T0 + 100
    assert await store.claim_leads("t", 5, now=T0 + 99.5, node_id="n1", lease_s=60) == []
    [lead] = await store.claim_leads("t", 5, now=T0 + 100, node_id="n1", lease_s=60)
    assert lead.lead_id == "later"
    assert await store.next_eligible_at("t") == T0 + 160  # its lease
    await store.release_lead(lead, now=T0 + 101, next_eligible=None)
    assert await store.next_eligible_at("t") is None
    assert await store.next_eligible_at("nobody") is None


async def test_lapsed_lease_returns_the_lead_never_twice_while_held(store: Store) -> None:
    await store.add_leads([mk("a", phone(1))])
    [mine] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    assert await store.claim_leads("t", 1, now=T0 + 59.9, node_id="n2", lease_s=60) == []
    assert (await store.lead_counts("t"))["leased"] == 1
    [again] = await store.claim_leads("t", 1, now=T0 + 60, node_id="n2", lease_s=60)
    assert again.lead_id == mine.lead_id and again.phone == phone(1)
    assert await store.claim_leads("t", 1, now=T0 + 61, node_id="n1", lease_s=60) == []
    counts = await store.lead_counts("t")
    assert (counts["leased"], counts["pending"]) == (1, 0)


async def test_release_reschedules_or_closes(store: Store) -> None:
    await store.add_leads([mk("a", phone(1)), mk("b", phone(2))])
    a, b = await store.claim_leads("t", 2, now=T0, node_id="n1", lease_s=600)
    await store.release_lead(a, now=T0, next_eligible=T0 + 10)
    await store.release_lead(b, now=T0, next_eligible=None)
    assert await store.lead_counts("t") == {"pending": 1, "leased": 0, "in_call": 0, "done": 1}
    assert await store.claim_leads("t", 2, now=T0 + 9, node_id="n1", lease_s=600) == []
    assert [x.lead_id for x in await store.claim_leads("t", 2, now=T0 + 10, node_id="n1", lease_s=600)] == ["a"]


# -- reservation ---------------------------------------------------------------------------


async def test_reservation_counts_and_locks_the_number(store: Store) -> None:
    await store.add_leads([mk("a", phone(1)), mk("x", phone(1), campaign="u")])
    [lead] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    call, rule = await dial(store, lead, now=T0, finish=False)
    assert rule == ""
    assert await store.lead_counts("t") == {"pending": 0, "leased": 0, "in_call": 1, "done": 0}
    assert await store.next_eligible_at("t") is None  # in a call: not due for anything
    ctx = await store.dial_context(lead, now=T0 + 1, day_key=DAY)
    assert (ctx.in_flight, ctx.attempts_today, ctx.attempts_24h, ctx.dnc) == (True, 1, 1, False)
    # The same number in another campaign is locked too.
    [other] = await store.claim_leads("u", 1, now=T0 + 1, node_id="n2", lease_s=60)
    assert (await dial(store, other, now=T0 + 1))[1] == "in_flight"
    # Finished: the lock is gone; the lead is rescheduled with one attempt more.
    await store.finish_attempt(call, result(call), now=T0 + 30, next_eligible=T0 + 90, abandoned=False, live=False)
    assert not (await store.dial_context(lead, now=T0 + 31, day_key=DAY)).in_flight
    assert (await dial(store, other, now=T0 + 31))[1] == ""
    [back] = await store.claim_leads("t", 1, now=T0 + 90, node_id="n1", lease_s=60)
    assert back.attempts == 1


async def test_a_burst_reserves_in_order_and_refuses_only_what_it_must(store: Store) -> None:
    """The Dialer decides a burst of dials at once: one lead on DNC, one over its per-day cap, a second
    call to a number the burst has just locked (another campaign's lead), an unknown lead and a stale
    claim are refused, each for its own rule, while the others are reserved and counted."""
    caps = Caps(per_day=1, per_24h=10, lifetime=10, lock_s=60.0)
    await store.add_leads([mk(f"l{i}", phone(i)) for i in range(6)]
                          + [mk("u2", phone(2), campaign="u"), mk("u3", phone(3), campaign="u")])
    leads = await store.claim_leads("t", 6, now=T0, node_id="n1", lease_s=60)
    by_id = {lead.lead_id: lead for lead in leads}
    u2, u3 = await store.claim_leads("u", 2, now=T0, node_id="n1", lease_s=60)
    await store.add_dnc([phone(1)])
    assert (await dial(store, u2, now=T0 - 600, caps=caps))[1] == ""  # phone(2) has had its call today
    stale = dataclasses.replace(by_id["l5"], attempts=3)
    ghost = mk("nobody", phone(9))
    burst = [by_id["l0"], by_id["l1"], by_id["l2"], by_id["l3"], u3, ghost, by_id["l4"], stale]
    ctxs = await store.dial_contexts(burst[:5], now=T0, day_keys=[DAY] * 5)
    alone = [await store.dial_context(lead, now=T0, day_key=DAY) for lead in burst[:5]]
    assert ctxs == alone
    assert [(c.dnc, c.attempts_today) for c in ctxs] == [(False, 0), (True, 0), (False, 1), (False, 0), (False, 0)]
    calls = [attempt(lead) for lead in burst]
    res = await store.reserve_attempts(calls, now=T0, day_keys=[DAY] * len(calls), caps=caps, node_id="n1")
    assert [r.rule for r in res] == ["", "dnc", "cap_per_day", "", "in_flight", "unknown_lead", "", "lease_lost"]
    assert [r.ok for r in res] == [True, False, False, True, False, False, True, False]
    assert all(r.reason for r in res if not r.ok)
    assert (await store.lead_counts("t"))["in_call"] == 3
    assert (await store.lead_counts("u"))["leased"] == 1  # u3 was refused: still this node's claim
    # What was reserved is counted and locked; what was refused left nothing behind.
    after = await store.dial_contexts([by_id["l0"], by_id["l1"], by_id["l3"]], now=T0 + 1, day_keys=[DAY] * 3)
    assert [(c.in_flight, c.attempts_today) for c in after] == [(True, 1), (False, 0), (True, 1)]
    assert await store.reserve_attempts([], now=T0, day_keys=[], caps=caps, node_id="n1") == []
    assert await store.dial_contexts([], now=T0, day_keys=[]) == []


async def test_lock_frees_itself_when_a_node_dies(store: Store) -> None:
    await store.add_leads([mk("a", phone(1)), mk("x", phone(1), campaign="u")])
    [lead] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    await dial(store, lead, now=T0, finish=False, caps=Caps(100, 100, 100, lock_s=120.0))
    [other] = await store.claim_leads("u", 1, now=T0, node_id="n2", lease_s=600)
    assert (await dial(store, other, now=T0 + 119, finish=False))[1] == "in_flight"
    assert (await dial(store, other, now=T0 + 120, finish=False))[1] == ""


async def test_a_lapsed_claim_never_dials_an_attempt_twice(store: Store) -> None:
    """n1's lease lapses (a slow preview), n2 claims and dials the lead: n1's copy is stale. Its reservation is
    refused whatever the caps allow, and its release neither revives the closed lead nor counts anything."""
    await store.add_leads([mk("a", phone(1))])
    [slow] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=10)
    [fast] = await store.claim_leads("t", 1, now=T0 + 10, node_id="n2", lease_s=10)
    assert (slow.attempts, fast.attempts) == (0, 0)
    assert (await dial(store, fast, now=T0 + 11, next_eligible=None))[1] == ""  # closed after attempt 1
    call, rule = await dial(store, slow, now=T0 + 50, finish=False)
    assert rule == "lease_lost"
    await store.release_lead(slow, now=T0 + 50, next_eligible=T0 + 60)
    assert await store.lead_counts("t") == {"pending": 0, "leased": 0, "in_call": 0, "done": 1}
    assert await store.claim_leads("t", 1, now=T0 + 3600, node_id="n1", lease_s=10) == []
    ctx = await store.dial_context(slow, now=T0 + 60, day_key=DAY)
    assert (ctx.attempts_today, ctx.in_flight) == (1, False)
    assert [(r["lead_id"], r["attempt_no"]) for r in await store.results("t")] == [("a", 1)]


async def test_a_call_whose_node_died_is_recorded_lost_and_the_lead_comes_back(store: Store) -> None:
    """Reserved, never finished: held while the number lock holds (the PBX may still carry the call), then one
    result row says the attempt was lost and the lead returns for its next attempt, never the same one."""
    caps = Caps(per_day=100, per_24h=100, lifetime=100, lock_s=120.0)
    await store.add_leads([mk("a", phone(1), tier=2, attributes={"customer_type": "hesitant"})])
    [lead] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=10)
    call, rule = await dial(store, lead, now=T0, caps=caps, finish=False)
    assert rule == ""
    assert await store.next_eligible_at("t") is None  # nothing to wait for: a run may end
    assert await store.claim_leads("t", 1, now=T0 + 119, node_id="n2", lease_s=10) == []
    assert (await store.lead_counts("t"))["in_call"] == 1
    [back] = await store.claim_leads("t", 1, now=T0 + 120, node_id="n2", lease_s=10)
    assert (back.lead_id, back.attempts) == ("a", 1)
    [row] = await store.results("t")
    assert (row["call_id"], row["attempt_no"], row["outcome"], row["tier"], row["customer_type"]) == \
        (call.call_id, 1, "unknown", 2, "hesitant")
    assert row["phone"] == mask_phone(phone(1)) and row["started"] == "2026-01-05T08:00:00+00:00"
    assert [h["call_id"] for h in (await store.dial_context(back, now=T0 + 120, day_key=DAY)).history] == \
        [call.call_id]
    # The dead node's write, should it ever come, changes nothing; the next attempt is attempt 2.
    await store.finish_attempt(call, result(call), now=T0 + 130, next_eligible=None, abandoned=False, live=False)
    assert len(await store.results("t")) == 1
    nxt, rule = await dial(store, back, now=T0 + 130, caps=caps, next_eligible=None)
    assert (rule, nxt.attempt_no) == ("", 2)
    assert [r["attempt_no"] for r in await store.results("t")] == [1, 2]
    assert await store.lead_counts("t") == {"pending": 0, "leased": 0, "in_call": 0, "done": 1}


async def test_reservation_refuses_dnc_global_and_campaign(store: Store) -> None:
    await store.add_leads([mk("a", phone(1)), mk("b", phone(2))])
    a, b = await store.claim_leads("t", 2, now=T0, node_id="n1", lease_s=60)
    assert await store.add_dnc([phone(1)]) == 1
    assert await store.add_dnc([phone(1)]) == 0  # already there
    assert await store.add_dnc([phone(2)], campaign_id="other") == 1  # another campaign's list
    assert (await store.dial_context(a, now=T0, day_key=DAY)).dnc
    assert not (await store.dial_context(b, now=T0, day_key=DAY)).dnc
    assert (await dial(store, a, now=T0))[1] == "dnc"
    assert (await dial(store, b, now=T0, finish=False))[1] == ""
    await store.add_dnc([phone(2)], campaign_id="t")
    assert (await store.dial_context(b, now=T0, day_key=DAY)).dnc
    assert (await dial(store, b, now=T0 + 999))[1] == "dnc"


async def test_reservation_refuses_invalid_numbers_everywhere(store: Store) -> None:
    await store.add_leads([mk("a", phone(1)), mk("x", phone(1), campaign="u")])
    [lead] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    await dial(store, lead, now=T0, outcome=Outcome.INVALID_NUMBER, invalid=True)
    [other] = await store.claim_leads("u", 1, now=T0 + 60, node_id="n1", lease_s=60)
    assert (await store.dial_context(other, now=T0 + 60, day_key=DAY)).invalid_number
    assert (await dial(store, other, now=T0 + 60))[1] == "invalid_number"
    assert await store.invalid_numbers([phone(2), phone(1)]) == [False, True]  # what an import leaves out


async def test_per_day_cap_counts_across_campaigns(store: Store) -> None:
    caps = Caps(per_day=2, per_24h=100, lifetime=100, lock_s=10)
    await store.add_leads([mk("a", phone(1)), mk("x", phone(1), campaign="u")])
    [a] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    [x] = await store.claim_leads("u", 1, now=T0, node_id="n1", lease_s=60)
    assert (await dial(store, a, now=T0, caps=caps))[1] == ""
    assert (await dial(store, x, now=T0 + 100, caps=caps))[1] == ""
    call, rule = await dial(store, a, now=T0 + 200, caps=caps)
    assert rule == "cap_per_day"
    assert (await dial(store, a, now=T0 + 200, caps=caps, day_key="2026-01-06"))[1] == ""  # a new local day
    ctx = await store.dial_context(a, now=T0 + 300, day_key=DAY)
    assert (ctx.attempts_today, ctx.attempts_24h) == (2, 3)


async def test_rolling_24h_cap_to_the_second(store: Store) -> None:
    caps = Caps(per_day=100, per_24h=2, lifetime=100, lock_s=10)
    await store.add_leads([mk("a", phone(1))])
    [a] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    await dial(store, a, now=T0, caps=caps, day_key="d1")
    await dial(store, a, now=T0 + 3600, caps=caps, day_key="d2")
    assert (await dial(store, a, now=T0 + 86_399, caps=caps, day_key="d3"))[1] == "cap_24h"
    assert (await store.dial_context(a, now=T0 + 86_399, day_key="d3")).attempts_24h == 2
    assert (await store.dial_context(a, now=T0 + 86_400, day_key="d3")).attempts_24h == 1
    assert (await dial(store, a, now=T0 + 86_400, caps=caps, day_key="d3"))[1] == ""


async def test_lifetime_cap_per_lead_and_rule_order(store: Store) -> None:
    caps = Caps(per_day=100, per_24h=100, lifetime=2, lock_s=10)
    await store.add_leads([mk("a", phone(1))])
    [a] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    for i in range(2):
        assert (await dial(store, a, now=T0 + 100 * i, caps=caps))[1] == ""
    assert (await dial(store, a, now=T0 + 300, caps=caps))[1] == "cap_lifetime"
    await store.add_dnc([phone(1)])
    assert (await dial(store, a, now=T0 + 400, caps=caps))[1] == "dnc"  # DNC is named first


async def test_lifetime_cap_judged_on_the_stored_count(store: Store) -> None:
    """A stale copy of the lead (claimed again elsewhere after a lapsed lease) cannot slip past the cap,
    and the refused attempt counts nowhere."""
    caps = Caps(per_day=100, per_24h=100, lifetime=1, lock_s=10)
    await store.add_leads([mk("a", phone(1))])
    [stale] = await store.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
    [fresh] = await store.claim_leads("t", 1, now=T0 + 60, node_id="n2", lease_s=60)
    assert (await dial(store, fresh, now=T0 + 60, caps=caps, next_eligible=T0 + 100))[1] == ""
    assert stale.attempts == 0
    assert (await dial(store, stale, now=T0 + 100, caps=caps, finish=False))[1] == "cap_lifetime"
    ctx = await store.dial_context(stale, now=T0 + 100, day_key=DAY)
    assert (ctx.in_flight, ctx.attempts_today, ctx.attempts_24h) == (False, 1, 1)


async def test_finish_records_results_history_and_closes(store: Store) -> None:
    await store.add_leads([mk("a", phone(1)), mk("b", phone(2))])
    a, b = await store.claim_leads("t", 2, now=T0, node_id="n1", lease_s=60)
    ca, _ = await dial(store, a, now=T0, outcome=Outcome.BUSY, next_eligible=T0 + 900)
    cb, _ = await dial(store, b, now=T0 + 1, outcome=Outcome.CONNECTED, next_eligible=None)
    assert await store.lead_counts("t") == {"pending": 1, "leased": 0, "in_call": 0, "done": 1}
    rows = await store.results("t")
    assert [(r["call_id"], r["outcome"], r["lead_id"]) for r in rows] == [(ca.call_id, "busy", "a"),
                                                                          (cb.call_id, "connected", "b")]
    assert rows[0] == result(ca, Outcome.BUSY).as_row()
    ctx = await store.dial_context(a, now=T0 + 900, day_key=DAY)
    assert [h["call_id"] for h in ctx.history] == [ca.call_id]
    assert await store.next_eligible_at("t") == T0 + 900
    [again] = await store.claim_leads("t", 5, now=T0 + 900, node_id="n1", lease_s=60)
    assert (again.lead_id, again.attempts) == ("a", 1)
    assert await store.results("none") == []


async def test_abandon_counts_over_windows_and_minute_buckets(store: Store) -> None:
    await store.add_leads([mk(f"l{i}", phone(i)) for i in range(8)])
    leads = await store.claim_leads("t", 8, now=T0, node_id="n1", lease_s=10**6)
    # (finish time, outcome): minute buckets from T0 (minute-aligned), across two UTC days.
    plan = [(T0 - 86_400 * 29, Outcome.ABANDONED), (T0 - 3 * 3600, Outcome.CONNECTED),
            (T0 - 60, Outcome.ABANDONED), (T0, Outcome.CONNECTED), (T0 + 59, Outcome.CUSTOMER_HANGUP),
            (T0 + 60, Outcome.ABANDONED), (T0 + 61, Outcome.NO_ANSWER), (T0 + 86_400, Outcome.CONNECTED)]
    for lead, (at, outcome) in zip(leads, plan, strict=True):
        call = attempt(lead)
        assert (await store.reserve_attempt(call, now=at - 30, day_key=str(at), caps=BIG, node_id="n1")).ok
        await store.finish_attempt(call, result(call, outcome), now=at, next_eligible=None,
                                   abandoned=outcome == Outcome.ABANDONED, live=outcome.live)

    async def counts(since: float, now: float) -> tuple[int, int]:
        c = await store.abandon_counts("t", since=since, now=now)
        return c.abandoned, c.live

    assert await counts(T0, T0) == (0, 2)  # the bucket of T0 holds T0 and T0 + 59
    assert await counts(T0, T0 + 60) == (1, 3)
    assert await counts(T0 - 60, T0 + 60) == (2, 4)
    assert await counts(T0 + 60 - 86_400, T0 + 60) == (2, 5)  # 24 h window
    assert await counts(T0 + 60 - 30 * 86_400, T0 + 60) == (3, 6)  # 30-day window
    assert await counts(T0 + 61, T0 + 86_400) == (1, 2)
    assert await counts(T0 - 30 * 86_400, T0 + 86_400) == (3, 7)  # windows are at most 31 days
    c = await store.abandon_counts("t", since=T0 - 60, now=T0 + 60)
    assert c.rate == 0.5
    assert (await store.abandon_counts("other", since=T0 - 86_400, now=T0)).live == 0
    # An abandon marks the number for the 72 h rule.
    ctx = await store.dial_context(leads[5], now=T0 + 100, day_key=DAY)
    assert ctx.last_abandoned_at == T0 + 60


async def test_blocks_read_back_in_order(store: Store) -> None:
    await store.add_leads([mk("a", phone(1)), mk("b", phone(2))])
    a, b = await store.claim_leads("t", 2, now=T0, node_id="n1", lease_s=60)
    await store.record_block("t", a, Veto("compliance.hours", "outside 08:00-21:00", T0 + 3600), now=T0)
    await store.record_block("t", b, Veto("dnc", "on the list"), now=T0 + 0.25)
    assert await store.blocks("t") == [
        {"lead_id": "a", "rule": "compliance.hours", "reason": "outside 08:00-21:00", "at": T0},
        {"lead_id": "b", "rule": "dnc", "reason": "on the list", "at": T0 + 0.25},
    ]
    assert await store.blocks("u") == []


async def test_lead_counts_through_a_lifecycle(store: Store) -> None:
    assert await store.lead_counts("t") == {"pending": 0, "leased": 0, "in_call": 0, "done": 0}
    await store.add_leads([mk(f"l{i}", phone(i)) for i in range(4)])
    l0, l1, l2 = await store.claim_leads("t", 3, now=T0, node_id="n1", lease_s=60)
    await dial(store, l0, now=T0, finish=False)
    await dial(store, l1, now=T0, next_eligible=None)
    assert await store.lead_counts("t") == {"pending": 1, "leased": 1, "in_call": 1, "done": 1}


# -- Redis only ----------------------------------------------------------------------------


async def _small_campaign(s: RedisStore) -> list[str]:
    """Leads, claims, every kind of outcome, DNC (global, campaign, file), blocks; returns the numbers."""
    numbers = [f"+4420794{i:05d}" for i in range(6)] + [f"+1415555{i:04d}" for i in range(6)]
    await s.add_leads([mk(f"lead-{i}", p, attributes={"note": "hello", "email": f"person{i}@example.org",
                                                      "notes": [f"asked about the premium plan {i}"]},
                          consent_source="web") for i, p in enumerate(numbers)])
    leads = await s.claim_leads("t", 20, now=T0, node_id="n1", lease_s=60)
    outcomes = [Outcome.CONNECTED, Outcome.ABANDONED, Outcome.INVALID_NUMBER, Outcome.BUSY, Outcome.MACHINE]
    for i, lead in enumerate(leads[:5]):
        await dial(s, lead, now=T0 + i, outcome=outcomes[i], next_eligible=T0 + 900,
                   invalid=outcomes[i] == Outcome.INVALID_NUMBER)
    await s.record_block("t", leads[6], Veto("compliance.hours", "outside the window"), now=T0)
    await s.dial_context(leads[7], now=T0, day_key=DAY)
    await dial(s, leads[8], now=T0, finish=False)
    await s.add_dnc([numbers[9]])
    listed = next(lead for lead in leads if lead.phone == numbers[9])
    assert (await dial(s, listed, now=T0 + 2000))[1] == "dnc"  # the lead half, run beside it, is undone
    await s.add_dnc([numbers[10]], campaign_id="t")
    await s.release_lead(leads[11], now=T0, next_eligible=T0 + 5)
    stale = dataclasses.replace(leads[3], attempts=0)  # its stored count is 1 now; this copy still says 0
    assert (await dial(s, stale, now=T0 + 1000, caps=Caps(100, 100, 1, 10)))[1] == "cap_lifetime"
    return numbers


async def test_redis_holds_no_plain_phone_number(redis_url: str) -> None:
    s = RedisStore(redis_url, prefix="pii", index=INDEX)
    try:
        numbers = await _small_campaign(s)
        claimed = await s.claim_leads("t", 20, now=T0 + 900, node_id="n1", lease_s=60)
        assert {lead.phone for lead in claimed} <= set(numbers) and claimed  # they decrypt
        for lead in claimed:  # and so do the sensitive attributes, with the rest as they were
            i = int(lead.lead_id.split("-")[1])
            assert lead.attributes == {"note": "hello", "email": f"person{i}@example.org",
                                       "notes": [f"asked about the premium plan {i}"]}
    finally:
        await s.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    dump = dump_all(client)
    client.close()
    assert len(dump) > 50
    for number in numbers:
        digits = number.lstrip("+")
        for form in (number, digits, digits[-10:], digits[-9:]):  # E.164, digits, national forms
            leaks = [text for text in dump if form in text]
            assert not leaks, f"{mask_phone(number)} found in plain: {leaks[:1]!r}"
    for secret in ("@example.org", "premium plan"):  # sensitive attributes and agent notes
        assert not [text for text in dump if secret in text], f"{secret!r} found in plain"
    assert any("hello" in text for text in dump)  # the scan does see attributes that are not sensitive


async def test_dnc_of_a_million_numbers_takes_a_few_mb(redis_url: str, tmp_path: Any) -> None:
    rng = random.Random(7)
    numbers_list = [f"+1{rng.randrange(2_000_000_000, 9_999_999_999)}" for _ in range(1_000_000)]
    path = tmp_path / "dnc.txt"
    path.write_text("# national DNC extract\n" + "\n".join(numbers_list) + "\nnot-a-number\n\n")
    s = RedisStore(redis_url, prefix="big", index=INDEX)
    try:
        added = await s.load_dnc_file(path)
        # ~60 numbers drawn twice, and a 47-bit coincidence may merge a few more (fail safe).
        assert 999_500 <= added <= 1_000_000
        sample = rng.sample(numbers_list, 2000)
        assert all(await s.dnc_contains(sample))
        outsiders = [f"+44{rng.randrange(10**9, 10**10)}" for _ in range(2000)]
        assert not any(await s.dnc_contains(outsiders))
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        keys = list(client.scan_iter(match=s.dnc_key_pattern(), count=10_000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        total = sum(pipe.execute())
        encodings = {client.object("encoding", k) for k in rng.sample(keys, 200)}
        client.close()
    finally:
        await s.close()
    assert len(keys) == 2**BUCKET_BITS
    assert encodings == {"intset"}
    print(f"DNC: {total / 2**20:.2f} MiB for {added:,} numbers")
    assert total < 5 * 2**20, f"{total / 2**20:.1f} MiB for 1M DNC numbers"


class _Log:
    """Records what the store logs (structlog may be configured and cached by other tests)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append({"event": event, **kw})

    info = warning


async def test_dnc_load_warns_when_a_bucket_outgrows_the_intset_setting(redis_url: str, tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``set-max-intset-entries`` members a set is silently re-encoded as a hash table, some ten times
    the memory per number: the load says so, with the setting to use."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.config_set("set-max-intset-entries", 16)
    s = RedisStore(redis_url, prefix="warn", index=INDEX)
    try:
        path = tmp_path / "dnc.txt"
        path.write_text("\n".join(f"+1212{i:07d}" for i in range(8_000)) + "\n")  # ~2 a bucket, a few at most
        monkeypatch.setattr(redis_store, "log", quiet := _Log())
        await s.load_dnc_file(path)
        assert [e["event"] for e in quiet.events] == ["dnc file loaded"]
        path.write_text("\n".join(f"+1312{i:07d}" for i in range(80_000)) + "\n")  # ~20 a bucket: too many
        monkeypatch.setattr(redis_store, "log", loud := _Log())
        assert await s.load_dnc_file(path) == 80_000
        [warning] = [e for e in loud.events if "set-max-intset-entries" in e["event"]]
        assert warning["limit"] == 16 and warning["largest"] > 16
        setting = 1 << (2 * warning["largest"] - 1).bit_length()  # a power of two, room to double
        assert warning["advice"] == f"CONFIG SET set-max-intset-entries {setting}"
        assert all(await s.dnc_contains([f"+1312{i:07d}" for i in range(0, 80_000, 997)]))
        # what it warns of: the buckets past the limit lost the compact encoding (the others keep it)
        encodings = {client.object("encoding", k) for k in client.scan_iter(match="warn:*dnc")}
        assert "hashtable" in encodings
    finally:
        client.config_set("set-max-intset-entries", 512)
        client.close()
        await s.close()


async def test_store_unavailable_when_the_server_stops(tmp_path: Any) -> None:
    server = RedisServer()
    server.start()
    s = RedisStore(server.url, prefix="gone", index=INDEX, socket_timeout=0.5, connect_timeout=0.5, op_timeout=2)
    try:
        await s.add_leads([mk("a", phone(1))])
        [lead] = await s.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
        assert server.proc is not None
        # Frozen server: timeouts, not a hang; then it recovers by itself.
        os.kill(server.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.dial_context(lead, now=T0, day_key=DAY)
        assert time.monotonic() - started < 3.0
        os.kill(server.proc.pid, signal.SIGCONT)
        assert (await s.lead_counts("t"))["leased"] == 1
        # Stopped server: every method fails fast with StoreUnavailable.
        server.stop()
        call = attempt(lead)
        ops = [
            s.add_leads([mk("b", phone(2))]),
            s.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60),
            s.dial_context(lead, now=T0, day_key=DAY),
            s.reserve_attempt(call, now=T0, day_key=DAY, caps=BIG, node_id="n1"),
            s.finish_attempt(call, result(call), now=T0, next_eligible=None, abandoned=False, live=False),
            s.release_lead(lead, now=T0, next_eligible=None),
            s.record_block("t", lead, Veto("r", "x"), now=T0),
            s.abandon_counts("t", since=T0 - 3600, now=T0),
            s.add_dnc([phone(3)]),
            s.lead_counts("t"),
            s.next_eligible_at("t"),
            s.results("t"),
            s.blocks("t"),
        ]
        for op in ops:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await op
            assert time.monotonic() - started < 3.0
    finally:
        await s.close()
        server.stop()


async def test_a_burst_costs_a_constant_number_of_round_trips(redis_url: str) -> None:
    """Reading and reserving a burst of any size: one round trip to read, one to reserve, and one more
    only when a reservation's half must be undone (counted on the client, whatever the burst's size:
    every write to the server, whichever path sent it)."""
    s = RedisStore(redis_url, prefix="trips", index=INDEX)
    trips: list[str] = []
    pool_class = s._redis.connection_pool.connection_class
    send = pool_class.send_packed_command

    async def counted_send(self: Any, command: Any, check_health: bool = True) -> None:
        trips.append("write")
        await send(self, command, check_health)

    def counting(on: bool) -> None:
        trips.clear()
        pool_class.send_packed_command = counted_send if on else send

    try:
        for size in (1, 10, 60):
            cid = f"b{size}"
            await s.add_leads([mk(f"{cid}-{i}", phone(1000 * size + i), campaign=cid) for i in range(size)])
            leads = await s.claim_leads(cid, size, now=T0, node_id="n1", lease_s=60)
            await s.warm_up()  # every script loaded (a server that restarted reloads them; tested below)
            counting(True)
            ctxs = await s.dial_contexts(leads, now=T0, day_keys=[DAY] * size)
            assert len(ctxs) == size and len(trips) == 1, trips
            trips.clear()
            res = await s.reserve_attempts([attempt(lead) for lead in leads], now=T0, day_keys=[DAY] * size,
                                           caps=BIG, node_id="n1")
            assert all(r.ok for r in res) and len(trips) == 1, trips
            counting(False)
            # Read and reserve together (the Dialer's burst): one round trip for both.
            more = [mk(f"{cid}-m{i}", phone(1000 * size + 500 + i), campaign=cid) for i in range(size)]
            await s.add_leads(more)
            leads = await s.claim_leads(cid, size, now=T0, node_id="n1", lease_s=60)
            counting(True)
            ctxs, res = await s.read_and_reserve([attempt(lead) for lead in leads], now=T0, day_keys=[DAY] * size,
                                                 caps=BIG, node_id="n1")
            assert len(ctxs) == size and all(r.ok for r in res) and len(trips) == 1, trips
            counting(False)
        # Refusals after the gate (DNC, a number already locked) undo the half that passed: one more trip.
        await s.add_leads([mk(f"r-{i}", phone(9000 + i), campaign="r") for i in range(20)])
        leads = await s.claim_leads("r", 20, now=T0, node_id="n1", lease_s=60)
        await s.add_dnc([lead.phone for lead in leads[::3]])
        counting(True)
        res = await s.reserve_attempts([attempt(lead) for lead in leads], now=T0, day_keys=[DAY] * 20, caps=BIG,
                                       node_id="n1")
        assert [r.rule for r in res] == ["dnc" if i % 3 == 0 else "" for i in range(20)]
        assert len(trips) == 2, trips
        counting(False)
        assert await s.lead_counts("r") == {"pending": 0, "leased": 7, "in_call": 13, "done": 0}
    finally:
        pool_class.send_packed_command = send
        await s.close()


async def test_read_and_reserve_reads_before_reserving_and_undo_gives_everything_back(store: Store) -> None:
    """The Dialer's one-round-trip burst: each context as it was before the burst's reservations; the
    reservations as ``reserve_attempts`` makes them; and the ones the gate then refuses given back
    whole: number unlocked and uncounted, the lead's count as claimed, leased again, so that its
    release reschedules it and another dial of it can be reserved."""
    await store.add_leads([mk(f"l{i}", phone(700 + i)) for i in range(6)])
    await store.add_dnc([phone(705)])
    leads = await store.claim_leads("t", 6, now=T0, node_id="n1", lease_s=60)
    calls = [attempt(lead) for lead in leads]
    ctxs, res = await store.read_and_reserve(calls, now=T0, day_keys=[DAY] * 6, caps=BIG, node_id="n1")
    assert [c.lead.lead_id for c in ctxs] == [lead.lead_id for lead in leads]
    assert not any(c.in_flight or c.attempts_today or c.attempts_24h for c in ctxs)  # read before reserving
    assert [c.dnc for c in ctxs] == [lead.phone == phone(705) for lead in leads]
    assert [r.rule for r in res] == ["dnc" if lead.phone == phone(705) else "" for lead in leads]
    assert (await store.lead_counts("t"))["in_call"] == 5
    refused = [c for c, r in zip(calls, res, strict=True) if r.ok][:3]  # as if the gate said no to three
    await store.undo_reservations(refused, now=T0, day_keys=[DAY] * 3)
    await store.undo_reservations(refused, now=T0, day_keys=[DAY] * 3)  # twice: nothing more given back
    assert await store.lead_counts("t") == {"pending": 0, "leased": 4, "in_call": 2, "done": 0}
    after = await store.dial_contexts([c.lead for c in refused], now=T0 + 1, day_keys=[DAY] * 3)
    assert not any(c.in_flight or c.attempts_today or c.attempts_24h for c in after)
    for call in refused:  # the claimed copy is current again: released and claimed afresh, then dialled
        await store.release_lead(call.lead, now=T0 + 1, next_eligible=T0 + 2)
    again = await store.claim_leads("t", 6, now=T0 + 3, node_id="n2", lease_s=60)
    assert sorted(lead.lead_id for lead in again) == sorted(c.lead.lead_id for c in refused)
    assert all(lead.attempts == 0 for lead in again)
    redial = [attempt(lead) for lead in again]
    assert all(r.ok for r in await store.reserve_attempts(redial, now=T0 + 3, day_keys=[DAY] * 3, caps=BIG,
                                                           node_id="n2"))
    # A reservation that is no longer the call's own (here: finished) is left alone by an undo.
    kept = [c for c, r in zip(calls, res, strict=True) if r.ok][3:]
    await store.finish_attempt(kept[0], result(kept[0]), now=T0 + 4, next_eligible=None, abandoned=False,
                               live=False)
    await store.undo_reservations(kept, now=T0 + 4, day_keys=[DAY] * 2)  # the other one is given back
    assert await store.lead_counts("t") == {"pending": 0, "leased": 2, "in_call": 3, "done": 1}
    [ctx] = await store.dial_contexts([kept[0].lead], now=T0 + 5, day_keys=[DAY])
    assert ctx.attempts_today == 1 and not ctx.in_flight  # the finished call still counted


async def test_a_burst_after_a_script_flush_reloads_and_runs_each_script_once(redis_url: str) -> None:
    """A restarted server forgets the scripts: the burst's runs the server refused (NOSCRIPT) are sent
    again once loaded; none of them had run, so nothing is counted twice."""
    s = RedisStore(redis_url, prefix="flush", index=INDEX)
    client = redis.Redis.from_url(redis_url)
    try:
        await s.add_leads([mk(f"l{i}", phone(i)) for i in range(5)])
        leads = await s.claim_leads("t", 5, now=T0, node_id="n1", lease_s=60)
        client.script_flush()
        res = await s.reserve_attempts([attempt(lead) for lead in leads], now=T0, day_keys=[DAY] * 5,
                                       caps=BIG, node_id="n1")
        assert all(r.ok for r in res)
        ctxs = await s.dial_contexts(leads, now=T0 + 1, day_keys=[DAY] * 5)
        assert [c.attempts_today for c in ctxs] == [1] * 5
        assert (await s.lead_counts("t"))["in_call"] == 5
        client.script_flush()  # single scripts too (adding, claiming): loaded again, each run once
        assert await s.add_leads([mk("l9", phone(9))]) == 1
        assert [lead.lead_id for lead in await s.claim_leads("t", 5, now=T0, node_id="n1", lease_s=60)] == ["l9"]
        assert await s.lead_counts("t") == {"pending": 0, "leased": 1, "in_call": 5, "done": 0}
    finally:
        client.close()
        await s.close()


async def test_two_nodes_reserving_bursts_of_the_same_leads_dial_each_once(redis_url: str) -> None:
    """Two nodes whose claims overlap (one's lease lapsed) reserve the same leads in bursts at once:
    no lead is reserved by both (a lead whose two halves went to different nodes is reserved by
    neither, and left as it was)."""
    a = RedisStore(redis_url, prefix="bursts", index=INDEX)
    b = RedisStore(redis_url, prefix="bursts", index=INDEX)
    try:
        await a.add_leads([mk(f"l{i}", phone(i)) for i in range(40)])
        first = await a.claim_leads("t", 40, now=T0, node_id="a", lease_s=10)
        second = await b.claim_leads("t", 40, now=T0 + 11, node_id="b", lease_s=60)  # a's leases lapsed
        assert {lead.lead_id for lead in second} == {lead.lead_id for lead in first}
        res_a, res_b = await asyncio.gather(
            a.reserve_attempts([attempt(lead) for lead in first], now=T0 + 11, day_keys=[DAY] * 40, caps=BIG,
                               node_id="a"),
            b.reserve_attempts([attempt(lead) for lead in second], now=T0 + 11, day_keys=[DAY] * 40, caps=BIG,
                               node_id="b"))
        won = {lead.lead_id: r.ok for lead, r in zip(first, res_a, strict=True)}
        for lead, r in zip(second, res_b, strict=True):
            assert not (won[lead.lead_id] and r.ok), lead.lead_id  # never both
        reserved = sum(r.ok for r in [*res_a, *res_b])
        assert reserved >= 1 and {r.rule for r in [*res_a, *res_b] if not r.ok} <= {"in_flight", "lease_lost"}
        assert await a.lead_counts("t") == {"pending": 0, "leased": 40 - reserved, "in_call": reserved, "done": 0}
        ctxs = await a.dial_contexts(first, now=T0 + 12, day_keys=[DAY] * 40)
        assert sum(c.in_flight for c in ctxs) == reserved == sum(c.attempts_today for c in ctxs)
    finally:
        await a.close()
        await b.close()


async def test_every_script_keeps_its_keys_in_one_slot(redis_url: str) -> None:
    s = RedisStore(redis_url, prefix="slots", index=INDEX)
    s.script_calls = []
    try:
        await _small_campaign(s)
        await s.abandon_counts("t", since=T0 - 30 * 86_400, now=T0 + 60)
    finally:
        await s.close()
    seen = {name for name, _, _ in s.script_calls}
    assert seen >= set(SCRIPTS) - {"reencrypt", "batch"}  # batch: it runs the others, recorded one by one
    for name, keys, tag in s.script_calls:
        built = [tag + "lead:any-lead", tag + "rdy:3", tag + "hist:x"] if tag else []
        slots = {key_slot(k.encode()) for k in keys + built}
        assert len(slots) == 1, (name, keys, tag)
    # And every key in the database carries exactly one of the two hash tags, after the prefix (but the
    # deployment's layout version, a key of its own).
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = list(client.scan_iter(count=1000))
    client.close()
    assert keys and "slots:{meta}:layout" in keys
    for key in keys:
        assert key.startswith(("slots:{c:", "slots:{n:")) or key == "slots:{meta}:layout", key
    # Number keys are tagged by the number's DNC bucket: the reservation's keys are all there.
    ix = INDEX(phone(1))
    assert s.number_tag(ix) == f"slots:{{n:{bucket_of(ix)}}}:"


async def test_two_nodes_never_get_the_same_lead(redis_url: str) -> None:
    a = RedisStore(redis_url, prefix="nodes", index=INDEX)
    b = RedisStore(redis_url, prefix="nodes", index=INDEX)
    try:
        await a.add_leads([mk(f"l{i}", phone(i), score=i % 7) for i in range(300)])
        claims = await asyncio.gather(*(
            (a if i % 2 else b).claim_leads("t", 7, now=T0, node_id=f"n{i % 2}", lease_s=60) for i in range(60)))
        ids = [lead.lead_id for batch in claims for lead in batch]
        assert len(ids) == 300 and len(set(ids)) == 300
        # The same lead reserved ten times at once from both nodes (a lapsed lease, pushed to the extreme):
        # never more than one reservation, and the lead is either in that call or back as it was. (Both
        # halves of a reservation run side by side; when one call takes the number's lock and another the
        # lead's count, each undoes its half and neither dials: safe, and only a race on one lead does it.)
        lead = next(batch[0] for batch in claims if batch)
        calls = [attempt(lead) for _ in range(10)]
        res = await asyncio.gather(*((a if i % 2 else b).reserve_attempt(c, now=T0, day_key=DAY, caps=BIG,
                                                                         node_id="n")
                                     for i, c in enumerate(calls)))
        won = sum(r.ok for r in res)
        assert won <= 1 and {r.rule for r in res if not r.ok} <= {"in_flight", "lease_lost"}
        assert await a.lead_counts("t") == {"pending": 0, "leased": 300 - won, "in_call": won, "done": 0}
        ctx = await a.dial_context(lead, now=T0 + 1, day_key=DAY)
        assert (ctx.in_flight, ctx.attempts_today) == ((True, 1) if won else (False, 0))
        # The same number, two campaigns' leads, reserved from both nodes at once: exactly one wins.
        await a.add_leads([mk("x", phone(1000), campaign="x"), mk("y", phone(1000), campaign="y")])
        [x] = await a.claim_leads("x", 1, now=T0, node_id="n0", lease_s=60)
        [y] = await b.claim_leads("y", 1, now=T0, node_id="n1", lease_s=60)
        for i in range(5):
            cx, cy = attempt(x), attempt(y)
            res = await asyncio.gather(a.reserve_attempt(cx, now=T0 + i, day_key=DAY, caps=BIG, node_id="n0"),
                                       b.reserve_attempt(cy, now=T0 + i, day_key=DAY, caps=BIG, node_id="n1"))
            assert sorted(r.rule for r in res) == ["", "in_flight"]
            (won_call, winner), loser = ((cx, x), y) if res[0].ok else ((cy, y), x)
            assert (await a.lead_counts(winner.campaign_id))["in_call"] == 1
            assert (await a.lead_counts(loser.campaign_id))["leased"] == 1  # its lead half undone
            await a.finish_attempt(won_call, result(won_call), now=T0 + i, next_eligible=T0, abandoned=False,
                                   live=False)
            [again] = await a.claim_leads(winner.campaign_id, 1, now=T0 + i, node_id="n", lease_s=60)
            if winner is x:
                x = again
            else:
                y = again
    finally:
        await a.close()
        await b.close()


async def test_finish_may_be_retried_without_counting_twice(redis_url: str) -> None:
    s = RedisStore(redis_url, prefix="retry", index=INDEX)
    try:
        await s.add_leads([mk("a", phone(1))])
        [lead] = await s.claim_leads("t", 1, now=T0, node_id="n1", lease_s=60)
        call, _ = await dial(s, lead, now=T0, finish=False)
        for _ in range(2):  # e.g. the reply was lost and the engine wrote again
            await s.finish_attempt(call, result(call, Outcome.ABANDONED), now=T0 + 10, next_eligible=T0 + 100,
                                   abandoned=True, live=True)
        assert len(await s.results("t")) == 1
        counts = await s.abandon_counts("t", since=T0, now=T0 + 60)
        assert (counts.abandoned, counts.live) == (1, 1)
    finally:
        await s.close()


async def test_key_rotation_reencrypts_lead_records(redis_url: str) -> None:
    old, new = bytes(range(32)), bytes(range(1, 33))
    s1 = RedisStore(redis_url, prefix="rot", index=INDEX, cipher=FieldCipher(old))
    s2 = RedisStore(redis_url, prefix="rot", index=INDEX, cipher=FieldCipher([new, old]))
    s3 = RedisStore(redis_url, prefix="rot", index=INDEX, cipher=FieldCipher(new))
    try:
        await s1.add_leads([mk("a", phone(1), attributes={"email": "a@example.org"}), mk("b", phone(2))])
        assert await s2.reencrypt("t") == 2
        assert await s2.reencrypt("t") == 0
        got = await s3.claim_leads("t", 5, now=T0, node_id="n1", lease_s=60)
        assert sorted(lead.phone for lead in got) == [phone(1), phone(2)]
        assert next(lead for lead in got if lead.lead_id == "a").attributes == {"email": "a@example.org"}
    finally:
        for s in (s1, s2, s3):
            await s.close()


def test_field_cipher_binds_key_and_record(monkeypatch: pytest.MonkeyPatch) -> None:
    key = bytes(range(32))
    c = FieldCipher(key)
    token = c.encrypt("+12125550100", "t/a")
    assert token.startswith(key_id(key) + ":") and "2125550100" not in token
    assert c.decrypt(token, "t/a") == "+12125550100"
    assert c.encrypt("+12125550100", "t/a") != token  # a fresh nonce every time
    with pytest.raises(DecryptError):
        c.decrypt(token, "t/b")  # copied onto another lead
    with pytest.raises(DecryptError):
        FieldCipher(bytes(32)).decrypt(token, "t/a")  # unknown key id
    with pytest.raises(ValueError):
        FieldCipher(b"short")
    monkeypatch.setenv("DIALER_DATA_KEY", f"{bytes(32).hex()},{key.hex()}")
    rotated = FieldCipher.from_env()
    assert rotated.decrypt(token, "t/a") == "+12125550100" and rotated.needs_rotation(token)
    assert not rotated.is_development
    monkeypatch.delenv("DIALER_DATA_KEY")
    assert FieldCipher.from_env().is_development


class LocalCluster:
    """Three redis-server primaries in cluster mode on loopback, slots split by hand (fast, no redis-cli)."""

    def __init__(self, nodes: int = 3) -> None:
        self.ports = [_free_port() for _ in range(nodes)]
        self.buses = [_free_port() for _ in range(nodes)]  # port + 10000 may not exist: say it
        self.dirs = [tempfile.mkdtemp(prefix="dialer-cluster-") for _ in range(nodes)]
        self.procs = [subprocess.Popen(
            ["redis-server", "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", d, "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for port, bus, d in zip(self.ports, self.buses, self.dirs, strict=True)]
        try:
            self._join()
        except BaseException:
            self.stop()  # never leave orphan servers behind
            raise

    def _join(self) -> None:
        nodes = len(self.ports)
        clients = [redis.Redis(port=p, decode_responses=True, socket_timeout=2) for p in self.ports]
        deadline = time.monotonic() + 20
        for c in clients:
            while True:
                try:
                    c.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "cluster node did not start"
                    time.sleep(0.05)
        share = 16384 // nodes
        for i, c in enumerate(clients):
            last = 16383 if i == nodes - 1 else (i + 1) * share - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        for port, bus in zip(self.ports[1:], self.buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
        while not all("cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in clients):
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.05)
        for c in clients:
            c.close()

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


async def test_runs_on_a_real_redis_cluster(tmp_path: Any) -> None:
    """Every script and pipeline on a 3-primary cluster: a key outside its script's slot would fail here
    with CROSSSLOT, or with a non-local key error when a script builds a key of another node."""
    cluster = LocalCluster()
    s = RedisStore(cluster.url, prefix="cl", index=INDEX)
    try:
        for cid in ("t", "u", "v"):  # campaigns on different nodes
            await s.add_leads([mk(f"{cid}{i}", phone(i), campaign=cid) for i in range(5)])
        numbers = await _small_campaign(s)
        assert (await s.lead_counts("u"))["pending"] == 5
        [u0] = await s.claim_leads("u", 1, now=T0, node_id="n1", lease_s=60)
        assert (await dial(s, u0, now=T0 + 5000))[1] in ("dnc", "invalid_number", "")
        assert len(await s.results("t")) == 5 and len(await s.blocks("t")) == 1
        counts = await s.abandon_counts("t", since=T0 - 30 * 86_400, now=T0 + 3600)
        assert (counts.abandoned, counts.live) == (1, 2)
        path = tmp_path / "dnc.txt"
        path.write_text("\n".join(f"+1999555{i:04d}" for i in range(3000)) + "\n")
        assert await s.load_dnc_file(path) == 3000
        assert all(await s.dnc_contains([f"+1999555{i:04d}" for i in range(3000)]))
        assert await s.dnc_contains([numbers[9], numbers[10], numbers[11]], campaign_id="t") == [True, True, False]
        assert await s.reencrypt("t") == 0
    finally:
        await s.close()
        cluster.stop()

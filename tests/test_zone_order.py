"""Ordering within a tier by time zone: the claim adds a bonus per zone to the leads' scores (the best
time to call learnt from live-answer rates by local hour), merging the tier's per-zone ready queues.

Both stores, the Redis one a real redis-server (tests/redis_server.py) and a real three-primary cluster;
the claim order checked against a plain sort of the ready leads by effective score, and the two stores
against each other on a randomized campaign; the ranking plugin's bonus from learnt rates, through the
dialer; the layout 2 -> 3 migration of an old store written key by key as layout 2 wrote it."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from test_best_time import rates_with
from test_store_contract import LocalCluster

import plugins.ranking as ranking
from engine.claim_order import ClaimOrder
from engine.hooks import hookimpl
from engine.models import CallAttempt, CallResult, Lead, Outcome
from engine.pii import BlindIndex
from engine.plugins import make_plugin_manager
from engine.store import redis as redis_store
from engine.store.base import Store, StoreUnavailable
from engine.store.memory import MemoryStore
from engine.store.redis import LAYOUT_VERSION, RedisStore, StoreLayoutError
from engine.testing import campaign, human, run_script

INDEX = BlindIndex(b"zone-order-test index key, 32 b!")
T0 = 1_767_621_600.0  # 2026-01-05 14:00 UTC: 09:00 in New York, 06:00 in Los Angeles, 14:00 in London
NY, LA, LON, TYO = "America/New_York", "America/Los_Angeles", "Europe/London", "Asia/Tokyo"
ZONES = [NY, LA, LON, TYO, "America/Chicago", "Australia/Sydney", "America/Argentina/Buenos_Aires", ""]


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        s: Any = MemoryStore(index=INDEX)
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix="zo", index=INDEX)
    yield s
    await s.close()


def phone(i: int) -> str:
    return f"+1415555{i:04d}"


def mk(lead_id: str, i: int, *, zone: str | None, score: float, tier: int = 1, campaign_id: str = "z",
       next_eligible: float = 0.0) -> Lead:
    return Lead(lead_id=lead_id, campaign_id=campaign_id, phone=phone(i), tier=tier, score=score,
                timezone=zone, next_eligible=next_eligible)


def expected(leads: list[Lead], bonus: Mapping[str, float] | None = None) -> list[str]:
    """The claim order by definition: tier, then score + the zone's bonus, highest first, then lead id
    (what Redis orders equal scores by; the tests' ties are added in id order, the memory store's order)."""
    bonus = bonus or {}
    return [x.lead_id for x in sorted(leads, key=lambda x: (x.tier, -(x.score + bonus.get(x.timezone or "", 0.0)),
                                                            x.lead_id))]


async def claim_ids(store: Store, n: int, *, now: float = T0, bonus: Mapping[str, float] | None = None,
                    **kw: Any) -> list[str]:
    return [x.lead_id for x in await store.claim_leads("z", n, now=now, node_id="n1", lease_s=600,
                                                       zone_bonus=bonus, **kw)]


# -- the stores ------------------------------------------------------------------------------


async def test_without_a_bonus_the_order_is_the_plain_score_order_across_zones(store: Store) -> None:
    leads = [mk("a1", 1, zone=NY, score=5), mk("a2", 2, zone=LA, score=9), mk("a3", 3, zone=None, score=7),
             mk("a4", 4, zone=LON, score=5), mk("a5", 5, zone=NY, score=1), mk("a6", 6, zone=LA, score=5),
             mk("b1", 7, zone=TYO, score=100, tier=2), mk("b2", 8, zone=NY, score=-3, tier=0)]
    await store.add_leads(leads)
    got = await claim_ids(store, 3) + await claim_ids(store, 2) + await claim_ids(store, 10)
    # ties (score 5 in three zones) go by id, as a single queue had them
    assert got == expected(leads) == ["b2", "a2", "a3", "a1", "a4", "a6", "a5", "b1"]
    assert await store.lead_zones("z") == {NY, LA, LON, TYO, ""}


async def test_a_bonus_per_zone_reorders_within_the_tier_never_across(store: Store) -> None:
    leads = [mk(f"l{i:02d}", i, zone=ZONES[i % len(ZONES)], score=float(i % 7), tier=i % 2) for i in range(40)]
    await store.add_leads(leads)
    bonus = {NY: 4.5, LON: -2.0, "": 10.0, TYO: 0.25}
    got = []
    for n in (1, 4, 7, 3, 100):  # claims that stop mid-merge and carry on from the queues' new heads
        got += await claim_ids(store, n, bonus=bonus)
    assert got == expected(leads, bonus)
    assert got[:20] == expected([x for x in leads if x.tier == 0], bonus)


async def test_a_tier_filter_and_retries_keep_the_zone_order(store: Store) -> None:
    leads = [mk(f"l{i:02d}", i, zone=ZONES[i % 4], score=float(i), tier=i % 3) for i in range(24)]
    await store.add_leads(leads)
    bonus = {LA: 30.0, LON: 15.0}
    only2 = await claim_ids(store, 5, bonus=bonus, tiers={2})
    assert only2 == expected([x for x in leads if x.tier == 2], bonus)[:5]
    # given back for later (a retry): queued in its zone again when it comes due
    claimed = {x.lead_id: x for x in await store.claim_leads("z", 24, now=T0, node_id="n1", lease_s=600)}
    for lead_id in list(claimed)[:6] + only2[:2]:
        lead = claimed.get(lead_id) or next(x for x in leads if x.lead_id == lead_id)
        await store.release_lead(dataclasses.replace(lead, attempts=0), now=T0, next_eligible=T0 + 60)
    back = [x for x in leads if x.lead_id in set(list(claimed)[:6]) | set(only2[:2])]
    assert await claim_ids(store, 10, now=T0 + 59, bonus=bonus) == []
    assert await claim_ids(store, 10, now=T0 + 60, bonus=bonus) == expected(back, bonus)


async def test_a_lead_that_changes_zone_is_claimed_under_its_new_zone(store: Store) -> None:
    leads = [mk("a", 1, zone=NY, score=1), mk("b", 2, zone=LA, score=2), mk("c", 3, zone=LON, score=3)]
    await store.add_leads(leads)
    await store.add_leads([mk("a-again", 1, zone=LA, score=1)])  # same number: an update of lead "a"
    bonus = {LA: 5.0}
    assert await claim_ids(store, 3, bonus=bonus) == ["b", "a", "c"]
    assert LA in await store.lead_zones("z")


async def test_a_stale_entry_in_another_zones_queue_is_sent_home_and_claimed_once(redis_url: str) -> None:
    """A lead found in a queue not its own (the claim is defensive about it) goes to its own queue, and
    the merge reads that queue's head again: every lead once, in order."""
    s = RedisStore(redis_url, prefix="stale", index=INDEX)
    try:
        leads = [mk(f"l{i:02d}", i, zone=ZONES[i % 3], score=float(i)) for i in range(12)]
        await s.add_leads(leads)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        client.zadd(f"stale:{{c:z}}:rdy:1:{LON}", {"l00": -1000.0})  # l00 lives in New York
        client.close()
        bonus = {NY: 3.0}
        assert await claim_ids(s, 5, bonus=bonus) + await claim_ids(s, 20, bonus=bonus) == expected(leads, bonus)
    finally:
        await s.close()


async def test_the_memory_and_redis_stores_claim_in_the_same_order(redis_url: str) -> None:
    """A randomized campaign: leads in many zones and three tiers, some not yet due, claims of random sizes
    under changing bonuses, leads given back: both stores hand out exactly the same leads in the same order,
    and each claim is the plain sort of the ready leads by (tier, effective score)."""
    rng = random.Random(20260105)
    zones = [*ZONES, "Europe/Paris", "Asia/Kolkata", "Pacific/Auckland", "Not/AZone"]
    leads = [mk(f"r{i:03d}", i, zone=rng.choice([*zones, None]), score=round(rng.uniform(-20, 20), 6),
                tier=rng.randrange(3), next_eligible=rng.choice([0.0, 0.0, 0.0, T0 + rng.randrange(1, 600)]))
             for i in range(400)]
    mem, red = MemoryStore(index=INDEX), RedisStore(redis_url, prefix="rnd", index=INDEX)
    try:
        for s in (mem, red):
            await s.add_leads(leads)
        assert await mem.lead_zones("z") == await red.lead_zones("z") == {x.timezone or "" for x in leads}
        model = {x.lead_id: x for x in leads}  # not claimed (or given back), with its due time
        now = T0
        total = 0
        while model:
            now += rng.choice([0, 5, 30, 90])
            bonus = {z: round(rng.uniform(-15, 15), 3) for z in rng.sample(zones, rng.randrange(len(zones)))}
            tiers = rng.choice([None, None, {0}, {1, 2}])
            n = rng.randrange(1, 40)
            got = [await s.claim_leads("z", n, now=now, node_id="n", lease_s=10_000, zone_bonus=bonus or None,
                                       **({} if tiers is None else {"tiers": tiers})) for s in (mem, red)]
            ids = [[x.lead_id for x in batch] for batch in got]
            ready = [x for x in model.values() if x.next_eligible <= now and (tiers is None or x.tier in tiers)]
            assert ids[0] == ids[1] == expected(ready, bonus)[:n], (now, n, tiers)
            for x in got[1]:
                del model[x.lead_id]
            total += len(got[1])
            for x in rng.sample(got[1], len(got[1]) // 4):  # some given back, due a little later
                due = now + rng.choice([0, 10, 100])
                for s, batch in zip((mem, red), got, strict=True):
                    await s.release_lead(next(y for y in batch if y.lead_id == x.lead_id), now=now, next_eligible=due)
                model[x.lead_id] = dataclasses.replace(x, next_eligible=due)
            if now > T0 + 20_000:
                break
        assert not model and total >= len(leads)
    finally:
        await red.close()


# -- the ranking plugin's bonus --------------------------------------------------------------------


# London (14:00 at T0) answers well, New York (09:00) badly, Los Angeles (06:00) is outside the window.
LEARNT = {14: (100, 50), 9: (100, 5), 12: (30, 30)}


def best_time_campaign(**ranking_settings: Any) -> Any:
    return campaign(campaign={"id": "z"}, ranking={"best_time": True, "best_time_min_dials": 50, **ranking_settings})


def test_the_bonus_follows_the_learnt_rate_at_each_zones_local_hour() -> None:
    cfg = best_time_campaign()
    ranking._rates[cfg.id] = rates_with(LEARNT)
    try:
        bonus = ranking.dialer_claim_order(campaign=cfg, now=T0, zones=[NY, LA, LON, "", "Bad/Zone"])
        rates = ranking._rates[cfg.id]
        assert bonus is not None
        assert bonus[LON] == pytest.approx(100 * (rates.rate(14) - rates.overall)) and bonus[LON] > 10
        assert bonus[NY] == pytest.approx(100 * (rates.rate(9) - rates.overall)) and bonus[NY] < -20
        assert bonus[LA] == ranking.CLOSED_BONUS  # 06:00: after every open zone
        # no zone of its own, or a zone that does not exist: the campaign's (UTC: 14:00, like London)
        assert bonus[""] == bonus["Bad/Zone"] == bonus[LON]
        # 12:00 has 30 calls, under best_time_min_dials: not trusted, no bonus
        assert ranking.dialer_claim_order(campaign=cfg, now=T0 - 2 * 3600, zones=[LON]) is None
        doubled = ranking.dialer_claim_order(campaign=best_time_campaign(best_time_weight=2.0), now=T0, zones=[LON])
        assert doubled == {LON: pytest.approx(2 * bonus[LON])}
        # outside calling hours counts only when the gate checks them
        no_hours = campaign(campaign={"id": "z"}, ranking={"best_time": True}, compliance={"hours": False})
        assert LA not in (ranking.dialer_claim_order(campaign=no_hours, now=T0, zones=[LA]) or {})
    finally:
        ranking._rates.pop(cfg.id, None)


def test_weight_zero_or_best_time_off_changes_nothing() -> None:
    for cfg in (best_time_campaign(best_time_weight=0), campaign(ranking={"best_time_weight": 3.0})):
        ranking._rates[cfg.id] = rates_with(LEARNT)
        try:
            assert ranking.dialer_claim_order(campaign=cfg, now=T0, zones=[NY, LA, LON]) is None
        finally:
            ranking._rates.pop(cfg.id, None)


async def test_leads_where_it_is_now_a_good_hour_come_first(store: Store) -> None:
    """The hook through the plugin manager, as the dialer asks it, and the claim with its answer."""
    cfg = best_time_campaign()
    ranking._rates[cfg.id] = rates_with(LEARNT)
    try:
        leads = [mk("ny-hi", 1, zone=NY, score=9.0), mk("ny-lo", 2, zone=NY, score=1.0),
                 mk("lon-lo", 3, zone=LON, score=0.0), mk("lon-hi", 4, zone=LON, score=2.0),
                 mk("la-top", 5, zone=LA, score=50.0), mk("none", 6, zone=None, score=0.5)]
        await store.add_leads(leads)
        order = ClaimOrder(make_plugin_manager(entry_points_too=False, extra=[ranking]), cfg, store, _Log())
        bonus = await order.bonus(T0)
        assert await claim_ids(store, 10, bonus=bonus) == ["lon-hi", "none", "lon-lo", "ny-hi", "ny-lo", "la-top"]
    finally:
        ranking._rates.pop(cfg.id, None)


async def test_weight_zero_claims_exactly_as_without_the_feature(store: Store) -> None:
    cfg = best_time_campaign(best_time_weight=0)
    ranking._rates[cfg.id] = rates_with(LEARNT)
    try:
        leads = [mk(f"l{i:02d}", i, zone=ZONES[i % 4], score=float(i % 5)) for i in range(20)]
        await store.add_leads(leads)
        order = ClaimOrder(make_plugin_manager(entry_points_too=False, extra=[ranking]), cfg, store, _Log())
        assert await order.bonus(T0) is None
        assert await claim_ids(store, 20, bonus=await order.bonus(T0)) == expected(leads)
    finally:
        ranking._rates.pop(cfg.id, None)


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.warnings.append(event)


class Counting:
    def __init__(self, answer: Any) -> None:
        self.calls: list[tuple[float, list[str]]] = []
        self.answer = answer

    @hookimpl
    def dialer_claim_order(self, now: float, zones: list[str]) -> Any:
        self.calls.append((now, list(zones)))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_the_dialer_asks_once_a_minute_and_sums_the_plugins() -> None:
    store = MemoryStore(index=INDEX)
    await store.add_leads([mk("a", 1, zone=NY, score=0), mk("b", 2, zone=None, score=0)])
    one, two = Counting({NY: 1.5, LON: 2.0}), Counting({NY: 1.0, "": 0.0})
    log = _Log()
    cfg = campaign(campaign={"id": "z"})
    order = ClaimOrder(make_plugin_manager(entry_points_too=False, extra=[one, two]), cfg, store, log)
    assert await order.bonus(T0) == {NY: 2.5, LON: 2.0}
    assert one.calls == [(T0, ["", NY])]
    assert await order.bonus(T0 + 59) == {NY: 2.5, LON: 2.0}  # the same minute: not asked again
    await order.bonus(T0 + 60)
    assert [t for t, _ in one.calls] == [T0, T0 + 60]
    # a failing plugin: plain score order for that minute, logged; no plugin at all: no store read either
    failing = ClaimOrder(make_plugin_manager(entry_points_too=False, extra=[Counting(RuntimeError("bug"))]),
                         cfg, store, log)
    assert await failing.bonus(T0) is None and log.warnings
    assert await ClaimOrder(make_plugin_manager(entry_points_too=False), cfg, object(), log).bonus(T0) is None


def test_through_the_dialer_the_good_hour_zone_is_dialled_first(vrun: Any) -> None:
    """The whole engine (sim backend, virtual time, 14:00 UTC): the run starts from the rates its store
    remembers (London's 14:00 answers well, New York's 09:00 badly) and dials London's leads first
    although New York's score higher; Los Angeles (06:00, outside the window) last."""
    # Only the ranking plugin is loaded: nothing vetoes Los Angeles, the claim order alone puts it last.
    cfg = campaign(ranking={"best_time": True, "best_time_min_dials": 50}, retry={"max_attempts": 1})
    store = MemoryStore(index=INDEX)

    async def remember() -> None:
        n = 0
        for hour, (dials, live) in LEARNT.items():
            for i in range(dials):
                n += 1
                old = mk(f"old{n}", 5000 + n, zone=NY, score=0, campaign_id=cfg.id)
                await store.add_leads([old])
                [claimed] = await store.claim_leads(cfg.id, 1, now=T0 - 86_400, node_id="n", lease_s=60)
                call = CallAttempt(f"old-c{n}", claimed, cfg.id, 1)
                outcome = Outcome.CONNECTED if i < live else Outcome.NO_ANSWER
                row = CallResult(call_id=call.call_id, campaign_id=cfg.id, lead_id=claimed.lead_id, attempt_no=1,
                                 outcome=outcome, cause=None, disposition=None, agent_id=None, answer_kind=None,
                                 started="", ring_s=None, wait_s=None, talk_s=None, phone_masked="", local_hour=hour)
                await store.finish_attempt(call, row, now=T0 - 86_400, next_eligible=None, abandoned=False,
                                           live=outcome.live)

    vrun(remember())
    leads = [mk("ny1", 1, zone=NY, score=8, campaign_id=cfg.id), mk("ny2", 2, zone=NY, score=7, campaign_id=cfg.id),
             mk("lon1", 3, zone=LON, score=1, campaign_id=cfg.id), mk("lon2", 4, zone=LON, score=0, campaign_id=cfg.id),
             mk("la1", 5, zone=LA, score=20, campaign_id=cfg.id)]
    vrun(run_script(cfg, {x.lead_id: human(talk=30) for x in leads}, leads=leads, store=store, plugins=[ranking],
                    until=3600))
    rows = [r for r in vrun(store.results(cfg.id)) if not r["lead_id"].startswith("old")]
    dialled = [r["lead_id"] for r in sorted(rows, key=lambda r: datetime.fromisoformat(r["started"]))]
    assert dialled == ["lon1", "lon2", "ny1", "ny2", "la1"], dialled
    assert datetime.fromisoformat(rows[0]["started"]).astimezone(UTC).hour == 14


# -- layout 2 -> 3: the store migration --------------------------------------------------------------


def write_layout2(client: Any, s: RedisStore, leads: list[Lead], *, leased: tuple[str, ...] = (),
                  stamp: bool = True) -> None:
    """Leads as layout 2 stored them, key by key: records with no zone field, one ready queue per tier."""
    for lead in leads:
        t = s.campaign_tag(lead.campaign_id)
        ix = INDEX(lead.phone)
        st = "leased" if lead.lead_id in leased else "pending"
        client.hset(t + f"lead:{lead.lead_id}", mapping={
            "d": s._blob(lead, ix), "ix": str(ix), "tier": str(lead.tier), "score": repr(float(lead.score)),
            "neg": repr(float(-lead.score)), "att": "0", "ne": repr(float(lead.next_eligible)), "st": st,
            **({"lu": repr(T0 + 30), "node": "dead-node"} if st == "leased" else {})})
        client.hset(t + "num", str(ix), lead.lead_id)
        client.sadd(t + "tiers", str(lead.tier))
        client.hincrby(t + "counts", st, 1)
        if st == "leased":
            client.zadd(t + "wait", {lead.lead_id: T0 + 30})
            client.zadd(t + "due", {lead.lead_id: T0 + 30})
        elif lead.next_eligible <= 0:
            client.zadd(t + "due", {lead.lead_id: lead.next_eligible})
            client.zadd(t + f"rdy:{lead.tier}", {lead.lead_id: -lead.score})
        else:
            client.zadd(t + "wait", {lead.lead_id: lead.next_eligible})
            client.zadd(t + "due", {lead.lead_id: lead.next_eligible})
    if stamp:
        client.set(f"{s.prefix}:{{meta}}:layout", "2")


def old_campaign(n: int = 60, campaign_id: str = "z") -> list[Lead]:
    rng = random.Random(n)
    return [mk(f"m{i:03d}", i, zone=ZONES[i % len(ZONES)] or None, score=round(rng.uniform(0, 50), 4),
               tier=i % 2, campaign_id=campaign_id, next_eligible=T0 + 100 if i % 9 == 4 else 0.0)
            for i in range(n)]


def snapshot(client: Any, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = client.type(key)
        out[key] = (client.hgetall(key) if kind == "hash" else sorted(client.smembers(key)) if kind == "set"
                    else client.zrange(key, 0, -1, withscores=True) if kind == "zset" else client.get(key))
    return out


async def test_a_layout_2_store_is_refused_then_migrated_and_claims_by_zone(redis_url: str) -> None:
    leads = old_campaign()
    leased = ("m001", "m010")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    s = RedisStore(redis_url, prefix="l2", index=INDEX)
    write_layout2(client, s, leads, leased=leased)
    write_layout2(client, s, old_campaign(20, "other"), stamp=False)
    try:
        with pytest.raises(StoreLayoutError, match=r"'2', an older key layout .*dialer store migrate"):
            await s.claim_leads("z", 5, now=T0, node_id="n1", lease_s=60)
        before = snapshot(client, "l2")
        dry = await s.migrate_layout(dry_run=True)
        ready = [x for x in leads if x.next_eligible <= 0 and x.lead_id not in leased]
        assert (dry.state, dry.campaigns, dry.leads, dry.buckets) == ("dry-run", 2, 80, False), dry
        assert dry.queued == len(ready) + 18 and "would split" in dry.summary(), dry.summary()
        assert snapshot(client, "l2") == before  # a dry run writes nothing

        report = await s.migrate_layout()
        assert (report.state, report.campaigns, report.leads, report.queued) == ("migrated", 2, 80, dry.queued)
        assert "layout 2 -> 3" in report.summary() and client.get("l2:{meta}:layout") == str(LAYOUT_VERSION)
        keys = list(client.scan_iter(match="l2:*"))
        assert not [k for k in keys if redis_store._OLD_QUEUE.match(k[len("l2:"):])], keys
        assert not [k for k in keys if "migration" in k]
        assert all(client.hget(f"l2:{{c:z}}:lead:{x.lead_id}", "z") == (x.timezone or "") for x in leads)

        bonus = {NY: 20.0, "": -5.0, TYO: 7.5}
        got = []
        for n in (3, 10, 100):
            got += await claim_ids(s, n, bonus=bonus)
        assert got == expected(ready, bonus)
        # the waiting and the lapsed leases come back into their zones' queues
        later = [x for x in leads if x not in ready]
        assert await claim_ids(s, 100, now=T0 + 100, bonus=bonus) == expected(later, bonus)
        assert await s.lead_zones("z") == {x.timezone or "" for x in leads}

        again = await s.migrate_layout()
        assert again.state == "current" and "nothing to migrate" in again.summary()
    finally:
        await s.close()
        client.close()


async def test_a_queue_migration_interrupted_resumes_and_loses_no_lead(redis_url: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    leads = old_campaign(600)  # more than hash-max-listpack-entries (512 here): HSCAN goes in batches
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    s = RedisStore(redis_url, prefix="l2crash", index=INDEX)
    write_layout2(client, s, leads)
    monkeypatch.setattr(redis_store, "_SWITCH_BATCH", 50)
    real_run = s._run
    batches = 0

    async def dies_midway(name: str, keys: list[str], args: list[Any], tag: str | None = None) -> Any:
        nonlocal batches
        if name == "layout_queues":
            batches += 1
            if batches == 3:
                raise StoreUnavailable("the connection dropped mid-migration")
        return await real_run(name, keys, args, tag)

    monkeypatch.setattr(s, "_run", dies_midway)
    try:
        with pytest.raises(StoreUnavailable):
            await s.migrate_layout()
    finally:
        await s.close()
        client.close()
    assert batches == 3

    resumed = RedisStore(redis_url, prefix="l2crash", index=INDEX)
    try:
        with pytest.raises(StoreLayoutError, match=r"migration is unfinished .*'queues'"):
            await resumed.claim_leads("z", 1, now=T0, node_id="n1", lease_s=60)
        dry = await resumed.migrate_layout(dry_run=True)
        assert dry.resumed and "would resume an interrupted migration at its queue phase" in dry.summary()
        report = await resumed.migrate_layout()
        assert report.resumed and report.leads == 600 and "resumed" in report.summary(), report.summary()
        bonus = {LA: 12.0, LON: 3.0}
        ready = [x for x in leads if x.next_eligible <= 0]
        assert await claim_ids(resumed, 1000, bonus=bonus) == expected(ready, bonus)
        assert await claim_ids(resumed, 1000, now=T0 + 100, bonus=bonus) == \
            expected([x for x in leads if x.next_eligible > 0], bonus)
    finally:
        await resumed.close()


async def test_campaign_data_with_no_layout_key_is_refused_until_migrated(redis_url: str) -> None:
    leads = old_campaign(30)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    s = RedisStore(redis_url, prefix="nokey", index=INDEX)
    write_layout2(client, s, leads, stamp=False)
    try:
        with pytest.raises(StoreLayoutError, match=r"no nokey:\{meta\}:layout key, and campaign data"):
            await s.add_leads([mk("new", 999, zone=NY, score=1)])
        report = await s.migrate_layout()
        assert report.state == "migrated" and not report.buckets and report.summary().startswith("layout 2 -> 3")
        assert await claim_ids(s, 100) == expected([x for x in leads if x.next_eligible <= 0])
    finally:
        await s.close()
        client.close()


async def test_zone_order_and_migration_on_a_real_redis_cluster() -> None:
    """The claim's merge, ``lead_zones`` and the queue migration on a 3-primary cluster: every key a script
    builds is in its campaign's slot (a key of another node would fail here)."""
    cluster = LocalCluster()
    s = RedisStore(cluster.url, prefix="zc", index=INDEX)
    client = RedisCluster.from_url(f"redis://127.0.0.1:{cluster.ports[0]}", decode_responses=True)
    try:
        for cid in ("a", "b", "c"):  # campaigns on different nodes
            leads = [mk(f"{cid}{i}", i, zone=ZONES[i % len(ZONES)] or None, score=float(i % 6), tier=i % 2,
                        campaign_id=cid) for i in range(30)]
            await s.add_leads(leads)
            bonus = {NY: 3.0, "": 1.5}
            got = [x.lead_id for x in await s.claim_leads(cid, 40, now=T0, node_id="n", lease_s=60, zone_bonus=bonus)]
            assert got == expected(leads, bonus)
            assert await s.lead_zones(cid) == {x.timezone or "" for x in leads}
        old = old_campaign(40, "old")
        write_layout2(client, s, old, stamp=False)
        client.set("zc:{meta}:layout", "2")
        fresh = RedisStore(cluster.url, prefix="zc", index=INDEX)
        try:
            report = await fresh.migrate_layout()
            assert report.campaigns == 4 and report.leads == 130, report
            bonus = {TYO: 40.0}
            got = [x.lead_id for x in await fresh.claim_leads("old", 100, now=T0, node_id="n", lease_s=60,
                                                              zone_bonus=bonus)]
            assert got == expected([x for x in old if x.next_eligible <= 0], bonus)
        finally:
            await fresh.close()
    finally:
        client.close()
        await s.close()
        cluster.stop()

"""The Redis store's key layout: a version key written on first use, a store written under the old
layout (65,536 DNC buckets) refused until ``migrate_layout`` converts it, crash-safe and re-runnable.
Against a real redis-server (tests/redis_server.py); the old layout is written as the old code wrote it."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from engine.models import CallAttempt, Lead
from engine.pii import BlindIndex
from engine.store import redis as redis_store
from engine.store.base import Caps, StoreUnavailable
from engine.store.redis import (
    BUCKET_BITS,
    LAYOUT_VERSION,
    RedisStore,
    StoreLayoutError,
    bucket_of,
    member_of,
    migrate_member,
)

INDEX = BlindIndex(b"layout-test index key, 32 bytes!")
T0 = 1_767_600_000.0
DAY = "2026-01-05"
OLD_MASK = (1 << 31) - 1


def phone(i: int) -> str:
    return f"+1646555{i:04d}"


def old_tag(ix: int) -> int:
    """Layout 1, as engine/store/redis.py had it before 447a927: bucket = the index's top 16 bits."""
    return ix >> 47


def old_member(ix: int) -> int:
    return (ix >> 16) & OLD_MASK


def write_old_layout(url: str, prefix: str) -> dict[str, list[str]]:
    """A deployment's number state as layout 1 wrote it: global DNC, one campaign's DNC, invalid numbers,
    and one number's per-day and 24 h counters (with their TTLs)."""
    numbers = {"dnc": [phone(i) for i in range(300)], "dnc:t": [phone(i) for i in range(300, 320)],
               "inv": [phone(i) for i in range(320, 325)], "counted": [phone(400)]}
    client = redis.Redis.from_url(url, decode_responses=True)
    for suffix in ("dnc", "dnc:t", "inv"):
        for p in numbers[suffix]:
            ix = INDEX(p)
            client.sadd(f"{prefix}:{{n:{old_tag(ix)}}}:{suffix}", old_member(ix))
    ix = INDEX(phone(400))
    client.set(f"{prefix}:{{n:{old_tag(ix)}}}:day:{ix}:{DAY}", 2, ex=3600)
    client.zadd(f"{prefix}:{{n:{old_tag(ix)}}}:r24:{ix}", {"old-call-1": T0 - 60, "old-call-2": T0 - 30})
    client.expire(f"{prefix}:{{n:{old_tag(ix)}}}:r24:{ix}", 3600)
    client.close()
    return numbers


def keys_of(url: str, prefix: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return {k: sorted(dump_all_one(client, k)) for k in client.scan_iter(match=f"{prefix}:*", count=1000)}
    finally:
        client.close()


def dump_all_one(client: Any, key: str) -> list[str]:
    kind = client.type(key)
    if kind == "set":
        return list(client.smembers(key))
    if kind == "string":
        return [client.get(key)]
    if kind == "zset":
        return [f"{m}={s!r}" for m, s in client.zrange(key, 0, -1, withscores=True)]
    return [kind]


def lead(i: int) -> Lead:
    return Lead(lead_id=f"L{i}", campaign_id="t", phone=phone(i), tier=1, score=0.0)


def test_the_conversion_formula_matches_both_layouts() -> None:
    rng = random.Random(7)
    for ix in [0, 1, (1 << 63) - 1, 1 << 47, (1 << 51) - 1, *(rng.getrandbits(63) for _ in range(20_000))]:
        assert migrate_member(old_tag(ix), old_member(ix)) == (bucket_of(ix), member_of(ix))
    assert BUCKET_BITS == 12 and redis_store.BUCKETS_LAYOUT == 2 and LAYOUT_VERSION == 3


async def test_a_fresh_store_gets_the_layout_key(redis_url: str) -> None:
    s = RedisStore(redis_url, prefix="fresh", index=INDEX)
    try:
        await s.add_dnc([phone(1)])
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        assert client.get("fresh:{meta}:layout") == str(LAYOUT_VERSION)
        client.close()
        report = await s.migrate_layout()
        assert report.state == "current" and report.removed == 0
    finally:
        await s.close()


async def test_an_old_layout_is_refused_then_migrated_and_dials_to_its_numbers_blocked(redis_url: str) -> None:
    numbers = write_old_layout(redis_url, "old")
    # the case layout 1 and 2 share key names (buckets under 4,096) is part of the data
    assert any(old_tag(INDEX(p)) < 1 << BUCKET_BITS for p in numbers["dnc"])
    s = RedisStore(redis_url, prefix="old", index=INDEX)
    try:
        for use in (s.claim_leads("t", 5, now=T0, node_id="n1", lease_s=60), s.dnc_contains([phone(1)]),
                    s.add_dnc([phone(999)])):
            with pytest.raises(StoreLayoutError) as refused:
                await use
            message = str(refused.value)
            assert "dialer store migrate" in message and "old:{meta}:layout" in message, message
            assert "old:{n:" in message and "layout 1" in message, message

        before = keys_of(redis_url, "old")
        dry = await s.migrate_layout(dry_run=True)
        assert dry.state == "dry-run" and dry.entries == 325 and dry.number_keys == 2, dry
        assert "would convert" in dry.summary() and keys_of(redis_url, "old") == before

        report = await s.migrate_layout()
        assert report.state == "migrated" and report.entries == 325 and report.number_keys == 2, report
        assert report.old_sets == len([k for k in before if not (":day:" in k or ":r24:" in k)])
    finally:
        await s.close()

    after = keys_of(redis_url, "old")
    for key in after:
        tag = int(key.split("{n:")[1].split("}")[0]) if "{n:" in key else 0
        assert tag < 1 << BUCKET_BITS and ":mig" not in key, key
    fresh = RedisStore(redis_url, prefix="old", index=INDEX)
    try:
        assert await fresh.dnc_contains(numbers["dnc"]) == [True] * 300
        assert await fresh.dnc_contains(numbers["dnc:t"], campaign_id="t") == [True] * 20
        assert await fresh.dnc_contains(numbers["dnc:t"]) == [False] * 20  # still the campaign's own list only
        assert await fresh.invalid_numbers(numbers["inv"]) == [True] * 5
        assert await fresh.dnc_contains([phone(i) for i in range(500, 520)]) == [False] * 20

        await fresh.add_leads([lead(i) for i in (5, 310, 321, 400, 501)])
        claimed = {x.lead_id: x for x in await fresh.claim_leads("t", 9, now=T0, node_id="n1", lease_s=60)}
        caps = Caps(per_day=2, per_24h=5)
        rules = {}
        for lead_id, x in claimed.items():
            call = CallAttempt(call_id=f"c-{lead_id}", lead=x, campaign_id="t", attempt_no=1)
            rules[lead_id] = (await fresh.reserve_attempt(call, now=T0, day_key=DAY, caps=caps, node_id="n1")).rule
        # on the global list, the campaign's list, found invalid, over the day's cap (moved with the number), free
        assert rules == {"L5": "dnc", "L310": "dnc", "L321": "invalid_number", "L400": "cap_per_day", "L501": ""}
        ctx = await fresh.dial_context(lead(400), now=T0, day_key=DAY)
        assert ctx.attempts_24h == 2
    finally:
        await fresh.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    ix = INDEX(phone(400))
    assert 0 < client.ttl(f"old:{{n:{bucket_of(ix)}}}:day:{ix}:{DAY}") <= 3600  # the TTL came along
    client.close()

    # re-running is a no-op
    settled = keys_of(redis_url, "old")
    again = RedisStore(redis_url, prefix="old", index=INDEX)
    try:
        report = await again.migrate_layout()
    finally:
        await again.close()
    assert report.state == "current" and report.removed == 0 and "nothing to migrate" in report.summary()
    assert keys_of(redis_url, "old") == settled


async def test_a_migration_interrupted_while_switching_resumes_and_loses_nothing(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    numbers = write_old_layout(redis_url, "crash")
    s = RedisStore(redis_url, prefix="crash", index=INDEX)
    monkeypatch.setattr(redis_store, "_SWITCH_BATCH", 7)
    real_run_many = s._run_many
    switched = 0

    async def dies_midway(runs: Any, tagged: Any = ()) -> Any:
        nonlocal switched
        if runs and runs[0][0] == "layout_switch":
            switched += 1
            if switched == 4:
                raise StoreUnavailable("the connection dropped mid-switch")
        return await real_run_many(runs, tagged)

    monkeypatch.setattr(s, "_run_many", dies_midway)
    try:
        with pytest.raises(StoreUnavailable):
            await s.migrate_layout()
    finally:
        await s.close()
    assert switched == 4  # some sets switched, others not yet

    resumed = RedisStore(redis_url, prefix="crash", index=INDEX)
    try:
        with pytest.raises(StoreLayoutError, match=r"migration is unfinished .*'switching'"):
            await resumed.dnc_contains([phone(1)])
        dry = await resumed.migrate_layout(dry_run=True)
        assert dry.resumed and "would resume" in dry.summary()
        report = await resumed.migrate_layout()
        assert report.state == "migrated" and report.resumed and "resumed" in report.summary()
        assert await resumed.dnc_contains(numbers["dnc"]) == [True] * 300
        assert await resumed.dnc_contains(numbers["dnc:t"], campaign_id="t") == [True] * 20
        assert await resumed.invalid_numbers(numbers["inv"]) == [True] * 5
        assert await resumed.dnc_contains([phone(i) for i in range(500, 520)]) == [False] * 20
    finally:
        await resumed.close()
    assert not [k for k in keys_of(redis_url, "crash") if ":mig" in k or "migration" in k]

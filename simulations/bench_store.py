"""Store benchmark: the per-dial decision and the reservation rate, memory vs Redis; DNC footprint.

    python -m simulations.bench_store [--leads 5000] [--concurrency 64] [--dnc 1000000]

Per dial, the decision is what the engine does between claiming a lead and
originating: ``dial_context`` (one round trip), the compliance gate with the
built-in plugins, ``reserve_attempt`` (the atomic Lua script). Reservations per
second are measured with ``--concurrency`` reservations in flight, as several
calls of a campaign (or several nodes) would have. Redis runs on a
``redis-server`` started here on a free loopback port; every Redis figure is
also given as a multiple of a bare ``PING`` round trip measured in the same
run, so runs on different machines compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import structlog

from engine.models import CallAttempt, CallResult, Lead, Outcome
from engine.plugins import Gate, make_plugin_manager
from engine.store.base import Caps
from engine.store.memory import MemoryStore
from engine.store.redis import BUCKET_BITS, RedisStore
from engine.testing import campaign
from simulations.redis_proc import RedisServer

NOW = 1_767_632_400.0  # Monday 2026-01-05 12:00 in New York: the calling window is open
DAY_KEY = "2026-01-05"
CAPS = Caps(per_day=10**6, per_24h=10**6, lifetime=10**6, lock_s=600.0)
BUILT_IN = ["plugins.compliance", "plugins.ranking", "plugins.risk", "plugins.followups"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def timed(n: int, op: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await op(i)
        out.append(time.perf_counter() - t0)
    return out


def make_leads(cid: str, n: int, offset: int) -> list[Lead]:
    return [Lead(lead_id=f"{cid}-{i}", campaign_id=cid, phone=f"+1212{offset + i:07d}", timezone="America/New_York",
                 score=float(i % 97)) for i in range(n)]


def _result(call: CallAttempt) -> CallResult:
    return CallResult(call_id=call.call_id, campaign_id=call.campaign_id, lead_id=call.lead.lead_id, attempt_no=1,
                      outcome=Outcome.NO_ANSWER, cause=19, disposition=None, agent_id=None, answer_kind=None,
                      started="2026-01-05T17:00:00+00:00", ring_s=25.0, wait_s=None, talk_s=None, phone_masked="+1**")


async def bench_burst(store: Any, gate: Gate, n: int, burst: int) -> list[float]:
    """Per-dial decision times when dials are decided ``burst`` at a time, as the Dialer does: every
    lead's context and every reservation in one call (``read_and_reserve``), then the gate on each;
    each dial's time runs from the start of its burst to the burst's verdicts (what
    ``Dialer.decision_times`` holds)."""
    await store.add_leads(make_leads("burst", n, 2 * n))
    leads = await store.claim_leads("burst", n, now=NOW, node_id="bench", lease_s=3600)
    assert len(leads) == n, f"claimed {len(leads)} of {n}"
    out: list[float] = []
    for start in range(0, n, burst):
        group = leads[start:start + burst]
        t0 = time.perf_counter()
        calls = [CallAttempt(call_id=f"b{start + i}", lead=lead, campaign_id="burst", attempt_no=1)
                 for i, lead in enumerate(group)]
        ctxs, res = await store.read_and_reserve(calls, now=NOW, day_keys=[DAY_KEY] * len(calls), caps=CAPS,
                                                 node_id="bench")
        for ctx in ctxs:
            if await gate.check(ctx) is not None:
                raise SystemExit("a dial was refused: the benchmark must measure the full path")
        if not all(r.ok for r in res):
            raise SystemExit("a reservation was refused: the benchmark must measure the full path")
        out += [time.perf_counter() - t0] * len(group)
    return out


async def bench_store(store: Any, n: int, concurrency: int, burst: int = 10) -> dict[str, float]:
    """Decision time per dial (sequential, and in bursts of ``burst``) and reservations per second
    (``concurrency`` in flight)."""
    cfg = campaign(campaign={"id": "bench", "timezone": "America/New_York"})
    gate = Gate(make_plugin_manager(BUILT_IN, entry_points_too=False), cfg)
    await store.add_leads(make_leads("bench", n, 0) + make_leads("rate", n, n))
    leads = await store.claim_leads("bench", n, now=NOW, node_id="bench", lease_s=3600)
    assert len(leads) == n, f"claimed {len(leads)} of {n}"
    vetoed = 0

    async def decide(i: int) -> None:
        nonlocal vetoed
        lead = leads[i]
        ctx = await store.dial_context(lead, now=NOW, day_key=DAY_KEY)
        if await gate.check(ctx) is not None:
            vetoed += 1
            return
        call = CallAttempt(call_id=f"d{i}", lead=lead, campaign_id="bench", attempt_no=1)
        if not (await store.reserve_attempt(call, now=NOW, day_key=DAY_KEY, caps=CAPS, node_id="bench")).ok:
            vetoed += 1

    decisions = await timed(n, decide)
    if vetoed:
        raise SystemExit(f"{vetoed} dials refused: the benchmark must measure the full path")

    claim_times = await timed(max(1, n // 50), lambda i: store.claim_leads("rate", 50, now=NOW, node_id="bench",
                                                                           lease_s=3600))
    rate_leads = make_leads("rate", n, n)
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            lead = rate_leads[i]
            call = CallAttempt(call_id=f"r{i}", lead=lead, campaign_id="rate", attempt_no=1)
            await store.reserve_attempt(call, now=NOW, day_key=DAY_KEY, caps=CAPS, node_id="bench")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = n / (time.perf_counter() - t0)

    finish = await timed(min(n, 2000), lambda i: store.finish_attempt(
        c := CallAttempt(call_id=f"d{i}", lead=leads[i], campaign_id="bench", attempt_no=1), _result(c), now=NOW + 30,
        next_eligible=NOW + 3600, abandoned=False, live=False))
    bursts = await bench_burst(store, gate, n, burst)
    return {"decision_p50": pct(decisions, 0.5), "decision_p99": pct(decisions, 0.99),
            "burst_p50": pct(bursts, 0.5), "burst_p99": pct(bursts, 0.99),
            "claim50_p50": pct(claim_times, 0.5), "finish_p50": pct(finish, 0.5), "reservations_s": rate}


async def ping_baseline(url: str, n: int = 2000) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        await client.ping()
        return pct(await timed(n, lambda i: client.ping()), 0.5)
    finally:
        await client.aclose()


async def dnc_footprint(url: str, count: int) -> tuple[int, float, int]:
    """Bytes (MEMORY USAGE) of the DNC sets holding ``count`` random numbers; load seconds; numbers added."""
    rng = random.Random(1)
    path = Path(tempfile.mkdtemp(prefix="bench-dnc-")) / "dnc.txt"
    path.write_text("\n".join(f"+1{rng.randrange(2_000_000_000, 9_999_999_999)}" for _ in range(count)) + "\n")
    store = RedisStore(url, prefix="dncbench")
    try:
        t0 = time.perf_counter()
        added = await store.load_dnc_file(path)
        load_s = time.perf_counter() - t0
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=store.dnc_key_pattern(), count=10_000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        total = sum(pipe.execute())
        client.close()
    finally:
        await store.close()
        shutil.rmtree(path.parent, ignore_errors=True)
    return total, load_s, added


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench_store", description=__doc__.split("\n")[0])
    parser.add_argument("--leads", type=int, default=5000, help="dials measured per store")
    parser.add_argument("--concurrency", type=int, default=64, help="reservations in flight for the rate")
    parser.add_argument("--burst", type=int, default=10, help="dials decided together (the Dialer's bursts)")
    parser.add_argument("--dnc", type=int, default=1_000_000, help="numbers in the DNC footprint test (0: skip)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up only
    server = RedisServer().start()
    try:
        ping = await ping_baseline(server.url)
        memory = await bench_store(MemoryStore(), args.leads, args.concurrency, args.burst)
        rstore = RedisStore(server.url, prefix="bench")
        try:
            await rstore.warm_up()  # as ``Dialer.run`` does: connections open and scripts loaded first
            red = await bench_store(rstore, args.leads, args.concurrency, args.burst)
        finally:
            await rstore.close()
        print(f"store benchmark: {args.leads} dials per store, {args.concurrency} reservations in flight, "
              f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, redis-server on loopback")
        print(f"baseline: Redis PING round trip p50 {ms(ping)}")
        print()
        print(f"{'':34} {'memory':>12} {'redis':>12} {'redis / PING':>13}")
        rows = (("decision_p50", "decision per dial p50"), ("decision_p99", "decision per dial p99"),
                ("burst_p50", f"  in bursts of {args.burst}, p50"), ("burst_p99", f"  in bursts of {args.burst}, p99"),
                ("claim50_p50", "claim 50 leads p50"), ("finish_p50", "finish_attempt p50"))
        for key, label in rows:
            print(f"{label:34} {ms(memory[key]):>12} {ms(red[key]):>12} {red[key] / ping:>12.1f}x")
        per_ping = red["reservations_s"] * ping
        print(f"{'reservations per second':34} {memory['reservations_s']:>12,.0f} {red['reservations_s']:>12,.0f} "
              f"{per_ping:>12.2f}x")
        print("  (decision = dial_context + compliance gate with the built-in plugins + reserve_attempt, one dial")
        print("   at a time; in bursts: read_and_reserve for the burst (contexts and reservations in one round")
        print("   trip), then the gate on each, each dial timed from the start of its burst to its verdicts;")
        print("   the last column of reservations/s is reservations per PING round trip)")
        if args.dnc:
            total, load_s, added = await dnc_footprint(server.url, args.dnc)
            per_million = total / added * 1_000_000
            print()
            print(f"DNC: {added:,} numbers in {2 ** BUCKET_BITS:,} intsets: {total / 2**20:.2f} MiB "
                  f"({per_million / 2**20:.2f} MiB per million, {total / added:.1f} bytes per number); "
                  f"bulk load {load_s:.1f} s ({added / load_s:,.0f} numbers/s)")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""The cheap per-call path: the virtual-time loop's own iteration, a call's event inbox, direct hook
calls, the loop-lag watcher's timer, the blind index computed once per number, the pacer's scan in
blocks. Each must behave exactly like what it replaced; none of these tests times anything."""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers import campaign, human, run_script

from engine import hooks
from engine.calls import CallEvents
from engine.models import Lead
from engine.pacing import Estimates, PredictivePacer, Snapshot, dial_cap
from engine.pbx.base import Answered, Ended, Ringing
from engine.plugins import FastHook, make_plugin_manager
from engine.store.memory import MemoryStore
from simulations.vloop import VirtualTimeDeadlock, VirtualTimeLoop, run_virtual

# -- the virtual-time loop ---------------------------------------------------------------------


def test_timers_fire_in_time_order_and_ties_in_scheduling_order():
    fired: list[tuple[float, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for name, at in (("c", 5.0), ("a", 2.0), ("d", 5.0), ("b", 2.0), ("e", 5.0)):
            loop.call_at(at, lambda n=name: fired.append((loop.time(), n)))
        later = loop.call_at(3.0, lambda: fired.append((loop.time(), "cancelled")))
        later.cancel()
        await asyncio.sleep(10)

    run_virtual(main())
    assert fired == [(2.0, "a"), (2.0, "b"), (5.0, "c"), (5.0, "d"), (5.0, "e")]


def test_many_cancelled_timers_are_swept_and_the_rest_still_fire_in_order():
    fired: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handles = [loop.call_at(100.0 + i, fired.append, i) for i in range(1000)]
        for h in handles[::3] + handles[1::3]:
            h.cancel()  # two thirds cancelled: the loop sweeps them out of its heap
        await asyncio.sleep(2000)
        assert all(not h._scheduled for h in handles)

    run_virtual(main())
    assert fired == list(range(2, 1000, 3))


def test_virtual_time_jumps_and_a_forever_wait_is_a_deadlock():
    async def sleeper() -> float:
        await asyncio.sleep(8 * 3600)
        return asyncio.get_running_loop().time()

    assert run_virtual(sleeper(), start=100.0) == pytest.approx(100.0 + 8 * 3600)

    async def stuck() -> None:
        await asyncio.Event().wait()

    with pytest.raises(VirtualTimeDeadlock):
        run_virtual(stuck())


def test_io_and_other_threads_still_reach_the_virtual_loop():
    async def main() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        ticks = 0

        async def ticker() -> None:  # virtual time goes on while the thread and the socket are awaited
            nonlocal ticks
            while True:
                await asyncio.sleep(1)
                ticks += 1

        task = asyncio.create_task(ticker())
        # A result from another thread (call_soon_threadsafe writes to the loop's wake-up pipe).
        handed = loop.create_future()
        threading.Timer(0.05, lambda: loop.call_soon_threadsafe(handed.set_result, "done")).start()
        from_thread = await handed
        # A socket pair: the reader sees the bytes sent from another thread.
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.set_result(a.recv(10)))
        threading.Timer(0.05, lambda: b.send(b"hi")).start()
        data = await asyncio.wait_for(got, timeout=10**9)
        loop.remove_reader(a.fileno())
        task.cancel()
        a.close()
        b.close()
        return from_thread + data.decode(), ticks

    text, ticks = run_virtual(main())
    assert text == "donehi" and ticks > 0


def test_run_virtual_holds_the_collector_off_and_restores_it():
    async def main() -> bool:
        return gc.isenabled()

    assert gc.isenabled()
    assert run_virtual(main()) is False
    assert gc.isenabled()
    gc.disable()  # off before: left off
    try:
        assert run_virtual(main()) is False
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- a call's event inbox ----------------------------------------------------------------------


def test_call_events_in_order_without_waiting_when_already_there():
    async def main() -> list[object]:
        events = CallEvents(asyncio.get_running_loop())
        events.put(Ringing("c1"))
        events.put(Answered("c1", kind=None))  # type: ignore[arg-type]
        return [await events.next(1.0), await events.next(1.0)]

    first, second = run_virtual(main())
    assert isinstance(first, Ringing) and isinstance(second, Answered)


def test_call_events_wait_wakes_on_put_and_times_out_with_none():
    async def main() -> tuple[object, float, object, float, int]:
        loop = asyncio.get_running_loop()
        events = CallEvents(loop)
        loop.call_later(3.0, events.put, Ended("c1", 16, "normal"))
        got = await events.next(10.0)
        at = loop.time()
        nothing = await events.next(5.0)
        # Both waits left no timer behind (the first was cancelled when the event came).
        pending = sum(1 for *_, h in loop._scheduled if not h._cancelled)
        return got, at, nothing, loop.time(), pending

    got, at, nothing, end, pending = run_virtual(main())
    assert isinstance(got, Ended) and at == pytest.approx(3.0)
    assert nothing is None and end == pytest.approx(8.0)
    assert pending == 0


# -- hooks called directly ---------------------------------------------------------------------


class _Veto:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    @hooks.hookimpl
    def dialer_after_call(self, call, result):
        return self.tag


class _Nothing:
    @hooks.hookimpl
    def dialer_after_call(self, call, result, campaign, store):
        return None


class _First:
    @hooks.hookimpl(tryfirst=True)
    def dialer_after_call(self, call):
        return "first"


def test_fast_hook_gives_what_pluggy_gives_and_follows_registrations():
    pm = make_plugin_manager(entry_points_too=False)
    pm.register(_Veto("a"))
    pm.register(_Nothing())
    pm.register(_Veto("b"))
    fast = FastHook(pm, "dialer_after_call")
    kw = dict(call=1, result=2, campaign=3, store=4)
    assert fast(**kw) == pm.hook.dialer_after_call(**kw) == ["b", "a"]
    pm.register(_First())  # registered after the first call: picked up
    assert fast(**kw) == pm.hook.dialer_after_call(**kw) == ["first", "b", "a"]
    pm.unregister(_find(pm, _First))
    assert fast(**kw) == ["b", "a"]


def _find(pm, cls):
    return next(p for p in pm.get_plugins() if isinstance(p, cls))


def test_fast_hook_first_result_errors_and_wrappers_as_pluggy():
    pm = make_plugin_manager(entry_points_too=False)

    class Later:
        @hooks.hookimpl
        def dialer_next_attempt(self, call, outcome, proposed, campaign):
            return proposed + 60

    class Never:
        @hooks.hookimpl
        def dialer_next_attempt(self, proposed):
            return None

    pm.register(Later())
    pm.register(Never())
    fast = FastHook(pm, "dialer_next_attempt")
    kw = dict(call=None, outcome=None, proposed=100.0, campaign=None)
    assert fast(**kw) == pm.hook.dialer_next_attempt(**kw) == 160.0

    class Boom:
        @hooks.hookimpl
        def dialer_next_attempt(self, call):
            raise ValueError("boom")

    pm.register(Boom())
    with pytest.raises(ValueError, match="boom"):
        fast(**kw)
    pm.unregister(_find(pm, Boom))

    seen: list[str] = []

    class Wrapper:
        @hooks.hookimpl(wrapper=True)
        def dialer_next_attempt(self, proposed):
            seen.append("before")
            result = yield
            seen.append("after")
            return result

    pm.register(Wrapper())  # a wrapper: the call goes through pluggy itself
    assert fast(**kw) == 160.0 and seen == ["before", "after"]


# -- the dialer's loop-lag watcher -------------------------------------------------------------


def test_loop_lag_watcher_is_a_timer_in_real_time_and_absent_in_virtual_time():
    cfg = campaign(retry={"max_attempts": 1})
    dialer, summary, _ = run_virtual(run_script(cfg, {"L1": human(talk=5)}))
    assert summary["errors"] == 0 and summary["connected"] == 1
    assert dialer._lag_timer is None  # virtual clock: never late, so never watched

    async def real() -> tuple[int, float, bool]:
        from engine.dialer import LOOP_LAG_EVERY_S, Dialer

        watcher = SimpleNamespace(_loop=asyncio.get_running_loop(), loop_lag=0.0, _lag_timer=None)
        watcher._watch_loop_lag = functools.partial(Dialer._watch_loop_lag, watcher)
        watcher._watch_loop_lag()
        first = watcher._lag_timer
        watcher._loop.call_soon(time.sleep, 0.05)  # the loop is busy: the first tick comes late
        await asyncio.sleep(LOOP_LAG_EVERY_S * 2.5)
        rearmed = watcher._lag_timer is not first and not watcher._lag_timer.cancelled()
        watcher._lag_timer.cancel()
        return rearmed, watcher.loop_lag, first.cancelled()

    rearmed, lag, _ = asyncio.run(real())
    assert rearmed and 0.0 < lag < 1.0


# -- the store's blind index -------------------------------------------------------------------


def test_memory_store_hashes_each_number_once():
    class Counting:
        calls = 0

        def __call__(self, phone: str) -> int:
            Counting.calls += 1
            return hash(phone) & (2**63 - 1)

    store = MemoryStore(index=Counting())  # type: ignore[arg-type]

    async def main() -> None:
        await store.add_leads([Lead(f"L{i}", "t", f"+1212555010{i}") for i in range(3)])
        for lead in await store.claim_leads("t", 3, now=0.0, node_id="n", lease_s=60.0):
            await store.dial_context(lead, now=0.0, day_key="2026-01-05")

    run_virtual(main())
    assert Counting.calls == 3


# -- the pacer's scan in blocks ----------------------------------------------------------------


def _snap(**kw) -> Snapshot:
    base = dict(now=0.0, ready=0, on_call=(), wrap_up=(), previewing=0, paused=0, ringing=(), waiting=0,
                estimates=Estimates(answer_rate=0.3), allowance=0.03, connect_limit=2.0, ring_timeout=25.0,
                max_dial_ratio=4.0)
    base.update(kw)
    return Snapshot(**base)


@pytest.mark.parametrize("ready", [0, 3, 9, 40, 150])
def test_block_scan_equals_the_full_scan_for_small_and_large_decisions(ready):
    rng = np.random.default_rng(ready)
    pacer = PredictivePacer()
    for _ in range(20):
        n = int(rng.integers(5, 120))
        s = _snap(ready=ready, on_call=tuple(rng.exponential(100, n)), wrap_up=tuple(rng.uniform(0, 15, 3)),
                  ringing=tuple(rng.uniform(0, 25, int(rng.integers(0, n)))),
                  allowance=float(rng.uniform(0.005, 0.3)))
        cap = dial_cap(s)
        if cap == 0:
            continue
        risk = pacer.marginal_risk(s, cap)
        over = np.flatnonzero(risk > s.allowance)
        assert pacer.decide(s).dials == (int(over[0]) if over.size else cap)


def test_sums_equal_the_sums_of_the_per_call_and_per_agent_arrays():
    est = Estimates(answer_rate=0.3)
    rng = np.random.default_rng(5)
    h = np.array([1.0, 5.0, 12.0, 25.0])
    ringing, talk, wrap = rng.uniform(0, 30, 40), rng.exponential(120, 60), rng.uniform(0, 20, 5)
    a = est.answered_within(ringing, h)
    s, sq = est.answered_sums(ringing, h)
    assert s == pytest.approx(a.sum(0)) and sq == pytest.approx((a * a).sum(0))
    tq, wq = est.free_within(talk, wrap, h)
    s, sq = est.free_sums(talk, wrap, h)
    assert s == pytest.approx(tq.sum(0) + wq.sum(0))
    assert sq == pytest.approx((tq * tq).sum(0) + (wq * wq).sum(0))
    s, sq = est.free_sums(np.zeros(0), np.zeros(0), h)
    assert np.all(s == 0) and np.all(sq == 0)


def test_virtual_loop_class_says_it_is_virtual():
    assert VirtualTimeLoop.virtual_time is True


@pytest.mark.parametrize("horizons", [[3.0, 4.0, 8.5, 12.0, 27.0], [2.3, 4.1, 9.0]])
def test_wrap_table_shortcut_gives_the_very_same_numbers(horizons):
    from engine.pacing.estimates import WRAP_BIN

    est = Estimates(answer_rate=0.3)
    rng = np.random.default_rng(2)
    for _ in range(500):
        est.observe_wrap(float(rng.exponential(15.0)))
    h = np.array(horizons)
    we = np.arange(0.0, est.wrap.edges[-1], WRAP_BIN)[:, None] + WRAP_BIN / 2
    direct = 1.0 - est.wrap.survival(we + h[None, :]) / np.maximum(est.wrap.survival(we), 1e-9)
    assert np.array_equal(est._wrap_table(h), direct)  # bit for bit, not approximately


def test_a_run_freezes_start_up_for_the_collector_and_undoes_it_at_the_end():
    """Full collections skip what was alive at start-up and, on a real clock, come rarely; all of it
    is undone when the run ends, and a run inside another's leaves it to the outer one."""
    import gc
    import types

    from engine.dialer import GC_THRESHOLDS, _quiet_gc

    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    undo = _quiet_gc(types.SimpleNamespace(virtual_time=False))
    try:
        assert undo is not None and gc.get_freeze_count() > 0 and gc.get_threshold() == GC_THRESHOLDS
        inner = _quiet_gc(types.SimpleNamespace(virtual_time=False))  # nested: the freeze is the outer run's
        assert inner is not None and gc.get_threshold() == GC_THRESHOLDS
        inner()
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == GC_THRESHOLDS
        assert _quiet_gc(types.SimpleNamespace(virtual_time=True)) is None  # nothing to do
    finally:
        undo()
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
    undo = _quiet_gc(types.SimpleNamespace(virtual_time=True))  # virtual time: the thresholds are vloop's business
    assert gc.get_threshold() == before and gc.get_freeze_count() > 0
    undo()
    assert gc.get_freeze_count() == 0


def test_a_simulated_run_leaves_nothing_frozen(vrun):
    import gc

    from helpers import campaign, human, run_script

    cfg = campaign(retry={"max_attempts": 1})
    vrun(run_script(cfg, {"L1": human()}))
    assert gc.get_freeze_count() == 0


def test_the_memory_stores_queue_gives_the_order_of_one_heap():
    """``_Queue`` keeps in-order entries of each kind in a FIFO and the rest in a heap: whatever the mix
    of kinds, orders and interleaved takes, what comes out is what one heap of the same entries gives."""
    import heapq
    import random

    from engine.store.memory import _Queue

    rng = random.Random(4)
    for _ in range(200):
        queue, heap, seq, taken, expected = _Queue(), [], 0, [], []
        clock = {kind: rng.uniform(0, 50) for kind in ("ready", "lease", "lock", "eligible")}
        for _ in range(rng.randint(1, 300)):
            step = rng.random()
            if step < 0.6:
                kind = rng.choice(["ready", "lease", "lock", "eligible", None])
                if kind is not None and rng.random() < 0.8:
                    clock[kind] += rng.uniform(0, 5)  # mostly in order for its kind, as in the store
                    key = clock[kind]
                else:
                    key = rng.uniform(0, 100)  # out of order, or of no kind
                key = float(int(key)) if rng.random() < 0.2 else key  # ties on the key: seq decides
                seq += 1
                entry = (key, seq, f"L{seq}")
                queue.push(entry, kind)
                heapq.heappush(heap, entry)
            elif step < 0.8:
                upto = rng.uniform(0, 120)
                taken.append(queue.pop(upto))
                expected.append(heapq.heappop(heap) if heap and heap[0][0] <= upto else None)
            else:
                now = rng.uniform(0, 120)
                taken.append(list(queue.due(now)))
                due = []
                while heap and heap[0][0] <= now:
                    due.append(heapq.heappop(heap)[2])
                expected.append(due)
            assert queue.first() == (heap[0] if heap else None)
        assert taken == expected


@pytest.mark.parametrize("bounded", [True, False])
def test_the_dialer_guards_only_the_wrap_ups_a_desk_does_not_bound(monkeypatch, bounded):
    """A desk that bounds its own wrap-ups (``wrap_up_bounded``) gets no second timeout; any other is cut
    off after ``WRAP_UP_GUARD_S`` (the agent then goes on with no disposition)."""
    import engine.dialer as dialer_module
    from simulations.agents import SimDesk

    async def long_wrap_up(self: Any, agent: Any, call: Any) -> str:
        await asyncio.sleep(20.0)
        return "sale"

    monkeypatch.setattr(SimDesk, "wrap_up", long_wrap_up)
    monkeypatch.setattr(SimDesk, "wrap_up_bounded", bounded)
    monkeypatch.setattr(dialer_module, "WRAP_UP_GUARD_S", 10.0)
    cfg = campaign(retry={"max_attempts": 1})
    dialer, summary, store = run_virtual(run_script(cfg, {"L1": human(talk=5)}))
    assert summary["connected"] == 1 and dialer._wrap_up_bounded is bounded
    [row] = run_virtual(store.results(cfg.id))
    assert row["disposition"] == ("sale" if bounded else None)
    assert summary["wrap_s"] == pytest.approx(20.0 if bounded else 10.0)

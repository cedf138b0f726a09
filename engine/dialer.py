"""The dialer: one campaign, every call from lead to result, top to bottom.

The flow of one call (see ``Dialer._call``):

1. lead supply — the pacer's decision is turned into leads claimed from the store;
2. pre-dial gate — the lead's context in one round trip, compliance hooks (fail
   closed), risk alerts; in preview mode the agent sees the lead and says go;
3. reservation — atomic in the store, before anything is dialled;
4. originate — through the PBX backend, whose events drive the call state machine;
5. connect or abandon — a live answer gets an agent within the connect limit,
   or the recorded message;
6. after the call — wrap-up and disposition, result recorded, lead rescheduled,
   after-call hooks.

Steps 2 and 3 are taken for a whole burst at once (``Dialer._dial_burst``): the
pacer hands out several dials per decision, and their contexts are read in one
call to the store and their reservations made in one more (each reservation as
atomic as alone), so a burst costs a constant number of round trips to Redis
rather than two per call, each behind a busy event loop. With a store that
has a round trip (Redis), steps 1 to 3 but the gate are done ahead: a few leads
are claimed, read and reserved before the pacer asks for them, and a decision
dials from them with only the gate left (``engine.hopper``; ``Dialer._fill``).
Preview calls, where the agent reads the lead between the gate and the
reservation, are decided one by one in their own task.

One ``asyncio.TaskGroup`` owns every task: the pacing loop, the agent desk and
one task per call. Stopping is ordered: no new dials, a bounded drain of the
calls in flight, then whatever is left is hung up and recorded as interrupted.

The per-call path is kept cheap (a shift of 100 agents makes tens of thousands
of calls): the backend's events are handed straight to the call's task
(``engine.calls.CallEvents``: no queue, one timer per wait rather than a
timeout context per event), waits end on a timer rather than by cancellation,
the loop-lag watcher is a timer callback (and only on a real clock), and a
call's logger is bound to its ids only when something is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import itertools
import logging
import time
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pluggy
import structlog

from engine.agents import AgentPool
from engine.audit import AuditLog
from engine.calls import UNANSWERED, CallEvents, advance, final_outcome
from engine.claim_order import ClaimOrder
from engine.clock import Clock
from engine.config import CampaignConfig
from engine.desk import AgentDesk
from engine.hopper import Ahead, Hopper, reserves_ahead
from engine.kpi import Counters, summarize
from engine.lanes import Lane, build_lanes
from engine.models import (
    Agent,
    AgentState,
    AnswerKind,
    CallAttempt,
    CallResult,
    CallState,
    Lead,
    Outcome,
    Veto,
    mask_phone,
)
from engine.pacing import AbandonController, Decision, Estimates, Pacer, Snapshot
from engine.pbx.base import (
    Abandoned,
    AgentSession,
    Answered,
    CallEvent,
    Connected,
    Ended,
    OptOut,
    PbxAuthError,
    PbxBackend,
    PbxError,
    PbxEvent,
    PbxFailed,
    Ringing,
)
from engine.plugins import FastHook, Gate, await_maybe, retier
from engine.privacy import screen_pop
from engine.results import ResultWriter
from engine.retry import next_attempt_at
from engine.store.base import AbandonCounts, Caps, Reservation, Store, StoreUnavailable

MAX_CALL_S = 4 * 3600.0  # a connected call with no end event this long is presumed lost
WRAP_UP_GUARD_S = 3600.0  # a desk that does not bound its wrap-ups itself is cut off after this
EVENT_GRACE_S = 30.0  # how late the PBX may be with an outcome before the call is presumed lost
PACE_MIN_GAP_S = 0.1  # pacing decisions are at most this frequent
MAX_LOOP_LAG_S = 0.2  # loop this late: events are queuing up, so dialling holds
LOOP_LAG_EVERY_S = 0.25  # how often the loop's lateness is measured (real time only)


class _Combined:
    """The name a campaign with several lanes reports (e.g. ``predictive+preview``)."""

    def __init__(self, lanes: list[Lane]) -> None:
        self.name = "+".join(lane.pacer.name for lane in lanes)

    def decide(self, snap: Snapshot) -> Decision:
        raise RuntimeError("each lane decides with its own pacer")


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.lru_cache(maxsize=256)
def _local_day(zone: str, wall: float) -> str:
    """The local date (ISO) of POSIX time ``wall`` in ``zone``: the leads of a burst share one ``wall``."""
    return datetime.fromtimestamp(wall, _zone(zone)).date().isoformat()


@functools.lru_cache(maxsize=256)
def _local_hour_at(zone: str, started: datetime) -> int:
    """The local hour of ``started`` in ``zone``: the calls of a burst share one ``started``."""
    return started.astimezone(_zone(zone)).hour


@functools.lru_cache(maxsize=256)
def _wall_started(wall: float) -> datetime:
    """The UTC date of POSIX time ``wall``: one object for the calls of a burst, which share one ``wall``,
    so that what their results derive from it (``_iso_seconds``, ``_local_hour_at``) is made once."""
    return datetime.fromtimestamp(wall, UTC)


@functools.lru_cache(maxsize=256)
def _iso_seconds(started: datetime, offset: timedelta | None) -> str:
    """A dial's date in its result (``iso()``'s format): made once for the calls of a burst. Keyed by its
    UTC offset too: the same instant in another zone is an equal datetime, written otherwise."""
    return started.isoformat(timespec="seconds")


def _span(a: float | None, b: float | None) -> float | None:
    """Seconds from ``a`` to ``b`` in a result (ms rounding), None unless both happened."""
    return round(b - a, 3) if a is not None and b is not None else None


_UNDECIDED = object()  # a call task that makes its own pre-dial decision (preview)
_SKIPPED = Veto("skipped", "the agent skipped the lead in preview")  # released already: nothing more to do
_LEASE_LOST = Veto("lease_lost", "another node dialled the lead after this node's lease lapsed")

# The enum members the flow of a call reads at every step, bound once: in Python 3.11 each read of
# ``CallState.RINGING`` goes through the enum metaclass's ``__getattr__`` hook (about 70 ns), and a call
# made some forty of them.
_ORIGINATING, _RINGING, _ENDED = CallState.ORIGINATING, CallState.RINGING, CallState.ENDED
_ANSWERED_HUMAN, _ANSWERED_MACHINE = CallState.ANSWERED_HUMAN, CallState.ANSWERED_MACHINE
_RINGS = (CallState.ORIGINATING, CallState.RINGING)  # dialled, not answered yet
_ANSWERS = (CallState.ANSWERED_HUMAN, CallState.ANSWERED_MACHINE)  # answered, not connected yet
_HELD = (CallState.ANSWERED_HUMAN, CallState.ANSWERED_MACHINE, CallState.ABANDONED)  # answered, nobody on it
_MACHINE, _WRAP_UP = AnswerKind.MACHINE, AgentState.WRAP_UP
_ABANDONED, _CONNECTED, _MACHINE_OUTCOME = Outcome.ABANDONED, Outcome.CONNECTED, Outcome.MACHINE
_CUSTOMER_HANGUP, _CANCELLED = Outcome.CUSTOMER_HANGUP, Outcome.CANCELLED
_INVALID_NUMBER, _UNKNOWN = Outcome.INVALID_NUMBER, Outcome.UNKNOWN


_RESERVED_AHEAD = Reservation(ok=True)


def _verdict(res: Reservation, wall: float) -> Veto | None:
    """A reservation's result as the call's verdict: None to dial, ``_LEASE_LOST``, or the block."""
    if res.ok:
        return None
    if res.rule == "lease_lost":
        return _LEASE_LOST
    return Veto(res.rule, res.reason, retry_at=None if res.rule == "dnc" else wall + 3600)


GC_THRESHOLDS = (50_000, 20, 100)  # the cyclic collector during a real-time run (Python's: 700, 10, 10)


def _quiet_gc(loop: asyncio.AbstractEventLoop) -> Any:
    """Keep the cyclic garbage collector's full passes rare and short during a run; returns what
    undoes it at the end of the run (None when there is nothing to undo).

    A full collection stops the event loop for as long as it takes to scan every tracked object: with
    thousands of calls in flight that was 150-300 ms every few seconds, the lag p99 of a flood (see
    BENCHMARKS.md, Floods). Two things shorten and space them out:

    * ``gc.freeze()`` once start-up is over: what is alive then (modules, plugins, the store's leads,
      the agents) is left out of every later scan. Reference counting still frees frozen objects; only
      cycles among them wait for ``gc.unfreeze()`` at the end of the run. On a real clock the garbage
      is collected first, once; when something froze already (a run nested in another's, a flood's
      ``--gc-freeze``) the freeze is left to it.
    * On a real clock, the collector's thresholds raised (``GC_THRESHOLDS``): a young pass every 50,000
      allocations instead of 700, so that most of a call's objects are freed by reference counting
      before any pass sees them, and older passes far rarer. The engine makes few reference cycles, so
      memory does not grow for it (measured in the floods). In virtual time ``simulations.vloop`` holds
      the collector off for the whole run.
    """
    real_time = not getattr(loop, "virtual_time", False)
    freeze = not gc.get_freeze_count()
    if not (freeze or real_time):
        return None
    before = gc.get_threshold()
    if real_time:
        if freeze:
            gc.collect()
        gc.set_threshold(*GC_THRESHOLDS)
    if freeze:
        gc.freeze()

    def undo() -> None:
        if freeze:
            gc.unfreeze()
        gc.set_threshold(*before)

    return undo


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _enabled(log: Any, level: int) -> bool:
    """Whether ``log`` emits at ``level`` (structlog's filtering loggers know; others are asked to emit)."""
    is_enabled_for = getattr(log, "is_enabled_for", None)
    return True if is_enabled_for is None else bool(is_enabled_for(level))


class _CallLog:
    """A call's logger, bound to the call and lead ids on first use: most calls log nothing, and
    binding costs a context copy and a logger."""

    __slots__ = ("_base", "_bound", "_call_id", "_lead_id")

    def __init__(self, base: Any, call_id: str, lead_id: str) -> None:
        self._base, self._call_id, self._lead_id = base, call_id, lead_id
        self._bound: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._bound is None:
            self._bound = self._base.bind(call_id=self._call_id, lead_id=self._lead_id)
        return getattr(self._bound, name)


class Dialer:
    """Runs one campaign against one PBX backend and one store."""

    def __init__(self, cfg: CampaignConfig, *, store: Store, pbx: PbxBackend, desk: AgentDesk,
                 agents: list[Agent], plugins: pluggy.PluginManager, clock: Clock,
                 pacer: Pacer | None = None, results: ResultWriter | None = None, node_id: str = "node-1",
                 drain_timeout: float | None = None, audit: AuditLog | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.pbx = pbx
        self.desk = desk
        self._wrap_up_bounded = getattr(desk, "wrap_up_bounded", False) is True  # see AgentDesk.wrap_up
        self.clock = clock
        self.plugins = plugins
        self.results = results
        self.audit = audit
        self.node_id = node_id
        self.lanes, groups = build_lanes(cfg, agents, pacer)
        self.pacer = self.lanes[0].pacer if len(self.lanes) == 1 else _Combined(self.lanes)
        self.log = structlog.get_logger("engine.dialer").bind(campaign=cfg.id, node=node_id)
        self._log_debug = _enabled(self.log, logging.DEBUG)
        self.gate = Gate(plugins, cfg)
        self._after_call = FastHook(plugins, "dialer_after_call")
        self._next_attempt = FastHook(plugins, "dialer_next_attempt")
        self._claim_order = ClaimOrder(plugins, cfg, store, self.log)  # zone bonuses, asked once a minute
        p = cfg.pacing
        self.caps = Caps(per_day=cfg.caps.per_day, per_24h=cfg.caps.per_24h, lifetime=cfg.caps.lifetime,
                         lock_s=p.ring_timeout + MAX_CALL_S)
        self.estimates = Estimates(answer_rate=p.initial_answer_rate, ring_timeout=p.ring_timeout)
        self.controller = AbandonController(cfg.abandon.target / 100.0, cfg.abandon.windows,
                                            cap_guard_live=cfg.abandon.cap_guard_live if cfg.abandon.cap_guard
                                            else None, guard_room=cfg.abandon.cap_guard_room,
                                            gain=cfg.abandon.gain, gain_min=cfg.abandon.gain_min,
                                            gain_live=cfg.abandon.gain_live, safety_z=cfg.abandon.margin_z,
                                            prior_live=cfg.abandon.margin_prior_live)
        self.counters = Counters()
        self.drain_timeout = drain_timeout if drain_timeout is not None else p.drain_timeout
        self._loop = asyncio.get_running_loop()
        self.pool = AgentPool(agents, self._loop.time, on_ready=self.nudge, groups=groups)
        self._lane_of: dict[str, Lane] = {}  # call id -> its lane
        self.calls: dict[str, CallAttempt] = {}
        self._events: dict[str, CallEvents] = {}
        self._unanswered: dict[str, dict[str, float]] = {lane.name: {} for lane in self.lanes}  # started at
        self._waiting_agent: dict[str, int] = {lane.name: 0 for lane in self.lanes}  # answers waiting
        self._tasks: set[asyncio.Task[None]] = set()
        self._recorded: set[str] = set()  # calls whose result is being or has been recorded
        self._agent_waits: dict[str, asyncio.Future[Agent | None]] = {}
        self._gave_up: set[str] = set()  # hung up while waiting for an agent
        self._cancelled: set[str] = set()  # preview calls their agent called off while ringing
        self._tg: asyncio.TaskGroup | None = None
        self._burst_done: asyncio.Future[None] | None = None  # set while a burst of dials is being decided
        self._ids = itertools.count(1)
        self._call_id_prefix = f"{self.cfg.id}-{self.node_id}-"  # call ids: campaign-node-n
        self._stop = asyncio.Event()
        self._woken = False  # nudged since the last pacing decision
        self._wake_waiter: asyncio.Future[None] | None = None  # the pacing loop, waiting for a nudge
        self._pause_timer: asyncio.TimerHandle | None = None  # the pacing loop's pause (``_pause``)
        self._lag_timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._stopping = False
        self.failure: str | None = None  # why the run stopped itself (e.g. the PBX refused our login)
        self.pbx_down = False  # no PBX server logged in: nothing is dialled until one is
        self._window_counts: list[AbandonCounts] = [AbandonCounts(0, 0) for _ in cfg.abandon.windows]
        self._counts_at = -1e18
        self._amd_fp_sum = 0.0  # estimated AMD false positives not yet counted as a whole call
        self._since_refresh = [0, 0]  # live, abandoned since the store counts were read
        self._since_observe = [0, 0]
        self._exhausted_check_at = -1e18
        self._exhausted_wait = 0.0  # loop seconds before the next check (``_check_exhausted``)
        self._exhausted_due: float | None = None  # wall time the store said a lead comes due
        self.started_at = 0.0
        self.store_down = False
        self.decision_times: deque[float] = deque(maxlen=100_000)  # per dial: the pacer's decision to its verdict
        # lane -> its reserved leads (engine/hopper.py); empty without reservations ahead
        self._hoppers: dict[str, Hopper] = {lane.name: Hopper(p.reserve_ahead_max_age) for lane in self.lanes
                                            } if reserves_ahead(p.reserve_ahead, store) else {}
        self._fills: set[asyncio.Task[None]] = set()  # the hoppers' refills under way
        self.loop_lag = 0.0  # how late the event loop runs its timers (backpressure signal)
        self.summary: dict[str, Any] = {}

    # -- control ------------------------------------------------------------------------

    def nudge(self) -> None:
        """Something changed that may allow new dials (an agent freed, a call ended)."""
        self._woken = True
        waiter = self._wake_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stop(self) -> None:
        """Stop dialling and drain: idempotent, safe from a signal handler."""
        self._stop.set()

    def _fail(self, reason: str) -> None:
        """Something no later dial can get past (the PBX refuses our login): stop the run, which then
        reports ``failed`` rather than burning through the leads as failed attempts."""
        if self.failure is None:
            self.failure = reason
            self.log.error("run stopped", reason=reason)
        self.stop()

    async def run(self, until: float | None = None) -> dict[str, Any]:
        """Run the campaign until its leads are exhausted, ``until`` loop seconds pass, or ``stop()``."""
        self.started_at = self._loop.time()
        try:
            async with asyncio.timeout(30.0):
                await self.store.warm_up()
        except (StoreUnavailable, TimeoutError) as exc:  # the dials will find it, or pause until they do
            self.log.warning("store not ready at start", error=str(exc))
        await self.pbx.start(self._on_event)
        for agent_id in self.pool.agents:
            await self.pbx.agent_login(agent_id)
        for r in self.plugins.hook.dialer_campaign_start(campaign=self.cfg, store=self.store):
            await await_maybe(r)
        timer = self._loop.call_later(until, self.stop) if until is not None else None
        self.log.info("campaign started", mode=self.pacer.name, agents=len(self.pool.agents))
        gc_undo = _quiet_gc(self._loop)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                pacing = tg.create_task(self._pace_loop(), name="pacing")
                self._watch_loop_lag()
                desk = tg.create_task(self.desk.run(self.pool), name="agent-desk")
                await self._stop.wait()
                # 1. no new dials (a burst being decided ends first: cut half-way, its reservations
                # would be made and never dialled)
                self._stopping = True
                if self._burst_done is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.drain_timeout):
                            await asyncio.shield(self._burst_done)
                pacing.cancel()
                if self._hoppers:  # reserved ahead and not dialled: given back
                    await self._empty_hoppers(pacing)
                self.summary = self._summarize()  # the shift's figures, before the drain
                # 2. bounded drain of the calls in flight
                if self._tasks:
                    self._idle.clear()
                    try:
                        async with asyncio.timeout(self.drain_timeout):
                            await self._idle.wait()
                    except TimeoutError:
                        # 3. hang up and record what is left as interrupted
                        self.log.warning("drain timed out; interrupting calls", calls=len(self._tasks))
                        for task in list(self._tasks):
                            task.cancel()
                desk.cancel()
        finally:
            if gc_undo is not None:
                gc_undo()
            if timer is not None:
                timer.cancel()
            if self._lag_timer is not None:
                self._lag_timer.cancel()
            if self.results is not None:
                self.results.close()
            await self.pbx.close()
        self.summary = {**self.summary, "after_drain": self._summarize()}
        if self.failure is not None:
            self.summary["failed"] = self.failure
        for r in self.plugins.hook.dialer_campaign_end(campaign=self.cfg, summary=self.summary):
            await await_maybe(r)
        self.log.info("campaign stopped", dials=self.counters.dials, abandoned=self.counters.abandoned)
        return self.summary

    # -- 1. lead supply and pacing --------------------------------------------------------

    async def _pace_loop(self) -> None:
        """Decide at every change (an agent freed, a call ended) and at least every ``interval``;
        changes closer together than ``PACE_MIN_GAP_S`` are decided on together, so a burst of
        call ends costs one snapshot, not one per call."""
        interval = self.cfg.pacing.interval
        gap = min(PACE_MIN_GAP_S, interval)
        while not self._stopping:  # also ends a loop whose cancel a store timeout swallowed (3.11)
            self._woken = False
            await self._pace_once()
            await self._pause(gap, interval - gap)

    async def _pause(self, gap: float, longest: float) -> None:
        """``gap`` seconds; then, unless nudged meanwhile, until ``nudge()`` or ``longest`` seconds more.

        One future, no exception: the end of the gap is a timer callback (``_gap_over``) that either
        wakes the loop (nudged during the gap) or hands the future to ``nudge()`` and sets the longer
        timer, so the loop's task wakes once per pause rather than at the gap and again after it
        (tens of thousands of pauses a shift)."""
        waiter = self._loop.create_future()
        self._pause_timer = self._loop.call_later(gap, self._gap_over, waiter, longest)
        try:
            await waiter
        finally:
            if self._pause_timer is not None:
                self._pause_timer.cancel()
            self._wake_waiter = None

    def _gap_over(self, waiter: asyncio.Future[None], longest: float) -> None:
        if self._woken:
            _time_up(waiter)
        else:
            self._wake_waiter = waiter
            self._pause_timer = self._loop.call_later(longest, _time_up, waiter)

    def snapshot(self, lane: Lane | None = None) -> Snapshot:
        """What one lane's pacer decides on (the only lane when the campaign has one)."""
        lane = lane or self.lanes[0]
        now = self._loop.time()
        p, g = self.cfg.pacing, lane.name
        ready, on_call, wrap_up, previewing, paused = self.pool.pacing_view(g, now)
        return Snapshot(
            now=now,
            ready=ready,
            on_call=on_call,
            wrap_up=wrap_up,
            previewing=previewing,
            paused=paused,
            ringing=tuple([now - t for t in self._unanswered[g].values()]),
            waiting=self._waiting_agent[g],
            estimates=self.estimates,
            allowance=self.controller.allowance,
            connect_limit=p.connect_limit,
            ring_timeout=p.ring_timeout,
            max_dial_ratio=p.max_dial_ratio,
            live=self.counters.live,
            abandoned=self.counters.abandoned,
        )

    def _watch_loop_lag(self, due: float | None = None) -> None:
        """Measure how late timers fire: when events arrive faster than they are handled, the loop
        falls behind, and dialling must wait rather than call state (backpressure). A timer callback
        every ``LOOP_LAG_EVERY_S``, re-armed each time and cancelled when the run ends. Not started on
        a virtual clock (``simulations.vloop``), which jumps to each timer and so is never late."""
        loop = self._loop
        if due is None:
            if getattr(loop, "virtual_time", False):
                return
        else:
            late = loop.time() - due
            self.loop_lag = late if late > self.loop_lag else 0.8 * self.loop_lag + 0.2 * late
        due = loop.time() + LOOP_LAG_EVERY_S
        self._lag_timer = loop.call_at(due, self._watch_loop_lag, due)

    async def _pace_once(self) -> None:
        """One pacing decision; while the store is unreachable nothing is dialled (fail closed)."""
        try:
            await self._decide_and_dial()
        except StoreUnavailable as exc:
            self._store_lost(exc)
            return
        if self.store_down:
            self.log.warning("store reachable again: dialling resumed")
            self.store_down = False
        if self._hoppers:
            self._keep_hoppers()

    def _store_lost(self, exc: StoreUnavailable) -> None:
        """Dialling pauses until the store answers again (the next rounds probe it before deciding)."""
        if not self.store_down:
            self.log.error("store unavailable: dialling paused, calls in flight still tracked", error=str(exc))
        self.store_down = True

    async def _decide_and_dial(self) -> None:
        if self.store_down:
            await self.store.lead_counts(self.cfg.id)  # probe before deciding anything
        await self._observe_abandons()
        if self._stopping:
            return
        if not getattr(self.pbx, "connected", True):
            # No PBX server to place a call on (reconnecting): a dial now could only fail and spend an
            # attempt of the lead's; wait for the link, as for the store.
            if not self.pbx_down:
                self.log.warning("PBX not connected: dialling paused, calls in flight still tracked")
                self.pbx_down = True
            return
        if self.pbx_down:
            self.log.info("PBX connected again: dialling resumed")
            self.pbx_down = False
        # Behind on events -- the loop itself, or the PBX's events arriving late (a backlog in the
        # socket buffers does not show as loop lag): no new calls until call state has caught up.
        if max(self.loop_lag, getattr(self.pbx, "ingest_lag", 0.0)) > MAX_LOOP_LAG_S:
            self.counters.held += 1
            return
        short = False
        for lane in self.lanes:
            if self._stopping:
                break
            decision = lane.pacer.decide(self.snapshot(lane))
            decided = time.perf_counter()
            wanted = decision.dials + decision.previews
            if self._hoppers:  # dials reserved ahead first: only the gate is left for them
                hopper = self._hoppers[lane.name]
                now = self._loop.time()
                hopper.asked(decision.dials, now)
                ahead = hopper.take(decision.dials, now) if decision.dials else []
                if ahead:
                    await self._dial_burst([self._track(a.call, lane) for a in ahead], decided, ahead)
                    wanted -= len(ahead)
            if wanted <= 0:
                continue
            wall = self.clock.now()
            leads = await self._claim(lane, wanted, wall)
            if leads:  # leads came: the next short claim checks for the end at once
                self._exhausted_wait, self._exhausted_due = 0.0, None
            burst: list[CallAttempt] = []
            for i, lead in enumerate(leads):
                if i < decision.previews:  # the agent reads first: decided call by call (``_decide_alone``)
                    agent = self.pool.start_preview(lane.name, lead.preferred_agent)
                    if agent is None:
                        await self._release(lead, wall, wall, self.log)
                        continue
                    self._spawn(self._new_call(lead, lane), agent)
                else:
                    burst.append(self._new_call(lead, lane))
            if burst:
                await self._dial_burst(burst, decided)
            short = short or len(leads) < wanted
        if short and not self._tasks and not any(h.busy for h in self._hoppers.values()):
            await self._check_exhausted()

    async def _claim(self, lane: Lane, n: int, wall: float) -> list[Lead]:
        """Up to ``n`` of the lane's leads, leased to this node, best first."""
        by_tier = {} if lane.tiers is None else {"tiers": lane.tiers}
        zone_bonus = await self._claim_order.bonus(wall)  # best time to call: within a tier, by zone
        order = {} if zone_bonus is None else {"zone_bonus": zone_bonus}
        return await self.store.claim_leads(self.cfg.id, n, now=wall, node_id=self.node_id,
                                            lease_s=self.cfg.pacing.lease, **by_tier, **order)

    # -- dials reserved ahead (engine/hopper.py) -------------------------------------------

    def _keep_hoppers(self) -> None:
        """After each pacing round: a refill for every lane whose hopper is short of what the last
        decisions asked for, or holds entries too old to dial. One refill at a time per lane, owned by
        the task group; none while dialling is paused (but for giving entries back)."""
        assert self._tg is not None
        now = self._loop.time()
        for lane in self.lanes:
            hopper = self._hoppers[lane.name]
            if hopper.filling:
                continue
            hopper.age(now)
            if hopper.held_back or (hopper.shortfall() and self._may_reserve()):
                hopper.filling = True
                task = self._tg.create_task(self._fill(lane, hopper), name=f"hopper-fill-{lane.name}")
                self._fills.add(task)
                task.add_done_callback(self._fills.discard)

    def _may_reserve(self) -> bool:
        """Whether a refill may claim: not while dialling is paused, for whatever reason."""
        return not (self._stopping or self.store_down or self.pbx_down
                    or max(self.loop_lag, getattr(self.pbx, "ingest_lag", 0.0)) > MAX_LOOP_LAG_S)

    async def _fill(self, lane: Lane, hopper: Hopper) -> None:
        """Give back the hopper's aged entries, then top it up: the claim, then every lead's context and
        reservation in one round trip, as a burst does, with no dial waiting for them. A reservation the
        store refused is judged as in a burst: the gate's refusal if it has one, else the store's
        (recorded as blocked, or the lead left to the node that took it). If the store fails half-way,
        the leads are left to their leases, and a reservation it may have made is held, then recorded
        as lost, never dialled."""
        try:
            await self._give_back(hopper)
            n = hopper.shortfall()
            if n <= 0 or not self._may_reserve():
                return
            wall = self.clock.now()
            leads = await self._claim(lane, n, wall)
            if not leads:
                return
            calls = [self._attempt(lead) for lead in leads]
            day_keys = [self._day_key(lead, wall) for lead in leads]
            ctxs, reservations = await self.store.read_and_reserve(calls, now=wall, day_keys=day_keys,
                                                                   caps=self.caps, node_id=self.node_id)
            at = self._loop.time()
            for call, ctx, res, day_key in zip(calls, ctxs, reservations, day_keys, strict=True):
                if res.ok:
                    hopper.ready.append(Ahead(call, ctx, day_key, at))
                else:  # as in a burst, the gate's refusal (its rule, its retry time) before the store's
                    veto = await self.gate.check(ctx)
                    self._spawn(self._track(call, lane), None, _verdict(res, wall) if veto is None else veto)
        except StoreUnavailable as exc:
            # The leads are left to their leases; nothing is dialled from the hopper, nor reserved,
            # until the store answers again.
            self._store_lost(exc)
        except Exception:
            self.counters.errors += 1
            self.log.exception("reserving dials ahead failed; its leads are left to their leases")
        finally:
            hopper.filling = False

    async def _give_back(self, hopper: Hopper) -> None:
        """The entries the hopper put aside (aged, or the run is stopping): reservations undone -- the
        number unlocked and uncounted, the lead's count and lease restored -- and the leads released
        for an immediate new claim. Kept to be tried again if the store is down."""
        back = hopper.to_give_back()
        if not back:
            return
        wall = self.clock.now()
        try:
            await self.store.undo_reservations([a.call for a in back], now=wall,
                                               day_keys=[a.day_key for a in back])
        except BaseException:
            hopper.keep_back(back)
            raise
        for a in back:
            await self._release(a.call.lead, wall, wall, self.log)

    async def _empty_hoppers(self, pacing: asyncio.Task[None]) -> None:
        """At the stop, within the drain timeout: the pacing loop and the refills under way end (their
        reservations land in the hoppers), then every entry is given back. What cannot be (the store
        down) is left to its number lock and recorded as a lost attempt, never dialled."""
        try:
            async with asyncio.timeout(self.drain_timeout):
                await asyncio.wait([pacing, *self._fills])
                for hopper in self._hoppers.values():
                    hopper.drain()
                    await self._give_back(hopper)
        except (StoreUnavailable, TimeoutError) as exc:
            held = sum(h.held_back for h in self._hoppers.values())
            self.log.warning("leads reserved ahead not given back; recorded as lost when their locks lapse",
                             leads=held, error=str(exc) or type(exc).__name__)

    async def _check_exhausted(self) -> None:
        """Stop when the campaign has no lead left, prompt on every node of a shared campaign without
        a store read per pacing round. Called when a claim comes back short with nothing in flight: the
        first time since leads last came, it asks at once; while the answer stays "leads remain" (a retry
        not yet due, a lead another node holds) it asks again after 1 s, 2 s, 4 s ... at most 30 s apart,
        and at once when the time the store gave (the earliest lead's due time) has passed and the claim
        was still short (another node took that lead: it may have been the last). A claim that brings
        leads starts over."""
        now = self._loop.time()
        due = self._exhausted_due is not None and self.clock.now() >= self._exhausted_due
        if now - self._exhausted_check_at < self._exhausted_wait and not due:
            return
        self._exhausted_check_at = now
        self._exhausted_wait = min(max(2 * self._exhausted_wait, 1.0), 30.0)
        due_at = await self.store.next_eligible_at(self.cfg.id)
        if due_at is None:
            self.log.info("no lead left to dial")
            self.stop()
        # only a time still ahead: a lead due already that this node cannot claim (another lane's tier)
        # must not turn every round into a read
        self._exhausted_due = due_at if due_at is not None and due_at > self.clock.now() else None

    async def _observe_abandons(self) -> None:
        """Keep the controller fed: campaign-wide window counts from the store, local counts in between."""
        now = self._loop.time()
        if now - self._counts_at >= 30.0:
            wall = self.clock.now()
            self._window_counts = [
                await self.store.abandon_counts(self.cfg.id, since=wall - w, now=wall)
                for w in self.cfg.abandon.windows
            ]
            self._counts_at = now
            self._since_refresh = [0, 0]
        elif self._since_observe == [0, 0]:
            # Nothing counted since the controller last looked, and the same window counts: it would
            # work out what it holds already (most pacing rounds see no call end).
            return
        live, abandoned = self._since_refresh
        counts = [AbandonCounts(c.abandoned + abandoned, c.live + live) for c in self._window_counts]
        self.controller.observe(self._since_observe[0], self._since_observe[1], counts)
        self._since_observe = [0, 0]

    def _new_call(self, lead: Lead, lane: Lane) -> CallAttempt:
        """The attempt for a claimed lead, counted as in flight (``_unanswered``) from now on."""
        return self._track(self._attempt(lead), lane)

    def _attempt(self, lead: Lead) -> CallAttempt:
        """A claimed lead's attempt, not yet in flight (``_track``)."""
        return CallAttempt(call_id=f"{self._call_id_prefix}{next(self._ids)}", lead=lead,
                           campaign_id=self.cfg.id, attempt_no=lead.attempts + 1, created_at=0.0)

    def _track(self, call: CallAttempt, lane: Lane) -> CallAttempt:
        """From now on ``call`` is in flight (``_unanswered``): the pacer counts it. An attempt reserved
        ahead is not, until a decision takes it; its age starts then."""
        call.created_at = self._loop.time()
        self._lane_of[call.call_id] = lane
        self._unanswered[lane.name][call.call_id] = call.created_at
        return call

    def _spawn(self, call: CallAttempt, agent: Agent | None, decided: Any = _UNDECIDED) -> None:
        """The call's own task, from its decision (``decided``: the burst's verdict) or from the start."""
        assert self._tg is not None
        self._tasks.add(self._tg.create_task(self._call(call, agent, decided), name=call.call_id))

    def _forget(self, call: CallAttempt) -> None:
        """A call that never got its task (its burst failed): no longer in flight."""
        self._unanswered[self._lane_of.pop(call.call_id).name].pop(call.call_id, None)

    async def _dial_burst(self, calls: list[CallAttempt], decided: float, ahead: list[Ahead] | None = None) -> None:
        """Steps 2 and 3 for a burst of claimed leads at once, then a task per call from its verdict.

        The store is asked once for the whole burst, not twice per call: every lead's context and
        every reservation in one round trip (``Store.read_and_reserve``: each context read before the
        reservations, each reservation as atomic as alone), then the gate on each context. A call is
        dialled only when both the gate and its reservation said yes; the reservations of the calls the
        gate refused are given back (``Store.undo_reservations``) before those calls are recorded as
        blocked. Reserving first halves the waits for the store, which are most of a decision under
        load (BENCHMARKS.md, Floods); a call task awaiting its own context and reservation behind a busy
        event loop cost a wait per round trip per call. Each call's decision time runs from the pacer's
        decision (``decided``, a ``perf_counter``) to the burst's verdicts.

        ``ahead``: the calls' entries from the lane's hopper, reserved already (engine/hopper.py): no
        store call, the gate on each context as it was read at the reservation, with today's clock.

        Fail closed: if the store fails before the verdicts nothing of the burst is dialled
        (``StoreUnavailable`` goes up to the pacing loop, which pauses dialling); the leads are left to
        their leases, and a reservation the store may have made is held, then recorded as lost, never
        dialled twice. If only the undo fails, the burst's dials are already on their way and the
        refused calls' reservations are held and recorded as lost in the same way: a count too many
        (which can only block a later dial), never a call the gate refused. The
        run's stop waits for a burst in progress (``_burst_done``) rather than cancel it half-way.
        """
        done = self._burst_done = self._loop.create_future()
        spawned: set[int] = set()
        try:
            wall = self.clock.now()
            if ahead is None:
                day_keys = [self._day_key(call.lead, wall) for call in calls]
                ctxs, reservations = await self.store.read_and_reserve(calls, now=wall, day_keys=day_keys,
                                                                       caps=self.caps, node_id=self.node_id)
            else:
                day_keys = [a.day_key for a in ahead]
                ctxs = [replace(a.ctx, now=wall) for a in ahead]
                reservations = [_RESERVED_AHEAD] * len(ahead)
            verdicts: list[Any] = []
            given_back: list[int] = []  # reserved, then refused by the gate: never dialled
            for i, (call, ctx, res) in enumerate(zip(calls, ctxs, reservations, strict=True)):
                veto = await self.gate.check(ctx)
                call.lead_history = ctx.history
                if veto is None:
                    call.alerts = await self.gate.alerts(ctx)
                    if self._stopping:
                        veto = Veto("shutdown", "campaign stopping before the dial", retry_at=wall)
                if veto is not None and res.ok:
                    given_back.append(i)
                verdicts.append(_verdict(res, wall) if veto is None else veto)
            took = time.perf_counter() - decided
            # every verdict but "the campaign is stopping", which is not a decision about the call
            self.decision_times.extend(took for v in verdicts if v is None or v.rule != "shutdown")
            for i, verdict in enumerate(verdicts):  # the dials first: nothing of theirs waits for the undo
                if verdict is None:
                    self._spawn(calls[i], None, verdict)
                    spawned.add(i)
            if given_back:
                await self.store.undo_reservations([calls[i] for i in given_back], now=wall,
                                                   day_keys=[day_keys[i] for i in given_back])
            for i, verdict in enumerate(verdicts):
                if verdict is not None:
                    self._spawn(calls[i], None, verdict)
                    spawned.add(i)
        except StoreUnavailable:
            raise  # the pacing loop pauses dialling
        except Exception:
            self.counters.errors += 1
            self.log.exception("deciding a burst of dials failed; its leads are left to their leases",
                               dials=len(calls))
        finally:
            for i, call in enumerate(calls):
                if i not in spawned:
                    self._forget(call)
            done.set_result(None)
            self._burst_done = None

    def _call_done(self) -> None:
        """The running call task is over: no longer counted in flight (the drain waits for none left).
        Called at the end of ``_call`` itself, not as a done callback: a callback is one more loop
        callback per call, and the task group has one already. (A task cancelled before it ever ran
        stays in ``_tasks``; only the drain's time-out cancels call tasks, and nothing counts them after.)"""
        self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
        if not self._tasks:
            self._idle.set()

    # -- the flow of one call ------------------------------------------------------------

    async def _call(self, call: CallAttempt, agent: Agent | None, decided: Any = _UNDECIDED) -> None:
        """One call from its pre-dial gate (or the burst's verdict, ``decided``) to its recorded result."""
        log = _CallLog(self.log, call.call_id, call.lead.lead_id)
        try:
            # 2. pre-dial gate and 3. reservation: done for the whole burst (``_dial_burst``), or here
            wall = self.clock.now()
            veto = await self._decide_alone(call, agent, wall) if decided is _UNDECIDED else decided
            if veto is _SKIPPED:
                return
            if veto is _LEASE_LOST:
                # Our lease lapsed and another node dialled the lead meanwhile: it is theirs now.
                # Not a compliance block, and nothing to give back.
                log.info("lead taken over by another node; not dialled")
                if agent is not None:
                    self.pool.end_preview(agent)
                return
            if veto is not None:
                await self._blocked(call, veto, agent, log)
                return
            # 4. originate
            events = CallEvents(self._loop)
            self._events[call.call_id] = events
            self.calls[call.call_id] = call
            call.wall_started = _wall_started(wall)
            call.dialed_at = self._loop.time()
            advance(call, _ORIGINATING, call.dialed_at)
            self.counters.dials += 1
            self.estimates.dialled(call.call_id)
            try:
                await self.pbx.originate(call, ring_timeout=self.cfg.pacing.ring_timeout,
                                         caller_id=self.cfg.campaign.caller_id)
            except PbxAuthError as exc:
                # Logged out mid-run (a secret rotated on the PBX only): every later originate would
                # fail the same way. The PBX took nothing: this attempt ends failed, and the run stops.
                self._fail(f"the PBX refused our login: {exc}")
                events.put(Ended(call.call_id, 0, "failed"))
            except PbxError as exc:
                log.warning("originate failed", error=str(exc))
                events.put(Ended(call.call_id, 0, "failed"))
            else:
                if call.call_id in self._cancelled:  # called off while the dial was being placed
                    await self._pbx_quietly(self.pbx.hangup(call.call_id), log, "hangup")
            # 5. connect or abandon, until the customer leg ends
            agent = await self._follow(call, events, agent, log)
            # 6. after the call
            if agent is not None:
                await self._wrap_up(agent, call)
            await self._record(call, log)
        except StoreUnavailable as exc:
            # Only possible before the reservation (later writes retry until stored): nothing was
            # dialled, and the lead's lease lapses by itself so another attempt picks it up.
            log.warning("store unavailable before the dial; lead left to its lease", error=str(exc))
            if agent is not None and agent.state == AgentState.PREVIEWING:
                self.pool.end_preview(agent)
        except asyncio.CancelledError:
            if call.call_id not in self._recorded:
                await self._interrupted(call, agent, log)
            raise
        except Exception:
            self.counters.errors += 1
            log.exception("call handling failed")
            if call.call_id not in self._recorded:
                await self._interrupted(call, agent, log, outcome=Outcome.UNKNOWN)
        finally:
            self.estimates.forget(call.call_id)
            self._unanswered[self._lane_of.pop(call.call_id).name].pop(call.call_id, None)
            self._events.pop(call.call_id, None)
            self.calls.pop(call.call_id, None)
            self._recorded.discard(call.call_id)
            self._gave_up.discard(call.call_id)
            self._cancelled.discard(call.call_id)
            self._call_done()
            self.nudge()

    async def _decide_alone(self, call: CallAttempt, agent: Agent | None, wall: float) -> Any:
        """Steps 2 and 3 for one call (preview: the agent reads the lead between the gate and the
        reservation, so a preview call cannot wait for a burst). The verdict: None (reserved), a
        ``Veto``, ``_LEASE_LOST`` or ``_SKIPPED`` (the agent passed)."""
        started = time.perf_counter()
        day_key = self._day_key(call.lead, wall)
        ctx = (await self.store.dial_contexts([call.lead], now=wall, day_keys=[day_key]))[0]
        veto = await self.gate.check(ctx)
        call.lead_history = ctx.history
        if veto is None:
            call.alerts = await self.gate.alerts(ctx)
            if agent is not None:
                gated = time.perf_counter()
                if not await self._preview(agent, call):
                    return _SKIPPED
                started += time.perf_counter() - gated  # the agent's reading time is not ours
        if veto is None and self._stopping:
            veto = Veto("shutdown", "campaign stopping before the dial", retry_at=wall)
        if veto is None:
            res = (await self.store.reserve_attempts([call], now=wall, day_keys=[day_key], caps=self.caps,
                                                     node_id=self.node_id))[0]
            veto = _verdict(res, wall)
        self.decision_times.append(time.perf_counter() - started)
        return veto

    async def _preview(self, agent: Agent, call: CallAttempt) -> bool:
        """Preview mode: the agent sees the lead and decides; False when they skip it."""
        try:
            async with asyncio.timeout(self.cfg.pacing.preview_timeout):
                go = await self.desk.preview(agent, call)
        except TimeoutError:
            go = False
        if not go:
            self.counters.skipped += 1
            self.pool.end_preview(agent)
            wall = self.clock.now()
            await self._release(call.lead, wall, wall + self.cfg.retry.skipped, self.log)
        return go

    async def cancel_unanswered(self, call: CallAttempt) -> bool:
        """The agent who accepted a preview calls it off while it still rings: hung up on the PBX, the
        attempt recorded as ``cancelled`` (retried by ``[retry] cancelled``) and the agent handed back as
        for any unanswered preview call. False when it was answered (or ended) first: a person on the
        line is never hung up on this way."""
        if call.state not in UNANSWERED or call.outcome is not None or call.call_id not in self._lane_of:
            return False  # answered, over, or its task is done (e.g. blocked at the reservation)
        self._cancelled.add(call.call_id)
        self.log.info("preview call cancelled by the agent", call_id=call.call_id)
        if call.state != CallState.RESERVED:  # not dialled yet: hung up once the originate returns (``_call``)
            await self._pbx_quietly(self.pbx.hangup(call.call_id), self.log, "hangup")
        return call.state in UNANSWERED or call.outcome == Outcome.CANCELLED

    async def _blocked(self, call: CallAttempt, veto: Veto, agent: Agent | None, log: Any) -> None:
        wall = self.clock.now()
        if veto.rule != "shutdown":
            self.counters.blocked += 1
            log.info("dial blocked", rule=veto.rule, reason=veto.reason)
            await self._until_stored(lambda: self.store.record_block(self.cfg.id, call.lead, veto, now=wall), log)
        await self._until_stored(lambda: self.store.release_lead(call.lead, now=wall, next_eligible=veto.retry_at),
                                 log)
        if agent is not None:
            self.pool.end_preview(agent)

    async def _follow(self, call: CallAttempt, events: CallEvents, agent: Agent | None,
                      log: Any) -> Agent | None:
        """Drive the call state machine from PBX events; returns the agent who talked, if any."""
        while call.state is not _ENDED:
            ev = await events.next(self._event_limit(call))
            if ev is None:
                ev = await self._presumed_lost(call, log)
            now = self._loop.time()
            if isinstance(ev, Ringing):
                if call.state is _ORIGINATING:
                    advance(call, _RINGING, now)
            elif isinstance(ev, Answered):
                if call.state not in _RINGS:
                    continue  # a duplicate answer (e.g. AMD after the answer) changes nothing
                self._unanswered[self._lane_of[call.call_id].name].pop(call.call_id, None)
                call.answer_kind = ev.kind
                self.counters.answered += 1
                machine = ev.kind == _MACHINE
                drop = machine and self.cfg.amd.enabled and self.cfg.amd.machine_action == "hangup"
                self.estimates.observe_answer(not drop, now - (call.dialed_at or now), call.call_id)
                if drop:
                    advance(call, _ANSWERED_MACHINE, now)
                    await self._pbx_quietly(self.pbx.hangup(call.call_id), log, "hangup")
                    continue
                advance(call, _ANSWERED_MACHINE if machine else _ANSWERED_HUMAN, now)
                if agent is not None:
                    self.pool.to_call(agent)  # preview: the agent who dialled takes it
                else:
                    agent = await self._agent_within_limit(call)
                if agent is None and call.call_id in self._gave_up:
                    continue  # hung up while waiting: the end event is already queued
                if agent is None and machine:
                    await self._pbx_quietly(self.pbx.hangup(call.call_id), log, "hangup")
                elif agent is None:
                    advance(call, CallState.ABANDONED, self._loop.time())
                    await self._pbx_quietly(self.pbx.abandon(call.call_id), log, "abandon")
                else:
                    call.agent_id = agent.agent_id
                    agent.call_id = call.call_id
                    if self.audit is not None:
                        self.desk.show(agent, screen_pop(call.lead, agent_id=agent.agent_id,
                                                         history=call.lead_history, alerts=call.alerts,
                                                         audit=self.audit))
                    await self._pbx_quietly(self.pbx.connect(call.call_id, agent.agent_id), log, "connect")
            elif isinstance(ev, Connected):
                if call.state in _ANSWERS:
                    advance(call, CallState.CONNECTED, now)
            elif isinstance(ev, Abandoned):
                pass  # the message is playing; the end event follows
            elif isinstance(ev, OptOut):
                # Pressed 9 in the abandon message: on DNC now, for every campaign and node, not at the
                # end of the call; the result shows it as the DNC request it is.
                log.info("opt-out requested in the abandon message")
                await self._until_stored(lambda: self.store.add_dnc([call.lead.phone]), log)
                call.disposition = call.disposition or "dnc_request"
            elif isinstance(ev, Ended):
                last = call.state
                advance(call, _ENDED, now)
                call.cause = ev.cause
                call.outcome = final_outcome(call, last, ev.cause, ev.reason)
                if call.call_id in self._cancelled and call.outcome in (Outcome.FAILED, Outcome.NO_ANSWER):
                    call.outcome = Outcome.CANCELLED  # our own hang-up of a ring the agent called off
                if (call.outcome is _CUSTOMER_HANGUP and call.agent_id is None
                        and self.cfg.abandon.count_early_hangups):
                    call.outcome = Outcome.ABANDONED  # never connected to anyone: an abandon, fail closed
                if (last in _RINGS and ev.reason != "unknown"
                        and call.outcome is not _CANCELLED):  # a ring cut short says nothing of answers
                    self.estimates.observe_answer(False, None, call.call_id)
                self._count_end(call)
        if agent is not None and call.connected_at is None:
            # Answered but never bridged (hung up first), or a preview call never answered.
            self.pool.return_unused(agent)
            agent.call_id = None
            return None
        return agent

    async def _agent_within_limit(self, call: CallAttempt) -> Agent | None:
        """A free agent within the connect limit, or None; gives up early if the customer hangs up."""
        waiter: asyncio.Future[Agent | None] = self._loop.create_future()
        self._agent_waits[call.call_id] = waiter
        group = self._lane_of[call.call_id].name
        self._waiting_agent[group] += 1
        try:
            return await self.pool.acquire(self.cfg.pacing.connect_limit, waiter, group, call.lead.preferred_agent)
        finally:
            self._waiting_agent[group] -= 1
            self._agent_waits.pop(call.call_id, None)

    def _event_limit(self, call: CallAttempt) -> float:
        """How long a call in its present state may wait for its next PBX event before it is presumed lost
        (``_presumed_lost``). A plain method that ``_follow`` awaits ``CallEvents.next`` with: one
        coroutine less per event, four a call."""
        if call.state in _RINGS:
            return self.cfg.pacing.ring_timeout + EVENT_GRACE_S
        if call.state in _HELD:
            return self.cfg.pacing.connect_limit + 120.0 + EVENT_GRACE_S
        return MAX_CALL_S

    async def _presumed_lost(self, call: CallAttempt, log: Any) -> CallEvent:
        """No event within ``_event_limit``: the call is hung up and ends as ``unknown``."""
        log.warning("no end event from the PBX; call presumed lost", state=call.state.value)
        await self._pbx_quietly(self.pbx.hangup(call.call_id), log, "hangup")
        return Ended(call.call_id, 0, "unknown")

    async def _pbx_quietly(self, action: Any, log: Any, what: str) -> None:
        """A PBX command whose failure the call's own events will reveal (e.g. the channel is gone)."""
        try:
            await action
        except PbxError as exc:
            log.warning("pbx action failed", action=what, error=str(exc))

    def _count_end(self, call: CallAttempt) -> None:
        outcome = call.outcome
        assert outcome is not None
        if outcome.live:
            self.counters.live += 1
            self._since_refresh[0] += 1
            self._since_observe[0] += 1
        if outcome is _ABANDONED:
            self.counters.abandoned += 1
            self._since_refresh[1] += 1
            self._since_observe[1] += 1
        elif outcome is _CONNECTED:
            self.counters.connected += 1
        elif outcome is _MACHINE_OUTCOME:
            self.counters.machines += 1
        if call.connected_at is not None and call.ended_at is not None:
            talk = call.ended_at - call.connected_at
            self.counters.talk_s += talk
            self.estimates.observe_talk(talk)

    async def _wrap_up(self, agent: Agent, call: CallAttempt) -> None:
        self.pool.to_wrap_up(agent)
        started = self._loop.time()
        if self._wrap_up_bounded:  # the desk's own timeout (a second one would only cost a timer a call)
            call.disposition = await self.desk.wrap_up(agent, call)
        else:
            try:
                async with asyncio.timeout(WRAP_UP_GUARD_S):
                    call.disposition = await self.desk.wrap_up(agent, call)
            except TimeoutError:
                call.disposition = None
        wrap = self._loop.time() - started
        self.counters.wrap_s += wrap
        self.estimates.observe_wrap(wrap)
        agent.call_id = None
        agent.calls += 1
        if agent.state is _WRAP_UP:
            self.pool.make_ready(agent)

    async def _record(self, call: CallAttempt, log: Any) -> None:
        """Result appended, lead rescheduled or closed, DNC on request, after-call hooks."""
        self._recorded.add(call.call_id)
        outcome = call.outcome or _UNKNOWN
        wall = self.clock.now()
        result = self._result(call, outcome)
        rule = self.cfg.dispositions.get(call.disposition or "")
        next_at = next_attempt_at(self.cfg, outcome, call.disposition, call.lead.attempts + 1, wall, call.lead)
        if next_at is not None:
            next_at = self._retry_moved(call, outcome, next_at, log)
        if self.results is not None:  # first: the one record left if the store stays down past shutdown
            try:
                self.results.write(result.as_row())
            except (OSError, ValueError) as exc:  # a full disk must not cost the store's record too
                self.counters.errors += 1
                log.error("results file write failed; the result goes to the store", error=repr(exc))
        abandoned, live = outcome is _ABANDONED, outcome.live
        if self._amd_false_positive(call, outcome):
            abandoned = live = True  # counted, campaign-wide, as the person AMD took for a machine
        await self._until_stored(lambda: self.store.finish_attempt(
            call, result, now=wall, next_eligible=next_at, abandoned=abandoned,
            live=live, invalid_number=outcome is _INVALID_NUMBER), log)
        if rule is not None and rule.dnc:
            await self._until_stored(lambda: self.store.add_dnc([call.lead.phone]), log)
        if rule is not None and rule.tags:
            await self._tag_lead(call, rule.tags, log)
        if self._log_debug:
            log.debug("call recorded", outcome=outcome.value, disposition=call.disposition)
        for r in self._after_call(call=call, result=result, campaign=self.cfg, store=self.store):
            try:
                if inspect.isawaitable(r):
                    await r
            except Exception as exc:
                log.error("after-call plugin failed", error=repr(exc))

    async def _tag_lead(self, call: CallAttempt, tags: list[str], log: Any) -> None:
        """A disposition's tags on the lead, the lead re-tiered by them, stored (history and schedule
        kept: an update of the same number) and audited as the engine's change."""
        lead = call.lead
        lead.tags = tuple(dict.fromkeys((*lead.tags, *tags)))
        moved = retier(self.plugins, self.cfg, lead)
        if self.audit is not None:
            self.audit.record(actor="engine", role="engine", action="update", lead_id=lead.lead_id,
                              fields=("tags", "tier") if moved else ("tags",),
                              reason=f"disposition {call.disposition}")
        await self._until_stored(lambda: self.store.add_leads([lead]), log)

    def _amd_false_positive(self, call: CallAttempt, outcome: Outcome) -> bool:
        """Whether this call, dropped as a machine, is where an estimated AMD false positive is counted.

        Some of the answers AMD calls machines are people, hung up on in silence: abandoned calls
        (Ofcom counts them). With ``[abandon] count_amd_false_positives``, every dropped machine adds
        ``amd_false_positive_rate`` (the share of machine verdicts that are really people, from a
        sample of recordings) to a running sum, and each time the sum passes a whole call one
        abandoned live answer is counted: the rate the controller and the reports see includes them,
        in whole calls, with no more than one call of rounding.
        """
        ab = self.cfg.abandon
        if not (ab.count_amd_false_positives and outcome is _MACHINE_OUTCOME and call.agent_id is None
                and self.cfg.amd.enabled and self.cfg.amd.machine_action == "hangup"):
            return False
        self._amd_fp_sum += ab.amd_false_positive_rate
        if self._amd_fp_sum < 1.0:
            return False
        self._amd_fp_sum -= 1.0
        self.counters.amd_false_positives += 1
        self.counters.live += 1
        self.counters.abandoned += 1
        for since in (self._since_refresh, self._since_observe):
            since[0] += 1
            since[1] += 1
        return True

    def _retry_moved(self, call: CallAttempt, outcome: Outcome, proposed: float, log: Any) -> float:
        """The next attempt's time after the plugins' say (e.g. best time to call); never earlier."""
        try:
            moved = self._next_attempt(call=call, outcome=outcome, proposed=proposed, campaign=self.cfg)
        except Exception as exc:
            log.error("next-attempt plugin failed; retry rules stand", error=repr(exc))
            return proposed
        return proposed if moved is None else max(proposed, float(moved))

    async def _release(self, lead: Lead, now: float, next_eligible: float | None, log: Any) -> None:
        """Give an undialled lead back. If the store is down the claim is a lease that frees itself when it
        expires, so waiting here would only hold up the caller."""
        try:
            await self.store.release_lead(lead, now=now, next_eligible=next_eligible)
        except StoreUnavailable as exc:
            log.warning("store unavailable; the lead's claim frees itself when its lease expires", error=str(exc))

    async def _until_stored(self, write: Any, log: Any) -> None:
        """A write that must not be lost: retried until the store takes it (or the task is cancelled)."""
        delay, started = 0.2, self._loop.time()
        while True:
            try:
                await write()
                return
            except StoreUnavailable as exc:
                if self._stopping and self._loop.time() - started > max(self.drain_timeout, 30.0):
                    log.error("store still unavailable at shutdown; this result is only in the results file",
                              error=str(exc))
                    return
                log.warning("store unavailable; result kept and retried", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _interrupted(self, call: CallAttempt, agent: Agent | None, log: Any,
                           outcome: Outcome = Outcome.INTERRUPTED) -> None:
        """Record a call cut short by shutdown (or a bug) so that nothing is lost or redialled blindly."""
        wall = self.clock.now()
        if call.state == CallState.RESERVED:
            await self._release(call.lead, wall, wall, log)
            if agent is not None and agent.state == AgentState.PREVIEWING:
                self.pool.end_preview(agent)
            return
        if call.state != CallState.ENDED:
            try:
                async with asyncio.timeout(2.0):
                    await self.pbx.hangup(call.call_id)
            except (PbxError, TimeoutError) as exc:
                log.warning("hangup on interrupt failed", error=str(exc))
            advance(call, CallState.ENDED, self._loop.time())
            call.outcome = outcome
        self.counters.interrupted += 1
        if agent is not None and agent.state in (AgentState.ON_CALL, AgentState.PREVIEWING):
            self.pool.to_wrap_up(agent)
            self.pool.make_ready(agent)
        await self._record(call, log)

    # -- helpers -------------------------------------------------------------------------

    def _day_key(self, lead: Lead, wall: float) -> str:
        return _local_day(lead.timezone or self.cfg.campaign.timezone, wall)

    def _result(self, call: CallAttempt, outcome: Outcome) -> CallResult:
        lead, started = call.lead, call.wall_started
        return CallResult(
            call_id=call.call_id,
            campaign_id=call.campaign_id,
            lead_id=lead.lead_id,
            attempt_no=call.attempt_no,
            outcome=outcome,
            cause=call.cause,
            disposition=call.disposition,
            agent_id=call.agent_id,
            # ``_value_``: the member's value without ``Enum.value``'s Python-level descriptor (once a call)
            answer_kind=call.answer_kind._value_ if call.answer_kind else None,
            started=_iso_seconds(started, started.utcoffset()) if started else "",
            ring_s=_span(call.dialed_at, call.answered_at or call.ended_at),
            wait_s=_span(call.answered_at, call.connected_at or (call.ended_at if call.answered_at else None)),
            talk_s=_span(call.connected_at, call.ended_at),
            phone_masked=mask_phone(lead.phone),
            tier=lead.tier,
            customer_type=lead.attributes.get("customer_type"),
            follow_up=bool(lead.attributes.get("follow_up_due")),
            # the dial's hour where the called party lives (the lead's zone, else the campaign's)
            local_hour=None if started is None else _local_hour_at(lead.timezone or self.cfg.campaign.timezone,
                                                                   started),
        )

    def _summarize(self) -> dict[str, Any]:
        out = summarize(self.counters, self.pool.totals(), len(self.pool.agents),
                        self._loop.time() - self.started_at, {})
        if self.decision_times:
            ms = sorted(t * 1000 for t in self.decision_times)
            out["decision_ms"] = {"p50": round(ms[len(ms) // 2], 3), "p99": round(ms[int(len(ms) * 0.99)], 3),
                                  "max": round(ms[-1], 3), "n": len(ms)}
        if self._hoppers:
            figures = [h.figures() for h in self._hoppers.values()]
            out["reserve_ahead"] = {k: sum(f[k] for f in figures) for k in figures[0]}
        return out

    # -- PBX events ----------------------------------------------------------------------

    def _on_event(self, ev: PbxEvent) -> None:
        """The backend's sink: route each event to its call; never raises."""
        if type(ev) is AgentSession:
            self._agent_session(ev)
            return
        if type(ev) is PbxFailed:
            self._fail(ev.reason)
            return
        events = self._events.get(ev.call_id)
        if events is not None:
            events.put(ev)
            if isinstance(ev, Ended):
                waiter = self._agent_waits.get(ev.call_id)
                if waiter is not None and not waiter.done():
                    self._gave_up.add(ev.call_id)
                    waiter.set_result(None)
        else:
            self.log.debug("event for an unknown call", call_id=ev.call_id, kind=type(ev).__name__)

    def _agent_session(self, ev: AgentSession) -> None:
        """An agent's PBX session went down or came back: no call for them until it is back (a connect
        would fail and leave the customer in silence). The pool keeps breaks, calls and wrap-ups apart."""
        if ev.agent_id not in self.pool.agents:
            return
        if not ev.up and self.pool.session_lost(ev.agent_id):
            self.log.warning("agent session lost: no calls for this agent until it is back", agent_id=ev.agent_id,
                             state=self.pool.agents[ev.agent_id].state.value)
        elif ev.up and self.pool.session_back(ev.agent_id):
            self.log.info("agent session back", agent_id=ev.agent_id,
                          state=self.pool.agents[ev.agent_id].state.value)

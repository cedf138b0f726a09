"""Baseline pacers the predictive pacer is measured against, in the same harness, and the oracle.

- ``fixed``: a fixed dial ratio: calls in flight = ratio x agents ready or in wrap-up.
- ``vicidial``: an adaptive dial level after VICIdial's public description (AST_VDadapt): every 15 s
  the level moves with the average gap between ready agents and answered calls waiting, scaled by
  an intensity; lines = level x active agents, counting calls already with agents; capped at a
  maximum level; cut to 1.0 while the day's drop percentage is over the target (ADAPT_HARD_LIMIT).
- ``classic``: the classic forecast: agents free within a window W (each busy agent weighted by the
  probability of freeing within W, from the learnt distributions) minus the answers expected from
  calls in flight, divided by the answer rate; W lengthened while the day's abandon rate is under
  the target and shortened when over it (its one parameter, adapted online instead of tuned). Below
  zero the parameter discounts the agents counted (x exp(W / 5 s)): matching expected answers to
  free agents exactly abandons far too many, so the feedback must be able to go under it.
- ``oracle``: knows every call's outcome, answer delay, talk time and wrap-up in advance (it peeks
  at the behaviour model's pre-drawn draws and at the simulator's timers): it dials every call that
  will not need an agent at once and times each live answer to meet an agent freeing. No real pacer
  can pass it: every other figure is stated as a fraction of it.

They are pure pacers like the built-in ones (the oracle reads the simulator's state as well, which
is its definition). ``register()`` makes them selectable by name in this process; packaged, they are
``dialer.pacers`` entry points.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

from engine.models import AgentState, AnswerKind
from engine.pacing.base import Decision, Snapshot, dial_cap


class FixedRatioPacer:
    """Calls in flight = ``ratio`` x agents ready or in wrap-up (agents on a call are not counted)."""

    name = "fixed"

    def __init__(self, ratio: float = 1.5) -> None:
        self.ratio = ratio

    def decide(self, snap: Snapshot) -> Decision:
        want = math.floor(self.ratio * (snap.ready + len(snap.wrap_up))) - len(snap.ringing) - snap.waiting
        return Decision(dials=max(0, min(want, dial_cap(snap))))


class VicidialPacer:
    """VICIdial-style adaptive dial level (ADAPT_HARD_LIMIT), from its public description."""

    name = "vicidial"

    def __init__(self, target: float = 0.03, *, start_level: float = 1.0, max_level: float = 3.0,
                 intensity: float = 0.0, period: float = 15.0) -> None:
        self.target = target
        self.level = start_level
        self.max_level = max_level
        self.gain = 1.0 + intensity / 20.0  # intensity -40..40 as in VICIdial: -1..3 x the base step
        self.period = period
        self._next: float | None = None  # loop time of the next adaptation
        self._gap_sum = 0.0
        self._gap_n = 0
        self.history: list[tuple[float, float]] = []  # (time, level)

    def decide(self, snap: Snapshot) -> Decision:
        staffed = snap.staffed
        if staffed == 0:
            return Decision()
        self._gap_sum += snap.ready - snap.waiting
        self._gap_n += 1
        if self._next is None:
            self._next = snap.now + self.period
        elif snap.now >= self._next:
            gap = self._gap_sum / max(self._gap_n, 1)
            step = self.gain * gap / staffed  # a gap of the whole team moves the level by 1 (x intensity)
            self.level += min(max(step, -0.5), 0.5)
            self.level = min(max(self.level, 1.0), self.max_level)
            if snap.live >= 20 and snap.abandoned / snap.live > self.target:
                self.level = 1.0  # hard limit: over the day's drop target, dial 1:1 until back under
            self._gap_sum, self._gap_n = 0.0, 0
            self._next = snap.now + self.period
            self.history.append((snap.now, self.level))
        lines = math.floor(self.level * staffed)
        busy = len(snap.ringing) + snap.waiting + len(snap.on_call)
        return Decision(dials=max(0, min(lines - busy, dial_cap(snap))))


class ClassicForecastPacer:
    """Agents expected free within a window, minus expected answers, over the answer rate."""

    name = "classic"

    def __init__(self, target: float = 0.03, *, window: float = 0.0, min_window: float = -10.0,
                 max_window: float = 60.0, gain: float = 0.3, period: float = 30.0) -> None:
        self.target = target
        self.window = window
        self.min_window, self.max_window = min_window, max_window
        self.gain = gain
        self.period = period
        self._next: float | None = None
        self._seen = (0, 0)  # live, abandoned at the last adaptation
        self._last = 0.0

    def _adapt(self, snap: Snapshot) -> None:
        """Every ``period``, once at least 10 new live answers are in (or 10 periods passed without)."""
        if self._next is None:
            self._next = snap.now + self.period
            self._last = snap.now
            return
        if snap.now < self._next:
            return
        self._next = snap.now + self.period
        live, abandoned = snap.live - self._seen[0], snap.abandoned - self._seen[1]
        if live < 10 and snap.now - self._last < 10 * self.period:
            return
        self._seen, self._last = (snap.live, snap.abandoned), snap.now
        if live == 0:
            error = 0.25  # nothing answered for a long while: relax
        else:
            # The day's rate steers (it is what the cap is about); the latest answers react quickly.
            day = snap.abandoned / max(snap.live, 1)
            recent = abandoned / live
            error = (self.target - 0.5 * (day + recent)) / self.target
        self.window += self.gain * 5.0 * max(-2.0, min(1.0, error))
        self.window = min(max(self.window, self.min_window), self.max_window)

    def decide(self, snap: Snapshot) -> Decision:
        cap = dial_cap(snap)
        if cap == 0:
            return Decision()
        self._adapt(snap)
        est = snap.estimates
        h = np.array([max(self.window, 0.0) + snap.connect_limit])
        free = float(snap.ready)
        if snap.on_call or snap.wrap_up:
            tq, wq = est.free_within(np.asarray(snap.on_call, dtype=float), np.asarray(snap.wrap_up, dtype=float), h)
            free += float(tq.sum() + wq.sum())
        free *= math.exp(min(self.window, 0.0) / 5.0)
        expected = float(snap.waiting)
        if snap.ringing:
            expected += float(est.answered_within(np.asarray(snap.ringing, dtype=float),
                                                  np.array([snap.ring_timeout])).sum())
        p = max(est.answer.p, 0.01)
        return Decision(dials=max(0, min(math.floor((free - expected) / p), cap)))


class OraclePacer:
    """Knows every call in advance. ``attach(dialer)`` gives it the simulator (sim backend + SimDesk)."""

    name = "oracle"

    def __init__(self) -> None:
        self.dialer: Any = None

    def attach(self, dialer: Any) -> None:
        self.dialer = dialer

    def _needs_agent(self, machine: bool, verdict: AnswerKind) -> bool:
        cfg = self.dialer.cfg
        if cfg.amd.enabled and cfg.amd.machine_action == "hangup":
            return verdict != AnswerKind.MACHINE
        return True

    def decide(self, snap: Snapshot) -> Decision:
        if self.dialer is None:
            raise RuntimeError("the oracle needs the simulator: attach(dialer) first")
        cap = dial_cap(snap)
        if cap == 0:
            return Decision()
        d = self.dialer
        backend, desk, behaviour = d.pbx, d.desk, d.pbx.behaviour
        now, limit = snap.now, snap.connect_limit
        wrap_mean = desk.a.wrap_mean
        talk_mean = behaviour.m.talk_mean
        free: list[float] = []
        for agent in d.pool.agents.values():
            state = agent.state
            if state == AgentState.READY:
                free.append(now)
            elif state == AgentState.WRAP_UP:
                free.append(desk.wrap_ends.get(agent.agent_id, now))
            elif state == AgentState.ON_CALL:
                c = backend._calls.get(agent.call_id) if agent.call_id else None
                if c is None:
                    free.append(now + talk_mean + wrap_mean)  # handed over this very instant
                elif c.state == "connected" and c.timer is not None:
                    free.append(c.timer.when() + desk.wrap_for(agent.call_id))
                else:
                    free.append(now + c.plan.talk + desk.wrap_for(agent.call_id))
        if not free:
            return Decision()
        heapq.heapify(free)
        # Answers to come from calls already placed, in answer order.
        ring_timeout = snap.ring_timeout
        demand: list[tuple[float, float]] = []  # (answer time, talk + wrap)
        in_backend = 0
        for c in backend._calls.values():
            plan = c.plan
            if c.state == "ringing":
                in_backend += 1
                if plan.answer_after is not None and plan.answer_after < ring_timeout \
                        and self._needs_agent(plan.machine, plan.amd_verdict):
                    demand.append((c.call.dialed_at + plan.answer_after,
                                   plan.talk + desk.wrap_for(c.call.call_id)))
            elif c.state == "answered" and c.agent_id is None and self._needs_agent(plan.machine, plan.amd_verdict):
                demand.append((now, plan.talk + desk.wrap_for(c.call.call_id)))
        # Dials decided earlier but not yet placed use the next draws: skip them, but count their answers.
        pending = max(0, len(snap.ringing) - in_backend)
        draws = behaviour.peek(pending + cap)
        rate = behaviour.answer_rate(now)
        for draw in draws[:pending]:
            out = behaviour.outcome(draw, rate)
            if out is not None and draw.ring < ring_timeout and self._needs_agent(out[1], out[2]):
                demand.append((now + draw.ring, (behaviour.m.machine_message if out[1] else draw.talk) + wrap_mean))
        demand.sort()
        for t_ans, busy in demand:
            f = heapq.heappop(free)
            if f <= t_ans + limit:
                heapq.heappush(free, max(f, t_ans) + busy)
            else:
                heapq.heappush(free, f)  # that answer is lost; the agent is still to come
        margin = 0.05
        dials = 0
        for draw in draws[pending:]:
            out = behaviour.outcome(draw, rate)
            if out is None or draw.ring >= ring_timeout or not self._needs_agent(out[1], out[2]):
                dials += 1  # costs a line, never an agent
                continue
            t_ans = now + draw.ring
            if free[0] > t_ans + limit - margin:
                break  # dialled now, this answer would find nobody: wait for a later decision
            f = heapq.heappop(free)
            talk = draw.talk if not out[1] else behaviour.m.machine_message
            heapq.heappush(free, max(f, t_ans) + talk + wrap_mean)
            dials += 1
        return Decision(dials=dials)


BASELINES: dict[str, type] = {
    "fixed": FixedRatioPacer,
    "vicidial": VicidialPacer,
    "classic": ClassicForecastPacer,
    "oracle": OraclePacer,
}


def register() -> None:
    """Make the baselines selectable by name (``make_pacer``) in this process, as the entry points do."""
    from engine import pacing

    for name, factory in BASELINES.items():
        pacing.BUILTIN.setdefault(name, factory)


def attach(dialer: Any) -> None:
    """``on_dialer`` hook for ``run_sim_campaign``: hands the oracle the simulator it may look into."""
    for lane in dialer.lanes:
        if hasattr(lane.pacer, "attach"):
            lane.pacer.attach(dialer)

"""The behaviour model of simulated called parties.

One seeded ``numpy`` generator decides how each call will go: invalid, failed,
busy, answered by a person or a machine (and what AMD will make of it), or
unanswered until the ring timeout. Answer delays are gamma, conversations
exponential or log-normal (heavy tail). The live-answer rate may vary with the
hour of the shift and drift.

Every dial consumes exactly one pre-drawn *draw* (a handful of random numbers,
drawn by blocks, which is also what makes the model cheap); the draw becomes a
plan at dial time, under the answer rate of that instant. Because the draws of
the next dials already exist, an oracle may ``peek`` at them without changing
the run: the same seed gives the same calls whoever looks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from engine.config import CustomerModel
from engine.models import Q850, AnswerKind, CallAttempt
from engine.pbx.sim import CallPlan

BLOCK = 1024  # draws made at once


class Draw(NamedTuple):
    """The random numbers behind one dial."""

    u: float  # picks the outcome
    ring: float  # answer delay, if answered
    v: float  # AMD verdict
    talk: float  # conversation length, if a person talks to an agent
    w: float  # spare uniform (how long a failure holds the line)


class CustomerBehaviour:
    def __init__(self, model: CustomerModel, rng: np.random.Generator,
                 answer_rate_at: Callable[[float], float] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.m = model
        self.rng = rng
        self.answer_rate_at = answer_rate_at
        self.clock = clock
        if model.talk_distribution == "lognormal":
            self._mu = math.log(model.talk_mean) - model.talk_sigma**2 / 2
        self.plans = 0
        self._draws: deque[Draw] = deque()
        m = model
        self._edges = (m.invalid_rate, m.invalid_rate + m.failed_rate, m.invalid_rate + m.failed_rate + m.busy_rate)

    # -- the answer rate -----------------------------------------------------------------

    def answer_rate(self, t: float | None = None) -> float:
        """Live-answer probability at loop time ``t`` (seconds since the shift started)."""
        if self.answer_rate_at is not None:
            return self.answer_rate_at(self.clock() if self.clock is not None else (t or 0.0))
        m = self.m
        t = t or 0.0
        if m.hourly_answer_rate:
            return m.hourly_answer_rate[min(int(t // 3600), len(m.hourly_answer_rate) - 1)]
        if m.drift_to is not None:
            return m.answer_rate + (m.drift_to - m.answer_rate) * min(t / m.drift_over, 1.0)
        return m.answer_rate

    # -- draws ---------------------------------------------------------------------------

    def _refill(self) -> None:
        m, rng = self.m, self.rng
        u = rng.random(BLOCK)
        ring = rng.gamma(m.ring_shape, m.ring_mean / m.ring_shape, BLOCK)
        v = rng.random(BLOCK)
        if m.talk_distribution == "lognormal":
            talk = rng.lognormal(self._mu, m.talk_sigma, BLOCK)
        else:
            talk = rng.exponential(m.talk_mean, BLOCK)
        w = rng.random(BLOCK)
        self._draws.extend(map(Draw._make, zip(u.tolist(), ring.tolist(), v.tolist(), talk.tolist(), w.tolist(),
                                               strict=True)))

    def peek(self, k: int) -> list[Draw]:
        """The draws of the next ``k`` dials (for an oracle: looking changes nothing)."""
        while len(self._draws) < k:
            self._refill()
        return [self._draws[i] for i in range(k)]

    def talk_time(self) -> float:
        if not self._draws:
            self._refill()
        return self._draws.popleft().talk

    def outcome(self, d: Draw, live: float) -> tuple[bool, bool, AnswerKind] | None:
        """(answered, machine, AMD verdict) of a draw under live-answer rate ``live``; None if not answered."""
        m = self.m
        e2 = self._edges[2]
        if d.u < e2:
            return None
        if d.u < e2 + live:
            return True, False, AnswerKind.MACHINE if d.v < m.amd_false_positive else AnswerKind.HUMAN
        if d.u < e2 + live + m.machine_rate:
            return True, True, AnswerKind.MACHINE if d.v < m.amd_accuracy else AnswerKind.HUMAN
        return None

    def plan(self, call: CallAttempt, ring_timeout: float) -> CallPlan:
        m = self.m
        self.plans += 1
        if not self._draws:
            self._refill()
        d = self._draws.popleft()
        e0, e1, e2 = self._edges
        if d.u < e0:
            return CallPlan(None, cause=Q850.UNALLOCATED, end_after=1.0 + 2.0 * d.w)
        if d.u < e1:
            return CallPlan(None, cause=Q850.TEMPORARY_FAILURE, end_after=1.0 + 3.0 * d.w)
        if d.u < e2:
            return CallPlan(None, cause=Q850.USER_BUSY, end_after=2.0 + 4.0 * d.w)
        out = self.outcome(d, self.answer_rate(call.dialed_at))
        if out is None:
            return CallPlan(None, cause=Q850.NO_ANSWER, end_after=ring_timeout)
        _, machine, verdict = out
        if machine:
            return CallPlan(d.ring, machine=True, amd_verdict=verdict, talk=m.machine_message)
        plan = CallPlan(d.ring, machine=False, amd_verdict=verdict, talk=d.talk, patience=m.patience)
        if m.opt_out_rate:
            # Whether this person presses 9 if abandoned. ``w`` is the draw's spare uniform, unused by an
            # answered call: no extra random number, so a seed gives the same calls with or without opt-outs.
            plan.opt_out = d.w < m.opt_out_rate
        return plan


AREA_CODES = ("212", "312", "415", "617", "713", "206", "305", "404", "602", "303")
# More codes for lists too long for the first ten (a 200-agent shift at a 10 % answer rate dials
# 150,000 numbers, and each number may be dialled only so often a day).
MORE_AREA_CODES = ("201", "202", "213", "214", "215", "216", "301", "302", "310", "313", "314", "315", "316",
                   "317", "318", "319", "320", "321", "323", "325", "330", "331", "334", "336", "337", "339")


def generate_phones(n: int, rng: np.random.Generator) -> list[str]:
    """Distinct, well-formed US numbers in the 555 exchange (fictional, never real subscribers)."""
    codes = AREA_CODES if n <= len(AREA_CODES) * 10000 // 2 else AREA_CODES + MORE_AREA_CODES
    picks = rng.choice(len(codes) * 10000, size=n, replace=n > len(codes) * 10000)
    # As Python ints (tolist): arithmetic and formatting on numpy scalars cost several times more.
    return [f"+1{codes[p // 10000]}555{p % 10000:04d}" for p in picks.tolist()]

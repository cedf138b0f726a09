"""The behaviour model of simulated called parties.

One seeded ``numpy`` generator decides, at dial time, how each call will go:
invalid, failed, busy, answered by a person or a machine (and what AMD will
make of it), or unanswered until the ring timeout. Answer delays are gamma,
conversations exponential or log-normal (heavy tail). The answer rate may vary
with the hour of the day in the called party's time, and drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from engine.config import CustomerModel
from engine.models import Q850, AnswerKind, CallAttempt
from engine.pbx.sim import CallPlan


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

    def answer_rate(self) -> float:
        if self.answer_rate_at is not None and self.clock is not None:
            return self.answer_rate_at(self.clock())
        return self.m.answer_rate

    def talk_time(self) -> float:
        if self.m.talk_distribution == "lognormal":
            return float(self.rng.lognormal(self._mu, self.m.talk_sigma))
        return float(self.rng.exponential(self.m.talk_mean))

    def plan(self, call: CallAttempt, ring_timeout: float) -> CallPlan:
        m, rng = self.m, self.rng
        self.plans += 1
        u = rng.random()
        live = self.answer_rate()
        edges = np.cumsum([m.invalid_rate, m.failed_rate, m.busy_rate, live, m.machine_rate])
        if u < edges[0]:
            return CallPlan(None, cause=Q850.UNALLOCATED, end_after=float(rng.uniform(1, 3)))
        if u < edges[1]:
            return CallPlan(None, cause=Q850.TEMPORARY_FAILURE, end_after=float(rng.uniform(1, 4)))
        if u < edges[2]:
            return CallPlan(None, cause=Q850.USER_BUSY, end_after=float(rng.uniform(2, 6)))
        ring = float(rng.gamma(m.ring_shape, m.ring_mean / m.ring_shape))
        if u < edges[3]:
            verdict = AnswerKind.MACHINE if rng.random() < m.amd_false_positive else AnswerKind.HUMAN
            return CallPlan(ring, machine=False, amd_verdict=verdict, talk=self.talk_time(),
                            patience=m.patience)
        if u < edges[4]:
            verdict = AnswerKind.MACHINE if rng.random() < m.amd_accuracy else AnswerKind.HUMAN
            return CallPlan(ring, machine=True, amd_verdict=verdict, talk=m.machine_message)
        return CallPlan(None, cause=Q850.NO_ANSWER, end_after=ring_timeout)


AREA_CODES = ("212", "312", "415", "617", "713", "206", "305", "404", "602", "303")


def generate_phones(n: int, rng: np.random.Generator) -> list[str]:
    """Distinct, well-formed US numbers in the 555 exchange (fictional, never real subscribers)."""
    picks = rng.choice(len(AREA_CODES) * 10000, size=n, replace=n > len(AREA_CODES) * 10000)
    return [f"+1{AREA_CODES[p // 10000]}555{p % 10000:04d}" for p in picks]

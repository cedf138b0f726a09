"""The abandon-rate controller: turns measured abandons into the pacer's allowance.

The legal measure is abandoned / live answers over a window (30 days for the
TCPA/TSR, 24 h for Ofcom), campaign-wide. The controller keeps an *abandon
budget* per window: ``working target x live answers - abandons``. The working
target sits below the configured cap by a margin that shrinks as counts grow
(a handful of calls says little about the true rate), so early calls cannot
spend the budget the rest of the window needs. The allowance handed to the
pacer (the marginal abandon probability it may accept for its next dial) has
a learnt level, moved slowly by the stream of new answers, times a factor for
how much of the binding window's budget is left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine.store.base import AbandonCounts


class AbandonController:
    def __init__(self, target: float, windows: Sequence[float], *, safety_z: float = 1.0,
                 prior_live: float = 200.0, gain: float = 0.08, budget_gain: float = 1.5,
                 floor: float = 0.0005, ceiling: float = 0.6) -> None:
        if not 0 < target < 1:
            raise ValueError("target is a fraction, e.g. 0.03")
        self.target = target
        self.windows = tuple(windows)
        self.safety_z = safety_z
        self.prior_live = prior_live
        self.gain = gain
        self.budget_gain = budget_gain
        self.floor, self.ceiling = floor, ceiling
        self.level = 0.0  # log of allowance / target, learnt
        self.slack = 0.0  # relative budget left in the binding window, -1..1
        self.over = False

    def working_target(self, live: int) -> float:
        """Target minus a margin that is wide while few live answers have been counted."""
        margin = self.safety_z * math.sqrt(self.target * (1 - self.target) / (live + self.prior_live))
        return max(self.target - margin, self.target * 0.25)

    def observe(self, new_live: int, new_abandoned: int, counts: Sequence[AbandonCounts]) -> None:
        """Feed the answers since the last call, and the window counts (one per window)."""
        if new_live or new_abandoned:
            t = self.working_target(counts[0].live if counts else 0)
            self.level += self.gain * (t * new_live - new_abandoned) / (t * 10.0)
            self.level = min(max(self.level, math.log(self.floor / self.target)),
                             math.log(self.ceiling / self.target))
        slack, over = 1.0, False
        for c in counts:
            t = self.working_target(c.live)
            budget = t * c.live - c.abandoned
            rel = budget / (t * (c.live + self.prior_live))
            slack = min(slack, rel)
            over = over or (c.live > 0 and c.abandoned / c.live > t)
        self.slack = max(-1.0, min(1.0, slack))
        self.over = over

    @property
    def allowance(self) -> float:
        value = self.target * math.exp(self.level + self.budget_gain * self.slack)
        if self.over:
            value *= 0.25  # over the working target: dial almost progressively until back under
        return min(max(value, self.floor), self.ceiling)

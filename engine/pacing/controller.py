"""The abandon-rate controller: turns measured abandons into the pacer's allowance.

The legal measure is abandoned / live answers over a window (30 days for the
TCPA/TSR, 24 h for Ofcom), campaign-wide. The controller aims each window at a
*working target* below the cap, with a margin for the scatter of the window's
rate: a 30-day window pools tens of thousands of answers, so a little margin
holds it on almost every window; a 24 h window of a small team holds a few
hundred, whose rate scatters by a percentage point, so its working target is
lower (and rises as the day's count grows).

The allowance handed to the pacer (the marginal abandon probability it may
accept for its next dial) is a learnt level (an integral controller on
``working target x new live answers - new abandons``: the outer feedback loop
that corrects a biased model, e.g. a wrong answer rate) times a factor for the
budget left in the binding window, ``working target x live - abandoned``. The
budget is counted with pseudo-answers at the working target (more for long
windows, whose history outweighs the first calls of a day), so a few early
abandons cannot swing it: the controller neither overshoots early in the day
nor starves the agents at its end.

Pseudo-answers are a forecast, not a count: a new campaign's 30-day window holds
only its first day, and if the campaign stopped there its rate is that day's.
So the cap guard (``[abandon] cap_guard``) holds each window's own measured rate
under the legal target at every moment once ``cap_guard_live`` answers are
counted: when one more abandon would put a window over, the allowance drops to
the floor until the window is back under. With history in the window it rarely
binds; on a fresh campaign's first day it costs a little occupancy (see
BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine.store.base import AbandonCounts

DAY = 86400.0


class AbandonController:
    def __init__(self, target: float, windows: Sequence[float], *, safety_z: float | None = None,
                 prior_live: float | None = None, gain: float = 0.1, budget_gain: float = 1.0, level: float = 0.5,
                 reach: float = 2000.0, floor: float = 0.0005, ceiling: float = 0.6,
                 cap_guard_live: int | None = 100) -> None:
        if not 0 < target < 1:
            raise ValueError("target is a fraction, e.g. 0.03")
        self.target = target
        self.windows = tuple(windows)
        short = bool(self.windows) and min(self.windows) <= DAY
        # z of the margin and pseudo-answers, by the shortest window (the one that scatters most).
        self.safety_z = safety_z if safety_z is not None else (1.3 if short else 0.7)
        self.prior_live = prior_live if prior_live is not None else (200.0 if short else 1000.0)
        self.gain = gain
        self.budget_gain = budget_gain
        self.reach = reach  # live answers over which a budget surplus or deficit is to be worked off
        self.floor, self.ceiling = floor, ceiling
        # Live answers in a window before its own rate is held under the cap at every moment; None: never.
        self.cap_guard_live = cap_guard_live
        self.level = level  # log of allowance / target, learnt (a marginal allowance above the target
        # is the norm: most dials risk much less than the last one)
        self.slack = 0.0  # relative budget left in the binding window, -1..1
        self.over = False
        self.at_cap = False
        self.live_seen = 0

    def working_target(self, live: int) -> float:
        """Target minus a margin that is wide while few live answers have been counted."""
        margin = self.safety_z * math.sqrt(self.target * (1 - self.target) / (live + self.prior_live))
        return max(self.target - margin, self.target * 0.25)

    def observe(self, new_live: int, new_abandoned: int, counts: Sequence[AbandonCounts]) -> None:
        """Feed the answers since the last call, and the window counts (one per window)."""
        live_now = min((c.live for c in counts), default=self.live_seen)
        if new_live or new_abandoned:
            self.live_seen += new_live
            t = self.working_target(live_now)
            # Integral action: each live answer under target raises the level a little, each abandon
            # lowers it by 1/t times as much, so the level settles where abandons run at t.
            self.level += self.gain * (t * new_live - new_abandoned) / (t * 10.0)
            self.level = min(max(self.level, math.log(self.floor / self.target)),
                             math.log(self.ceiling / self.target))
        slack, over, at_cap = 1.0, False, False
        for c in counts:
            t = self.working_target(c.live)
            budget = t * c.live - c.abandoned
            # The budget is weighed against the abandons of the next ``reach`` answers, not of the whole
            # window: a 30-day window holding 20,000 answers must still feel a deficit of 20 abandons.
            scale = min(c.live, self.reach) + self.prior_live
            slack = min(slack, budget / (t * scale))
            # Over: more than a couple of abandons beyond the working target (one abandon among the
            # first few dozen answers is noise, not a trend).
            over = over or budget < -max(2.0, 0.1 * t * min(c.live, self.reach))
            # At the legal target itself, once enough answers are counted for the rate to mean something:
            # one more abandon would put the window over the cap, whatever the pseudo-answers expect the
            # rest of the window to bring (a new campaign has no history). Calls in flight may bring it.
            at_cap = at_cap or (self.cap_guard_live is not None and c.live >= self.cap_guard_live
                                and c.abandoned + 1 > self.target * c.live)
        self.slack = max(-1.0, min(1.0, slack))
        self.over = over
        self.at_cap = at_cap

    @property
    def allowance(self) -> float:
        value = self.target * math.exp(self.level + self.budget_gain * self.slack)
        if self.at_cap:
            return self.floor  # at the legal cap: no dial that risks an abandon until back under
        if self.over:
            value *= 0.25  # over the working target: dial almost progressively until back under
        return min(max(value, self.floor), self.ceiling)

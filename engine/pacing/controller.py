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

The integral gain falls as answers are counted (``gain`` x ``gain_live`` /
(``gain_live`` + live answers seen), down to ``gain_min``: quick to correct a
wrong prior in the first minutes, then steady; ``[abandon] gain``, ``gain_min``
and ``gain_live`` in a campaign file). A steady allowance is worth
occupancy in itself: the pacer's occupancy is concave in its allowance, so an
allowance that jumps by a quarter at every abandon (as a fixed gain of 0.1 made
it, from 0.005 to 0.08 within an hour at 10 agents) buys less talk time for the
same abandons than a constant one (10 agents: 0.872 at 2.8 % with a fixed
allowance, 0.858 with the jumpy controller).

Pseudo-answers are a forecast, not a count: a new campaign's 30-day window holds
only its first day, and if the campaign stopped there its rate is that day's.
So the cap guard (``[abandon] cap_guard``) holds each window's own measured rate
under the legal target at every moment once ``cap_guard_live`` answers are
counted: when one more abandon would put a window over, the allowance drops to
the floor until the window is back under. The guard eases in rather than
switching: over the last ``guard_room`` (``[abandon] cap_guard_room``)
abandons of room under the cap the allowance is scaled down in proportion, so
a window drifting towards the cap
slows its abandons before it gets there instead of dialling almost
progressively for twenty minutes once it does (which is what cost a 5-agent
team 0.04 of occupancy on a fresh campaign's day). With history in the window
it rarely binds (see BENCHMARKS.md).
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
                 cap_guard_live: int | None = 100, guard_room: float = 4.0,
                 gain_min: float | None = 0.02, gain_live: float = 200.0) -> None:
        if not 0 < target < 1:
            raise ValueError("target is a fraction, e.g. 0.03")
        # The campaign file is validated in engine.config; these catch a direct caller's slip, which would
        # otherwise surface as a division by zero or a guard that never opens in the middle of a shift.
        if gain_live <= 0:
            raise ValueError("gain_live is a count of live answers, more than 0")
        if guard_room < 0:
            raise ValueError("guard_room is a number of abandons, 0 or more")
        self.target = target
        self.windows = tuple(windows)
        short = bool(self.windows) and min(self.windows) <= DAY
        # z of the margin and pseudo-answers, by the shortest window (the one that scatters most).
        self.safety_z = safety_z if safety_z is not None else (1.3 if short else 0.7)
        self.prior_live = prior_live if prior_live is not None else (200.0 if short else 1000.0)
        self.gain = gain
        self.gain_min = gain if gain_min is None else gain_min
        self.gain_live = gain_live
        self.budget_gain = budget_gain
        self.reach = reach  # live answers over which a budget surplus or deficit is to be worked off
        self.floor, self.ceiling = floor, ceiling
        # Live answers in a window before its own rate is held under the cap at every moment; None: never.
        self.cap_guard_live = cap_guard_live
        # Abandons of room under the cap over which the guard eases in (0: all or nothing at the cap).
        self.guard_room = guard_room
        self.guard = 1.0  # the guard's factor on the allowance, 0..1
        self.level = level  # log of allowance / target, learnt (a marginal allowance above the target
        # is the norm: most dials risk much less than the last one)
        self.slack = 0.0  # relative budget left in the binding window, -1..1
        self.over = False
        self.at_cap = False
        self.live_seen = 0

    def current_gain(self) -> float:
        """The integral gain now: high while few answers are counted, ``gain_min`` once many are."""
        return max(self.gain_min, self.gain * self.gain_live / (self.gain_live + self.live_seen))

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
            self.level += self.current_gain() * (t * new_live - new_abandoned) / (t * 10.0)
            self.level = min(max(self.level, math.log(self.floor / self.target)),
                             math.log(self.ceiling / self.target))
        slack, over, at_cap, guard = 1.0, False, False, 1.0
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
            if self.cap_guard_live is not None and c.live >= self.cap_guard_live:
                room = self.target * c.live - c.abandoned - 1.0
                at_cap = at_cap or room < 0
                if self.guard_room > 0:
                    guard = min(guard, max(room, 0.0) / self.guard_room)
        self.slack = max(-1.0, min(1.0, slack))
        self.over = over
        self.at_cap = at_cap
        self.guard = guard

    @property
    def allowance(self) -> float:
        """The marginal abandon probability the pacer may accept for its next dial."""
        value = self.target * math.exp(self.level + self.budget_gain * self.slack)
        if self.at_cap:
            return self.floor  # at the legal cap: no dial that risks an abandon until back under
        value *= self.guard
        if self.over:
            value *= 0.25  # over the working target: dial almost progressively until back under
        return min(max(value, self.floor), self.ceiling)

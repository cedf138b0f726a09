"""Best time to call: live-answer rates by the called party's local hour, learnt from the campaign's own calls.

People answer at some hours and not at others (at work mid-morning, at home early evening), and the
pattern differs by list. Retrying an unanswered lead at the hour its list answers best turns the same
attempts into more contacts, which is what the per-contact caps make scarce. Each local hour's rate is
a Beta posterior whose prior is the campaign's overall rate, so a few lucky calls at 07:00 do not send
every retry there; a retry is moved only when an hour has enough calls on both sides and beats the
proposed time by a clear margin, and only later, never earlier (the retry delays and the compliance
gate still hold).

A run starts from the results its store remembers (each row carries the dial's hour in the called
party's zone, ``local_hour``: on a Redis store, every earlier run and every node), then learns from its
own calls as they end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

PRIOR_WEIGHT = 20.0  # the campaign-wide rate counts as this many calls in every hour's estimate


@dataclass
class HourlyRates:
    """Dials and live answers per local hour (0-23) of one campaign."""

    dials: list[int] = field(default_factory=lambda: [0] * 24)
    live: list[int] = field(default_factory=lambda: [0] * 24)

    def observe(self, hour: int, live: bool) -> None:
        self.dials[hour] += 1
        self.live[hour] += int(live)

    @property
    def overall(self) -> float:
        total = sum(self.dials)
        return (sum(self.live) + 1.0) / (total + 2.0)

    def rate(self, hour: int) -> float:
        """Posterior mean live-answer rate at this local hour, shrunk towards the overall rate."""
        prior = self.overall
        return (self.live[hour] + PRIOR_WEIGHT * prior) / (self.dials[hour] + PRIOR_WEIGHT)

    def best_start(self, proposed: float, zone: ZoneInfo, *, min_dials: int, gain: float,
                   horizon_h: int = 24) -> float | None:
        """The start of the local hour within ``horizon_h`` hours of ``proposed`` whose rate beats the
        rate at ``proposed`` by the relative ``gain``, best first; None to keep ``proposed``.

        Hours with fewer than ``min_dials`` calls are not candidates, and neither is the proposed hour
        when it has fewer: the learner only speaks where it has seen enough.
        """
        here = datetime.fromtimestamp(proposed, zone)
        if self.dials[here.hour] < min_dials:
            return None
        base = self.rate(here.hour)
        top = here.replace(minute=0, second=0, microsecond=0)
        best_at, best_rate = None, base * (1.0 + gain)
        for k in range(1, horizon_h):
            start = top + timedelta(hours=k)
            hour = start.hour
            if self.dials[hour] < min_dials:
                continue
            rate = self.rate(hour)
            if rate > best_rate:
                best_at, best_rate = start.timestamp(), rate
        return best_at

"""A fixed dial ratio with a cap, as a dialer pacer plugin.

Keeps ``ratio`` calls in flight (ringing, or answered and waiting for an agent)
for every ready agent, never more than ``max_in_flight`` in all, and never more
than the engine's own dial-ratio cap (``pacing.max_dial_ratio`` over staffed
agents). It does not look at the abandon controller: a ratio above 1 trades
abandoned calls for agent talk time, which the KPIs of a simulation show.

Registered under the ``dialer.pacers`` entry point as ``fixed-ratio``; a campaign
selects it with ``mode = "fixed-ratio"``. The engine builds pacers with no
arguments, so the settings come from the environment:

``DIALER_FIXED_RATIO``
    calls in flight per ready agent (default 1.5; 1.0 is progressive dialling).
``DIALER_FIXED_RATIO_CAP``
    most calls in flight at once, whatever the number of agents (default 50).
"""

from __future__ import annotations

import math
import os

from engine.pacing import Decision, Snapshot, dial_cap

__version__ = "0.1.0"


def _env_float(var: str, default: float, low: float) -> float:
    raw = os.environ.get(var)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{var}: {raw!r} is not a number") from None
    if not value >= low:
        raise ValueError(f"{var}: {raw!r} is below {low:g}")
    return value


class FixedRatioPacer:
    """``ratio`` calls in flight per ready agent, at most ``max_in_flight`` at once."""

    name = "fixed-ratio"

    def __init__(self, ratio: float | None = None, max_in_flight: int | None = None) -> None:
        self.ratio = ratio if ratio is not None else _env_float("DIALER_FIXED_RATIO", 1.5, 1.0)
        self.max_in_flight = int(max_in_flight if max_in_flight is not None
                                 else _env_float("DIALER_FIXED_RATIO_CAP", 50, 1))
        if self.ratio < 1.0 or self.max_in_flight < 1:
            raise ValueError(f"ratio must be at least 1 and max_in_flight at least 1 "
                             f"(got {self.ratio:g} and {self.max_in_flight})")

    def decide(self, snap: Snapshot) -> Decision:
        """Top up the calls in flight to ``ratio`` x ready agents, within both caps."""
        in_flight = len(snap.ringing) + snap.waiting
        wanted = math.floor(self.ratio * snap.ready + 1e-9) - in_flight
        wanted = min(wanted, self.max_in_flight - in_flight, dial_cap(snap))
        return Decision(dials=max(0, wanted))

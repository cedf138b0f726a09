"""The one injected wall clock.

Intervals (ring time, connect limit, pacing ticks) come from the event loop's
clock; calendar facts (calling windows, daily caps, result dates) come from a
``Clock``. Keeping the two apart is what lets the very same engine run in
virtual time inside the simulator, where the loop's clock jumps ahead.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock POSIX seconds."""


class SystemClock:
    """Real time."""

    def now(self) -> float:
        return time.time()


class LoopClock:
    """Wall clock that follows the running loop's clock from a fixed start date.

    Under a virtual-time loop this is the simulated calendar; under a real loop
    it drifts from ``time.time()`` only as much as the monotonic clock does.
    """

    def __init__(self, start: datetime, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._start = start.timestamp()
        self._loop = loop or asyncio.get_running_loop()
        self._t0 = self._loop.time()

    def now(self) -> float:
        return self._start + (self._loop.time() - self._t0)


def iso(ts: float) -> str:
    """UTC ISO-8601 with seconds, for results and reports."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

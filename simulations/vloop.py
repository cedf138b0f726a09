"""An asyncio event loop whose clock is virtual.

The real engine (asyncio tasks, ``asyncio.timeout``, ``call_later``) runs
unchanged on it: whenever nothing is ready to run, instead of sleeping until the
next timer the loop jumps its clock straight to it. An 8-hour shift then takes
as long as its callbacks take to run. Like SimPy's core, time only moves when
the event queue says so, and ties keep their scheduling order, so one seed gives
one run.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from asyncio import events
from typing import Any


class VirtualTimeDeadlock(RuntimeError):
    """Nothing is ready, nothing is scheduled and no I/O is possible: the run can never progress."""


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real file descriptors without waiting, and advances virtual time instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise VirtualTimeDeadlock("virtual-time loop has nothing scheduled: every task is waiting forever")
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class _FifoTimer(events.TimerHandle):
    """A timer that, at equal times, fires in the order it was scheduled (like SimPy's event ids)."""

    __slots__ = ("_seq",)

    def __init__(self, when: float, seq: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(when, *args, **kwargs)
        self._seq = seq

    def __lt__(self, other: Any) -> bool:
        if self._when == other._when:
            return self._seq < getattr(other, "_seq", 0)
        return self._when < other._when


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``asyncio.SelectorEventLoop`` with ``time()`` under its own control."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = start
        self._timer_seq = itertools.count()

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> events.TimerHandle:
        self._check_closed()
        timer = _FifoTimer(when, next(self._timer_seq), callback, args, self, context=context)
        heapq.heappush(self._scheduled, timer)
        timer._scheduled = True
        return timer

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds


def run_virtual(main: Any, *, start: float = 0.0) -> Any:
    """Run a coroutine to completion in virtual time and return its result."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)

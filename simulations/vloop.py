"""An asyncio event loop whose clock is virtual.

The real engine (asyncio tasks, ``asyncio.timeout``, ``call_later``) runs
unchanged on it: whenever nothing is ready to run, instead of sleeping until the
next timer the loop jumps its clock straight to it. An 8-hour shift then takes
as long as its callbacks take to run. Like SimPy's core, time only moves when
the event queue says so, and ties keep their scheduling order, so one seed gives
one run.

The loop runs hundreds of thousands of timers a shift, so its one iteration
(``_run_once``) is its own, not asyncio's: timers sit in a heap of
``(when, seq, handle)`` tuples, compared in C (asyncio's heap of handles
compares them with a Python ``__lt__``), and file descriptors (the loop's own
wake-up pipe; sockets, if a test opens any) are polled whenever the clock is
about to move and every ``IO_POLL_EVERY`` iterations in between, rather than
on every iteration at one and the same virtual instant. ``run_virtual`` also
holds the cyclic garbage collector off while it runs (see ``no_gc_passes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import heapq
import itertools
import selectors
from asyncio import events, format_helpers
from collections.abc import Iterator
from typing import Any

IO_POLL_EVERY = 32  # iterations at one virtual instant between two polls of the file descriptors
_MAX_STEP = 24 * 3600.0  # asyncio's MAXIMUM_SELECT_TIMEOUT: the clock moves at most this far per iteration
_MIN_SCHEDULED = 100  # asyncio's rule for sweeping cancelled timers out of the heap
_MAX_CANCELLED_FRACTION = 0.5


class VirtualTimeDeadlock(RuntimeError):
    """Nothing is ready, nothing is scheduled and no I/O is possible: the run can never progress."""


class _Handle(events.Handle):
    """``asyncio.Handle`` made without a debug query per handle (the loop's ``_debug`` is read once, in
    the loop): the very same object to everything that holds one, built for less."""

    __slots__ = ()

    def __init__(self, callback: Any, args: Any, loop: Any, context: Any = None) -> None:
        _fill(self, callback, args, loop, context)


def _fill(handle: events.Handle, callback: Any, args: Any, loop: Any, context: Any) -> None:
    """A handle's fields as ``events.Handle.__init__`` sets them, less its debug query."""
    handle._context = contextvars.copy_context() if context is None else context
    handle._loop = loop
    handle._callback = callback
    handle._args = args
    handle._cancelled = False
    handle._repr = None
    handle._source_traceback = None


class _TimerHandle(events.TimerHandle):
    """``asyncio.TimerHandle`` likewise, and cancelled in one call (``when`` and the rest are asyncio's
    own)."""

    __slots__ = ()

    def __init__(self, when: float, callback: Any, args: Any, loop: Any, context: Any = None) -> None:
        _fill(self, callback, args, loop, context)
        self._when = when
        self._scheduled = False

    def cancel(self) -> None:
        """``TimerHandle.cancel``: what it does through the loop's ``_timer_handle_cancelled``, then
        ``Handle.cancel`` and its debug query, in one call (every wait of a call ends by cancelling its
        timer); in debug mode, asyncio's own."""
        if self._cancelled:
            return
        loop = self._loop
        if loop._debug:
            super().cancel()
            return
        if self._scheduled:
            loop._timer_cancelled_count += 1
        self._cancelled = True
        self._callback = None
        self._args = None


def _failed(handle: events.Handle, exc: BaseException) -> None:
    """What ``Handle._run`` does with a callback's exception: the loop's exception handler is told."""
    source = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {source}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``asyncio.SelectorEventLoop`` with ``time()`` under its own control."""

    virtual_time = True  # read by code that only makes sense on a real clock (e.g. loop-lag watching)

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = start
        self._timer_seq = itertools.count()
        self._since_poll = 0
        self._scheduled: list[tuple[float, int, events.TimerHandle]] = []  # type: ignore[assignment]
        self._fd_map = self._selector.get_map()  # a live view of the watched file descriptors

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> events.TimerHandle:
        if self._debug:
            return self._debug_call_at(when, callback, args, context)
        if self._closed:
            raise RuntimeError("Event loop is closed")
        timer = _TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._scheduled, (when, next(self._timer_seq), timer))
        timer._scheduled = True
        return timer

    def _debug_call_at(self, when: float, callback: Any, args: Any, context: Any) -> events.TimerHandle:
        self._check_closed()
        self._check_thread()
        self._check_callback(callback, "call_at")
        timer = events.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._scheduled, (when, next(self._timer_seq), timer))
        timer._scheduled = True
        return timer

    def call_later(self, delay: float, callback: Any, *args: Any, context: Any = None) -> events.TimerHandle:
        if self._debug or delay is None:
            return super().call_later(delay, callback, *args, context=context)
        if self._closed:
            raise RuntimeError("Event loop is closed")
        when = self._virtual_now + delay  # ``call_at``, inlined: the most frequent way timers are set
        timer = _TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._scheduled, (when, next(self._timer_seq), timer))
        timer._scheduled = True
        return timer

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> events.Handle:
        """``call_soon`` as asyncio's (every future's and task's wake-up comes through here), in one step."""
        if self._debug:
            return super().call_soon(callback, *args, context=context)
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle = _Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds

    def _poll_io(self) -> bool:
        """Handle whatever the file descriptors have, without waiting; True if anything was ready."""
        self._since_poll = 0
        ready = self._selector.select(0)
        if ready:
            self._process_events(ready)
        return bool(ready)

    def _run_once(self) -> None:
        """One iteration: drop cancelled timers, poll I/O or move the clock to the next timer, move due
        timers to the ready queue, run the callbacks that were ready at the start (as asyncio does)."""
        heap = self._scheduled
        n = len(heap)
        if n > _MIN_SCHEDULED and self._timer_cancelled_count / n > _MAX_CANCELLED_FRACTION:
            kept = []
            for entry in heap:
                if entry[2]._cancelled:
                    entry[2]._scheduled = False
                else:
                    kept.append(entry)
            heapq.heapify(kept)
            self._scheduled = heap = kept
            self._timer_cancelled_count = 0
        else:
            while heap and heap[0][2]._cancelled:
                self._timer_cancelled_count -= 1
                heapq.heappop(heap)[2]._scheduled = False

        ready = self._ready
        if ready or self._stopping:
            self._since_poll += 1
            if self._since_poll >= IO_POLL_EVERY:
                self._poll_io()
        elif heap and self._since_poll < IO_POLL_EVERY and len(self._fd_map) <= 1:
            # Nothing to watch but the loop's own wake-up pipe (a simulation opens no socket): the clock
            # moves on without a poll, and the pipe is looked at every IO_POLL_EVERY iterations as above.
            # (``advance``, inlined: the step is never negative.)
            self._since_poll += 1
            self._virtual_now += min(max(0.0, heap[0][0] - self._virtual_now), _MAX_STEP)
        elif not self._poll_io():
            if not heap:
                raise VirtualTimeDeadlock("virtual-time loop has nothing scheduled: every task is waiting forever")
            self.advance(min(max(0.0, heap[0][0] - self._virtual_now), _MAX_STEP))

        end_time = self._virtual_now + self._clock_resolution
        while heap and heap[0][0] < end_time:
            handle = heapq.heappop(heap)[2]
            handle._scheduled = False
            ready.append(handle)

        if self._debug:
            for _ in range(len(ready)):
                handle = ready.popleft()
                if handle._cancelled:
                    continue
                self._current_handle = handle
                try:
                    handle._run()
                finally:
                    self._current_handle = None
        else:
            # ``handle._run()`` inlined (one Python call less per callback, hundreds of thousands an hour)
            popleft = ready.popleft
            for _ in range(len(ready)):
                handle = popleft()
                if handle._cancelled:
                    continue
                try:
                    handle._context.run(handle._callback, *handle._args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    _failed(handle, exc)
        handle = None  # break the cycle an exception would leave


@contextlib.contextmanager
def no_gc_passes() -> Iterator[None]:
    """Hold the cyclic garbage collector off while a simulation runs, then put it back as it was.

    A shift allocates tens of millions of objects and keeps hundreds of thousands (leads, results,
    history). With Python's defaults the collector passed over the survivors again and again and took
    a fifth of an 8-hour shift's time; with its passes made rare (one young pass per 100,000 net
    allocations) its few passes still took 2 % (0.21 s of a 100-agent shift, each pass longer as the
    shift's results pile up). Reference counting frees nearly everything at once; what is left in
    cycles (most of it the run's own object graph, once it is over) waits for the collector's first
    pass after the run. A 100-agent shift's peak memory is the same either way (370 MB).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_virtual(main: Any, *, start: float = 0.0) -> Any:
    """Run a coroutine to completion in virtual time and return its result."""
    with no_gc_passes(), asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)

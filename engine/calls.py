"""The call state machine: which state may follow which, and the outcome a path implies.

One table, in one place: every change of a call's state goes through
``advance``, so an impossible sequence (connected before answered, two ends)
is caught where it happens instead of corrupting results later. ``CallEvents``
carries a call's PBX events to the one task that follows the call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from engine.models import AnswerKind, CallAttempt, CallState, Outcome, outcome_for_unanswered

if TYPE_CHECKING:
    from engine.pbx.base import CallEvent

S = CallState
TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    S.RESERVED: frozenset({S.ORIGINATING, S.ENDED}),
    S.ORIGINATING: frozenset({S.RINGING, S.ANSWERED_HUMAN, S.ANSWERED_MACHINE, S.ENDED}),
    S.RINGING: frozenset({S.ANSWERED_HUMAN, S.ANSWERED_MACHINE, S.ENDED}),
    S.ANSWERED_HUMAN: frozenset({S.CONNECTED, S.ABANDONED, S.ENDED}),
    S.ANSWERED_MACHINE: frozenset({S.CONNECTED, S.ENDED}),
    S.CONNECTED: frozenset({S.ENDED}),
    S.ABANDONED: frozenset({S.ENDED}),
    S.ENDED: frozenset(),
}

UNANSWERED = frozenset({S.RESERVED, S.ORIGINATING, S.RINGING})

# The same table for ``advance``, which runs at every step of every call: keyed by each state's identity
# and its successors in a tuple, because hashing an Enum member is a call to a Python function.
_NEXT: dict[int, tuple[CallState, ...]] = {id(s): tuple(after) for s, after in TRANSITIONS.items()}
# Likewise the members ``advance`` and ``final_outcome`` compare with, bound once: in Python 3.11 each read
# of ``CallState.ENDED`` goes through the enum metaclass's ``__getattr__`` hook (about 70 ns).
_ANSWERED = (S.ANSWERED_HUMAN, S.ANSWERED_MACHINE)
_CONNECTED, _ENDED, _ABANDONED, _ANSWERED_MACHINE, _ANSWERED_HUMAN = (
    S.CONNECTED, S.ENDED, S.ABANDONED, S.ANSWERED_MACHINE, S.ANSWERED_HUMAN)


class CallStateError(RuntimeError):
    """A call was asked to move to a state that cannot follow its current one."""


def advance(call: CallAttempt, state: CallState, now: float) -> None:
    if state not in _NEXT[id(call.state)]:
        raise CallStateError(f"call {call.call_id}: {call.state.value} -> {state.value} not allowed")
    call.history.append((now, state))
    call.state = state
    if state in _ANSWERED:
        call.answered_at = now
    elif state is _CONNECTED:
        call.connected_at = now
    elif state is _ENDED:
        call.ended_at = now


def final_outcome(call: CallAttempt, last_state: CallState, cause: int, reason: str) -> Outcome:
    """The outcome implied by the state a call was in when its customer leg ended."""
    if reason == "interrupted":
        return Outcome.INTERRUPTED
    if reason == "unknown" and last_state in UNANSWERED:
        return Outcome.UNKNOWN
    if last_state in UNANSWERED:
        return outcome_for_unanswered(cause)
    if last_state is _ABANDONED:
        return Outcome.ABANDONED
    if last_state is _ANSWERED_MACHINE:
        return Outcome.MACHINE
    if last_state is _ANSWERED_HUMAN:
        return Outcome.CUSTOMER_HANGUP
    if call.answer_kind == AnswerKind.MACHINE:
        return Outcome.MACHINE
    return Outcome.CONNECTED


class CallEvents:
    """One call's PBX events in arrival order, for the one task that follows the call.

    The backend's sink hands each event over directly (``put``: appended, and the task woken if it
    is waiting); the task takes them in order (``next``), waiting at most ``limit`` seconds for one.
    What a wait costs is one future and one timer handle, and only when no event is there already;
    a time-out is a return value, not an exception. (An ``asyncio.Queue`` with an ``asyncio.timeout``
    around every ``get`` costs a queue, a timeout context and a timer per event, three times a call.)
    """

    __slots__ = ("_items", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[CallEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: CallEvent) -> None:
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, limit: float) -> CallEvent | None:
        """The next event, or None when none arrived within ``limit`` seconds."""
        items = self._items
        if not items:
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(limit, _time_up, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not items:
                return None
        return items.popleft()


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

"""The call state machine: which state may follow which, and the outcome a path implies.

One table, in one place: every change of a call's state goes through
``advance``, so an impossible sequence (connected before answered, two ends)
is caught where it happens instead of corrupting results later.
"""

from __future__ import annotations

from engine.models import AnswerKind, CallAttempt, CallState, Outcome, outcome_for_unanswered

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


class CallStateError(RuntimeError):
    """A call was asked to move to a state that cannot follow its current one."""


def advance(call: CallAttempt, state: CallState, now: float) -> None:
    if state not in TRANSITIONS[call.state]:
        raise CallStateError(f"call {call.call_id}: {call.state.value} -> {state.value} not allowed")
    call.history.append((now, state))
    call.state = state
    if state in (S.ANSWERED_HUMAN, S.ANSWERED_MACHINE):
        call.answered_at = now
    elif state == S.CONNECTED:
        call.connected_at = now
    elif state == S.ENDED:
        call.ended_at = now


def final_outcome(call: CallAttempt, last_state: CallState, cause: int, reason: str) -> Outcome:
    """The outcome implied by the state a call was in when its customer leg ended."""
    if reason == "interrupted":
        return Outcome.INTERRUPTED
    if reason == "unknown" and last_state in UNANSWERED:
        return Outcome.UNKNOWN
    if last_state in UNANSWERED:
        return outcome_for_unanswered(cause)
    if last_state == S.ABANDONED:
        return Outcome.ABANDONED
    if last_state == S.ANSWERED_MACHINE:
        return Outcome.MACHINE
    if last_state == S.ANSWERED_HUMAN:
        return Outcome.CUSTOMER_HANGUP
    if call.answer_kind == AnswerKind.MACHINE:
        return Outcome.MACHINE
    return Outcome.CONNECTED

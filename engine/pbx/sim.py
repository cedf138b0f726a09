"""The ``sim`` backend: an in-process PBX whose customers follow a behaviour model.

It speaks the same event language as the real backends, on the running loop's
clock, so under a virtual-time loop a whole shift of calls runs in seconds.
Timers are plain ``loop.call_later`` handles (no task per call), which keeps
tens of thousands of calls cheap.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from engine.models import Q850, AnswerKind, CallAttempt
from engine.pbx.base import Abandoned, Answered, CallEvent, Connected, Ended, EventSink, OptOut, PbxError, Ringing


@dataclass(slots=True)
class CallPlan:
    """What the called party will do, decided when the call is dialled.

    ``answer_after`` None means no answer: the line is released after
    ``end_after`` seconds with ``cause``.
    """

    answer_after: float | None
    machine: bool = False
    amd_verdict: AnswerKind = AnswerKind.HUMAN  # what AMD would say, when the campaign uses it
    talk: float = 0.0  # conversation once connected (a machine's greeting length when a machine)
    patience: float = 5.0  # a live person hangs up after this much silence
    cause: int = Q850.NORMAL_CLEARING
    end_after: float = 0.0
    opt_out: bool = False  # sent to the abandon message, the person presses 9 ...
    opt_out_after: float = 2.0  # ... this far into it (then hears a confirmation and hangs up)


# Enum members and the cause numbers bound once: reading ``Q850.X`` / ``AnswerKind.X`` goes through
# EnumType.__getattr__ (~70 ns), and the calls below do it several times a dial.
_NORMAL_CLEARING = int(Q850.NORMAL_CLEARING)
_NO_ANSWER = Q850.NO_ANSWER
_UNKNOWN = AnswerKind.UNKNOWN


class Behaviour(Protocol):
    def plan(self, call: CallAttempt, ring_timeout: float) -> CallPlan:
        """Decide how this dial will go."""


@dataclass(slots=True)
class _Call:
    call: CallAttempt
    plan: CallPlan
    state: str = "ringing"  # ringing | answered | connected | message | optout | gone
    timer: asyncio.TimerHandle | None = None
    agent_id: str | None = None


class SimBackend:
    """In-process PBX. ``amd`` tells whether answers are classified (else reported UNKNOWN)."""

    name = "sim"

    def __init__(self, behaviour: Behaviour, *, amd: bool = False, abandon_message_s: float = 6.0,
                 optout_message_s: float = 3.0) -> None:
        self.behaviour = behaviour
        self.amd = amd
        self.abandon_message_s = abandon_message_s
        self.optout_message_s = optout_message_s  # the "you will not be called again" confirmation
        self.opt_outs = 0
        self._sink: EventSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[str, _Call] = {}
        self.agents: set[str] = set()
        self.originated = 0
        self.abandon_messages = 0
        self._talked: dict[str, CallPlan] = {}  # plans of connected calls, until truth() takes them

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        for c in self._calls.values():
            if c.timer is not None:
                c.timer.cancel()
        self._calls.clear()
        self._sink = None

    def truth(self, call_id: str) -> CallPlan | None:
        """The plan behind a connected call, for simulated agents (who can hear a machine); once."""
        c = self._calls.get(call_id)
        return c.plan if c else self._talked.pop(call_id, None)

    # -- commands ------------------------------------------------------------------------

    async def originate(self, call: CallAttempt, *, ring_timeout: float, caller_id: str) -> None:
        if self._loop is None:
            raise PbxError("sim backend not started")
        plan = self.behaviour.plan(call, ring_timeout)
        c = _Call(call, plan)
        self._calls[call.call_id] = c
        self.originated += 1
        if self._sink is not None:  # self._emit inlined here, in _answer and in _end: three events a dial
            self._sink(Ringing(call.call_id))
        answer_after = plan.answer_after
        if answer_after is not None and answer_after < ring_timeout:
            c.timer = self._loop.call_later(answer_after, self._answer, c)
        else:
            end_after = ring_timeout if answer_after is not None else min(plan.end_after, ring_timeout)
            cause = _NO_ANSWER if answer_after is not None else plan.cause
            c.timer = self._loop.call_later(end_after, self._end, c, int(cause), _reason(cause))

    async def connect(self, call_id: str, agent_id: str) -> None:
        c = self._live(call_id)
        if c.state != "answered":
            raise PbxError(f"call {call_id} cannot be connected in state {c.state}")
        if agent_id not in self.agents:
            raise PbxError(f"agent {agent_id} has no session")
        self._cancel(c)
        c.state, c.agent_id = "connected", agent_id
        self._emit(Connected(call_id, agent_id))
        assert self._loop is not None
        c.timer = self._loop.call_later(c.plan.talk, self._end, c, _NORMAL_CLEARING, "normal")

    async def abandon(self, call_id: str) -> None:
        c = self._live(call_id)
        self._cancel(c)
        c.state = "message"
        self.abandon_messages += 1
        self._emit(Abandoned(call_id))
        assert self._loop is not None
        if c.plan.opt_out and not c.plan.machine:  # as dialer-abandon does: a 9 read during the message
            c.timer = self._loop.call_later(min(c.plan.opt_out_after, self.abandon_message_s), self._opt_out, c)
            return
        c.timer = self._loop.call_later(self.abandon_message_s, self._end, c, _NORMAL_CLEARING,
                                        "normal")

    def _opt_out(self, c: _Call) -> None:
        """The person pressed 9: OptOut at once (the engine puts the number on DNC), then the
        confirmation plays and the line is released, as in ``dialer-optout``."""
        if c.state != "message":
            return
        c.state = "optout"
        self.opt_outs += 1
        self._emit(OptOut(c.call.call_id))
        assert self._loop is not None
        c.timer = self._loop.call_later(self.optout_message_s, self._end, c, _NORMAL_CLEARING, "normal")

    async def hangup(self, call_id: str) -> None:
        c = self._calls.get(call_id)
        if c is None or c.state == "gone":
            return
        self._cancel(c)
        assert self._loop is not None
        c.timer = self._loop.call_soon(self._end, c, _NORMAL_CLEARING, "normal")  # type: ignore[assignment]

    async def agent_login(self, agent_id: str) -> None:
        self.agents.add(agent_id)

    async def agent_logout(self, agent_id: str) -> None:
        self.agents.discard(agent_id)

    # -- the called party ----------------------------------------------------------------

    def _answer(self, c: _Call) -> None:
        c.state = "answered"
        plan = c.plan
        if self._sink is not None:
            self._sink(Answered(c.call.call_id, plan.amd_verdict if self.amd else _UNKNOWN))
        assert self._loop is not None
        # A person waits a little in silence; a machine plays its greeting and hangs up.
        wait = plan.talk if plan.machine else plan.patience
        c.timer = self._loop.call_later(wait, self._end, c, _NORMAL_CLEARING, "normal")

    def _end(self, c: _Call, cause: int, reason: str) -> None:
        if c.state == "gone":
            return
        call_id = c.call.call_id
        if c.state == "connected":
            self._talked[call_id] = c.plan
        c.state = "gone"
        c.timer = None
        self._calls.pop(call_id, None)
        if self._sink is not None:
            self._sink(Ended(call_id, cause, reason))

    def _live(self, call_id: str) -> _Call:
        c = self._calls.get(call_id)
        if c is None or c.state == "gone":
            raise PbxError(f"call {call_id} is gone")
        return c

    @staticmethod
    def _cancel(c: _Call) -> None:
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None

    def _emit(self, ev: CallEvent) -> None:
        if self._sink is not None:
            self._sink(ev)


_REASONS = {
    Q850.USER_BUSY: "busy",
    Q850.NO_ANSWER: "no_answer",
    Q850.CONGESTION: "congestion",
    Q850.UNALLOCATED: "invalid",
    Q850.CALL_REJECTED: "rejected",
}


def _reason(cause: int) -> str:
    return _REASONS.get(cause, "failed")

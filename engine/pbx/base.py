"""The one interface every PBX backend implements, and the call events it emits.

A backend translates: it turns engine commands (originate, connect, abandon,
hang up) into PBX actions, and PBX traffic into the handful of call events
below. It holds no campaign logic: which lead, which agent and whether to
abandon are decided by the dialer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine.models import AnswerKind, CallAttempt


@dataclass(frozen=True, slots=True)
class Ringing:
    """The far end is alerting."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Answered:
    """The far end picked up; ``kind`` is AMD's verdict (UNKNOWN when AMD is off)."""

    call_id: str
    kind: AnswerKind


@dataclass(frozen=True, slots=True)
class Connected:
    """The customer leg is bridged to the agent."""

    call_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The recorded abandon message is being played to the customer."""

    call_id: str


@dataclass(frozen=True, slots=True)
class OptOut:
    """During the abandon message the called party asked never to be called again (pressed 9).

    Its own event, not a disposition: no agent ever spoke to this person, and the request must
    bind every campaign and node at once, before the call has even ended."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The customer leg is gone. ``cause`` is Q.850; ``reason`` is the backend's plain word
    for it (``busy``, ``no_answer``, ``congestion``, ``failed``, ``normal``, ``unknown``)."""

    call_id: str
    cause: int
    reason: str


CallEvent = Ringing | Answered | Connected | Abandoned | OptOut | Ended


@dataclass(frozen=True, slots=True)
class AgentSession:
    """An agent's PBX session (the phone line kept up between calls) is gone (``up`` False) or back.

    Not a call event: it has no call id, and tells the engine that a connect to this agent would
    fail, so the agent must get no call until the session is back. Backends without sessions that
    can fail (``sim``) never send it."""

    agent_id: str
    up: bool


@dataclass(frozen=True, slots=True)
class PbxFailed:
    """The backend can place and follow no call any more, and will not recover by itself (every
    server refused our login on a reconnect: a secret changed on the PBX only). The engine stops the
    run and reports why, instead of waiting for events that cannot come or spending leads on dials
    that cannot be placed. Never sent for a connection that may come back (that is reconnected)."""

    reason: str


PbxEvent = CallEvent | AgentSession | PbxFailed
EventSink = Callable[[PbxEvent], None]


class PbxError(Exception):
    """A PBX action failed or timed out; the attempt it concerned ends as FAILED."""


class PbxAuthError(PbxError):
    """The PBX refused our credentials: retrying cannot help, the engine must stop."""


@runtime_checkable
class PbxBackend(Protocol):
    """What the dialer needs from a PBX.

    Every method returns once the PBX has *accepted* the command, never when the
    call has progressed: outcomes arrive later through the event sink, in the
    order the PBX produced them. Every network wait inside has a timeout.
    """

    async def start(self, sink: EventSink) -> None:
        """Connect (log in) and deliver every call event to ``sink`` from now on.

        ``sink`` is synchronous and must not raise; backends call it from their
        read loop. It receives call events and, from backends with agent sessions,
        :class:`AgentSession` changes. Raises ``PbxAuthError`` on refused credentials.
        """

    async def close(self) -> None:
        """Stop delivering events and release connections."""

    async def originate(self, call: CallAttempt, *, ring_timeout: float, caller_id: str) -> None:
        """Start dialling ``call.lead.phone``; correlate every later event by ``call.call_id``."""

    async def connect(self, call_id: str, agent_id: str) -> None:
        """Bridge an answered customer to an agent whose session is up."""

    async def abandon(self, call_id: str) -> None:
        """Play the recorded abandon message to an answered customer, then hang up."""

    async def hangup(self, call_id: str) -> None:
        """Hang up the customer leg (machine drop, shutdown, cancel while ringing)."""

    async def agent_login(self, agent_id: str) -> None:
        """Bring up the agent's session so that a later connect is immediate."""

    async def agent_logout(self, agent_id: str) -> None:
        """Tear down the agent's session."""

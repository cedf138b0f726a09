"""The nouns of the dialer: leads, agents, call attempts, outcomes.

These are plain slotted dataclasses with no behaviour beyond small derived
properties: every layer (store, PBX backend, pacer, hooks) passes them around,
so they must stay cheap to create and free of I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

_T = TypeVar("_T")


def slot_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that stores each field through its slot's
    descriptor rather than through ``object.__setattr__`` (what ``dataclasses`` writes for a frozen
    class, to get past its ``__setattr__`` that refuses): 40 % less per instance, for the few made on
    every dial (a call's result, its dial context, a pacing snapshot). Same parameters and defaults,
    same object. A class whose ``__init__`` does more (a default factory, ``__post_init__``,
    keyword-only or ``init=False`` fields) keeps the one ``dataclasses`` wrote. Apply it above
    ``@dataclass``."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if (not cls.__dataclass_params__.frozen or hasattr(cls, "__post_init__")  # type: ignore[attr-defined]
            or any(not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING for f in fields)
            or any(not isinstance(cls.__dict__.get(f.name), types.MemberDescriptorType) for f in fields)):
        return cls
    names = [f.name for f in fields]
    scope: dict[str, Any] = {f"_set_{n}": cls.__dict__[n].__set__ for n in names}
    scope.update({f"_default_{f.name}": f.default for f in fields if f.default is not dataclasses.MISSING})
    params = ", ".join(f.name if f.default is dataclasses.MISSING else f"{f.name}=_default_{f.name}" for f in fields)
    body = "".join(f"\n    _set_{n}(self, {n})" for n in names)
    exec(f"def __init__(self, {params}):{body}", scope)  # the code is made of the class's own field names
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = dict(getattr(cls.__init__, "__annotations__", {}))
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[misc]
    return cls


class _Enum(enum.Enum):
    """``enum.Enum`` hashed in C: by identity, which is what its equality already is (members are
    singletons). ``enum.Enum.__hash__`` is a Python function (the name's hash), and these enums key the
    agent pool's tables and fill the sets the call path asks about, a dozen times per dial."""

    __hash__ = object.__hash__


class AgentState(_Enum):
    """Where an agent is in their working cycle; the pacer counts agents per state."""

    LOGGED_OUT = "logged_out"
    READY = "ready"
    PREVIEWING = "previewing"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"
    PAUSED = "paused"


class CallState(_Enum):
    """The states one dial attempt moves through (see ``engine.calls`` for the transitions)."""

    RESERVED = "reserved"
    ORIGINATING = "originating"
    RINGING = "ringing"
    ANSWERED_HUMAN = "answered_human"
    ANSWERED_MACHINE = "answered_machine"
    CONNECTED = "connected"
    ABANDONED = "abandoned"
    ENDED = "ended"


class AnswerKind(_Enum):
    """Who picked up, as far as AMD (or its absence) can tell."""

    HUMAN = "human"
    MACHINE = "machine"
    UNKNOWN = "unknown"  # AMD off or not sure: treated as a live answer (fail safe)


class Outcome(_Enum):
    """How an attempt ended, from the dialer's point of view; drives retries and reports."""

    CONNECTED = "connected"  # live answer talked to an agent
    ABANDONED = "abandoned"  # live answer not connected within the connect limit
    MACHINE = "machine"  # answering machine (dropped by AMD or found by the agent)
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    FAILED = "failed"  # network or PBX failure, retryable
    INVALID_NUMBER = "invalid_number"  # unallocated / changed / invalid format: never again
    REJECTED = "rejected"  # called party rejected the call
    CUSTOMER_HANGUP = "customer_hangup"  # live answer hung up before the connect limit
    INTERRUPTED = "interrupted"  # engine stopped while the call was in flight
    CANCELLED = "cancelled"  # the agent who accepted a preview called it off while it rang (agent API)
    UNKNOWN = "unknown"  # lost track (e.g. PBX restarted); never redialled blindly

    @property
    def live(self) -> bool:
        """A live answer: counts in the abandon-rate denominator."""
        return self in _LIVE


_LIVE = frozenset({Outcome.CONNECTED, Outcome.ABANDONED, Outcome.CUSTOMER_HANGUP})


class Q850(enum.IntEnum):
    """Hangup causes the engine distinguishes (ITU-T Q.850)."""

    UNALLOCATED = 1
    NORMAL_CLEARING = 16
    USER_BUSY = 17
    NO_USER_RESPONSE = 18
    NO_ANSWER = 19
    CALL_REJECTED = 21
    NUMBER_CHANGED = 22
    INVALID_NUMBER_FORMAT = 28
    NORMAL_UNSPECIFIED = 31
    CONGESTION = 34
    NETWORK_OUT_OF_ORDER = 38
    TEMPORARY_FAILURE = 41
    SWITCH_CONGESTION = 42


def outcome_for_unanswered(cause: int) -> Outcome:
    """Map the hangup cause of a call that was never answered to an outcome."""
    if cause == Q850.USER_BUSY:
        return Outcome.BUSY
    if cause in (Q850.NO_ANSWER, Q850.NO_USER_RESPONSE):
        return Outcome.NO_ANSWER
    if cause in (Q850.CONGESTION, Q850.SWITCH_CONGESTION):
        return Outcome.CONGESTION
    if cause in (Q850.UNALLOCATED, Q850.NUMBER_CHANGED, Q850.INVALID_NUMBER_FORMAT):
        return Outcome.INVALID_NUMBER
    if cause == Q850.CALL_REJECTED:
        return Outcome.REJECTED
    return Outcome.FAILED


PREFERRED_AGENT_ATTR = "follow_up_agent"


@dataclass(slots=True)
class Lead:
    """A person to call for one campaign.

    ``phone`` is E.164. The store never keys anything by it (see ``engine.pii``);
    it is only needed at dial time.
    """

    lead_id: str
    campaign_id: str
    phone: str
    tier: int = 1  # 0 = highest intent; lower tiers are dialled first
    score: float = 0.0  # ordering within a tier: higher first
    timezone: str | None = None  # IANA zone of the called party, when known
    tags: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    consent_source: str | None = None
    consent_expires: datetime | None = None
    attempts: int = 0
    next_eligible: float = 0.0  # POSIX seconds (wall clock) before which it is not handed out
    status: str = "pending"  # pending | leased | in_call | done

    @property
    def preferred_agent(self) -> str | None:
        """The agent this lead should reach when they are free (a follow-up agreed with them: the
        ``follow_up_agent`` attribute, set by the follow-ups plugin for ``same_agent`` dispositions)."""
        agent = self.attributes.get(PREFERRED_AGENT_ATTR)
        return str(agent) if agent else None


@dataclass(slots=True)
class Agent:
    """A person taking calls; state changes are timestamped in loop time."""

    agent_id: str
    state: AgentState = AgentState.LOGGED_OUT
    since: float = 0.0  # loop time of the last state change
    skills: tuple[str, ...] = ()
    call_id: str | None = None
    talk_time: float = 0.0
    wrap_time: float = 0.0
    logged_in_time: float = 0.0
    calls: int = 0


@dataclass(frozen=True, slots=True)
class Alert:
    """Something the agent must know before speaking to this person."""

    code: str
    message: str
    severity: str = "info"  # info | warning | high
    avoid_phrases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Veto:
    """A compliance plugin's refusal to dial: the rule that fired and why."""

    rule: str
    reason: str
    retry_at: float | None = None  # wall-clock POSIX time when the lead may be tried again; None = never


@dataclass(slots=True)
class CallAttempt:
    """One dial of one lead: the unit the call state machine, the PBX and the store track."""

    call_id: str
    lead: Lead
    campaign_id: str
    attempt_no: int
    state: CallState = CallState.RESERVED
    created_at: float = 0.0  # loop time
    dialed_at: float | None = None
    answered_at: float | None = None
    connected_at: float | None = None
    ended_at: float | None = None
    answer_kind: AnswerKind | None = None
    agent_id: str | None = None
    outcome: Outcome | None = None
    cause: int | None = None
    disposition: str | None = None
    alerts: tuple[Alert, ...] = ()
    wall_started: datetime | None = None  # wall-clock date of the dial, for reports
    lead_history: tuple[dict[str, Any], ...] = ()  # earlier results of this lead, for the screen-pop
    history: list[tuple[float, CallState]] = field(default_factory=list)


@slot_init
@dataclass(frozen=True, slots=True)
class CallResult:
    """What is appended to the results once an attempt is over; one row in the CSV/JSONL."""

    call_id: str
    campaign_id: str
    lead_id: str
    attempt_no: int
    outcome: Outcome
    cause: int | None
    disposition: str | None
    agent_id: str | None
    answer_kind: str | None
    started: str  # ISO wall-clock date of the dial
    ring_s: float | None
    wait_s: float | None  # answer to agent connect (or to abandon)
    talk_s: float | None
    phone_masked: str
    tier: int = 1
    customer_type: str | None = None
    follow_up: bool = False  # this attempt was a follow-up task coming due
    local_hour: int | None = None  # hour of the dial in the called party's time zone (best time to call)

    def as_row(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "campaign_id": self.campaign_id,
            "lead_id": self.lead_id,
            "attempt_no": self.attempt_no,
            "outcome": self.outcome._value_,  # ``.value`` less its Python-level descriptor (a row per call)
            "cause": self.cause,
            "disposition": self.disposition,
            "agent_id": self.agent_id,
            "answer_kind": self.answer_kind,
            "started": self.started,
            "ring_s": self.ring_s,
            "wait_s": self.wait_s,
            "talk_s": self.talk_s,
            "phone": self.phone_masked,
            "tier": self.tier,
            "customer_type": self.customer_type,
            "follow_up": self.follow_up,
            "local_hour": self.local_hour,
        }


def mask_phone(phone: str) -> str:
    """Keep only what a log or a report needs to tell numbers apart: country code and last 2 digits."""
    if len(phone) <= 5:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 5) + phone[-2:]

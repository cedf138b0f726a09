"""An asyncio TCP server that speaks AMI the way Asterisk 22 does, for load and fault tests.

It reproduces, frame for frame where the dialer depends on it, what was
captured from a real Asterisk 22.10.1 (``tests/fixtures/ami``): the banner, the
login exchange (and the socket closed on a wrong secret), ``Permission denied``
before login, malformed-request errors, async Originate answered with
``Originate successfully queued`` and then the ``Local`` ``;1``/``;2`` event
sequence of each outcome with the OriginateResponse at the position Asterisk
puts it (busy: before the hangups, no answer: between, cancel: after),
Redirect, Bridge, Hangup, Getvar/Setvar, CoreShowChannels, UserEvent, Logoff.

It also plays the dialplan shipped in ``asterisk/extensions.conf`` so the whole
backend can run against it: the customer context (AMD when ``DIALER_AMD=1``,
then waiting for the engine), the agent holding context (agent phones answer
at once and stay up between calls) and the abandon context (UserEvent, message,
hang up).

What each dialled number does is decided by a pluggable ``plan(number,
variables) -> CallPlan``; :func:`default_plan` follows the captured test
context (last digit 6: rings 25 s then no answer, 7: rings until the Originate
timeout, 8: busy, 9: congestion, 4: an answering machine, otherwise a person
answering after ``RINGTIME`` s who talks ``TALKTIME`` s), so a test knows each
number's fate; :class:`ScenarioPlan` draws each call from a campaign's
``[simulation.customers]`` behaviour model instead (seeded, per number), so a
load test against the emulator meets the same customers as the simulator.
A person sent to the abandon message may press 9 (``CallPlan.opt_out``): the
emulator then plays ``dialer-optout`` and raises ``UserEvent DialerOptOut``.

What happened to each call from the PBX's side (originates per call id,
abandon messages played, opt-outs, bridges) is kept in :class:`Journal`, which
``dialer pbx-emulator --record FILE`` writes on exit, so a test can check the
engine's results against what the customers actually heard.

Scale: every delay is one ``loop.call_later`` handle (no task per call or per
event) and each event is formatted once for all sessions, so thousands of
concurrent calls stay cheap. Faults are injected with :meth:`AmiEmulator.drop_connections`,
:meth:`AmiEmulator.set_silent`, :meth:`AmiEmulator.send_malformed`,
:meth:`AmiEmulator.restart`, ``drop_on_originate`` (lose the next acknowledgements) and
``ping_refused`` (answer Ping with an Error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import json
import math
import os
import random
import re
import secrets
import signal
import time
import typing
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from engine.models import mask_phone
from engine.pbx.ami.protocol import AmiProtocol, Message, RemoteProtocolError, drain, format_banner, format_frame

if TYPE_CHECKING:
    from engine.config import CustomerModel
    from simulations.model import Draw

log = structlog.get_logger(__name__)

Outcome = Literal["answer", "busy", "congestion", "noanswer", "failed"]
STATE_NUM = {"Down": 0, "Ring": 4, "Ringing": 5, "Up": 6, "Busy": 7}
CAUSE_TXT = {0: "Unknown", 16: "Normal Clearing", 17: "User busy", 19: "User alerting, no answer",
             34: "Circuit/channel congestion", 21: "Call Rejected", 1: "Unallocated (unassigned) number",
             41: "Temporary failure"}
KNOWN_TECH = ("Local", "PJSIP", "SIP", "IAX2", "DAHDI")


@dataclass(slots=True)
class CallPlan:
    """What one dialled party does.

    ``answer_after``: ring time before the answer (``answer``) or before the far
    end gives up with cause 19 (``noanswer``; ``inf`` = until the Originate
    timeout). ``talk``: conversation once bridged to an agent (for a machine,
    the greeting played after the answer). ``patience``: a person left in
    silence hangs up after this long. ``opt_out``: sent to the abandon message,
    the person presses 9 ``opt_out_after`` seconds into it. ``cause``: for
    ``failed``, the Q.850 cause on the far leg (0: refused before any channel
    existed, as for a missing context; 1: unallocated number; 41: temporary failure).
    """

    outcome: Outcome = "answer"
    answer_after: float = 2.0
    machine: bool = False
    talk: float = 6.0
    patience: float = 10.0
    amd_after: float = 0.8
    amd_status: str | None = None  # override AMD's verdict (e.g. NOTSURE); default from ``machine``
    fail_after: float = 0.005  # busy / congestion / failed signalled this long after the dial
    opt_out: bool = False
    opt_out_after: float = 2.0
    cause: int = 0


PlanFn = Callable[[str, dict[str, str]], CallPlan]


def default_plan(number: str, variables: dict[str, str]) -> CallPlan:
    """The captured ``customers`` test context: the last digit decides (see the module docstring)."""
    last = number[-1:] if number else ""
    ring = _float(variables.get("RINGTIME"), 2.0)
    talk = _float(variables.get("TALKTIME"), 6.0)
    if last == "6":
        return CallPlan("noanswer", answer_after=25.0)
    if last == "7":
        return CallPlan("noanswer", answer_after=math.inf)
    if last == "8":
        return CallPlan("busy")
    if last == "9":
        return CallPlan("congestion")
    return CallPlan("answer", answer_after=ring, talk=talk, machine=last == "4")


def with_default_options(plan: PlanFn = default_plan, *, patience: float | None = None,
                         opt_out_digits: str = "") -> PlanFn:
    """``plan`` with a patience for every person and opt-outs for numbers ending in ``opt_out_digits``.

    Why: at ``--time-scale 0.1`` the default 10 s of patience becomes 1 s, shorter than the engine's
    real 2 s connect limit, so every person waiting for an agent would hang up before being
    abandoned; and a test needs to know in advance who presses 9 in the abandon message.
    """

    def planned(number: str, variables: dict[str, str]) -> CallPlan:
        p = plan(number, variables)
        if p.outcome == "answer" and not p.machine:
            if patience is not None:
                p.patience = patience
            if number[-1:] and number[-1:] in opt_out_digits:
                p.opt_out = True
        return p

    return planned


class ScenarioPlan:
    """Calls drawn from a campaign's ``[simulation.customers]`` model, as the simulator draws them.

    The answer / machine / AMD-verdict logic and the answer rate of the moment (hourly rates,
    drift, in emulator time) are :class:`simulations.model.CustomerBehaviour`'s, so one behaviour
    model serves both speeds. Each call's random numbers come from (seed, number, how many times
    this emulator has seen that number): the same number behaves the same in every run with the
    same seed, whatever order a real-time engine happens to dial in, which is what makes a run
    reproducible. A person sent to the abandon message presses 9 with ``opt_out_rate`` (as in the
    ``sim`` backend); when the model leaves it unset, a person who would refuse an agent
    (``refusal_rate``) is the one who does.
    """

    def __init__(self, model: CustomerModel, seed: int = 1, *, time_scale: float = 1.0) -> None:
        import numpy as np

        from simulations.model import CustomerBehaviour

        self.model = model
        self.seed = seed
        self.time_scale = time_scale
        self.behaviour = CustomerBehaviour(model, np.random.default_rng([seed, 0]))
        self._seen: Counter[str] = Counter()
        self._t0: float | None = None
        if model.talk_distribution == "lognormal":
            self._mu = math.log(model.talk_mean) - model.talk_sigma**2 / 2

    @classmethod
    def from_file(cls, path: str | Path, *, seed: int | None = None, time_scale: float = 1.0) -> ScenarioPlan:
        """From a campaign or scenario TOML (its ``[simulation]`` section; the defaults when it has none)."""
        from engine.config import SimulationSection, load_campaign

        sim = load_campaign(path).simulation or SimulationSection()
        return cls(sim.customers, sim.seed if seed is None else seed, time_scale=time_scale)

    def _draw(self, number: str) -> tuple[Draw, float]:
        """This dial's random numbers (the model's distributions) and one more uniform for the opt-out."""
        from simulations.model import Draw

        nth = self._seen[number]
        self._seen[number] += 1
        r = random.Random(f"{self.seed}/{number}/{nth}")
        m = self.model
        ring = r.gammavariate(m.ring_shape, m.ring_mean / m.ring_shape)
        if m.talk_distribution == "lognormal":
            talk = r.lognormvariate(self._mu, m.talk_sigma)
        else:
            talk = r.expovariate(1.0 / m.talk_mean)
        d = Draw(u=r.random(), ring=ring, v=r.random(), talk=talk, w=r.random())
        return d, r.random()

    def __call__(self, number: str, variables: dict[str, str]) -> CallPlan:
        """The plan of one dial of ``number``."""
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        d, optout_u = self._draw(number)
        m = self.model
        e0 = m.invalid_rate
        e1 = e0 + m.failed_rate
        e2 = e1 + m.busy_rate
        if d.u < e0:
            return CallPlan("failed", cause=1, fail_after=1.0 + 2.0 * d.w)
        if d.u < e1:
            return CallPlan("failed", cause=41, fail_after=1.0 + 3.0 * d.w)
        if d.u < e2:
            return CallPlan("busy", fail_after=2.0 + 4.0 * d.w)
        t = (now - self._t0) / self.time_scale if self.time_scale > 0 else 0.0
        out = self.behaviour.outcome(d, self.behaviour.answer_rate(t))
        if out is None:
            return CallPlan("noanswer", answer_after=math.inf)  # rings until the Originate timeout
        _, machine, verdict = out
        status = "MACHINE" if verdict.value == "machine" else "HUMAN"
        if machine:
            return CallPlan("answer", answer_after=d.ring, machine=True, talk=m.machine_message, amd_status=status)
        return CallPlan("answer", answer_after=d.ring, talk=d.talk, patience=m.patience, amd_status=status,
                        opt_out=optout_u < (m.refusal_rate if m.opt_out_rate is None else m.opt_out_rate))


def _float(v: str | None, default: float) -> float:
    try:
        return float(v) if v else default
    except ValueError:
        return default


@dataclass(slots=True)
class Journal:
    """What the PBX did to each call, by the engine's call id (``__DIALER_CALL``): what a test checks
    the engine's results against. Call and lead ids only, never a phone number."""

    originates: Counter[str] = field(default_factory=Counter)  # customer Originates received per call id
    leads: Counter[str] = field(default_factory=Counter)  # customer Originates per lead id
    abandon_messages: Counter[str] = field(default_factory=Counter)  # abandon message started, per call id
    opt_outs: list[str] = field(default_factory=list)  # call ids whose person pressed 9
    bridged: dict[str, str] = field(default_factory=dict)  # call id -> agent it was bridged to
    enabled: bool = True  # off in a long flood with no --record: it grows with every call

    def dialled(self, call_id: str, lead_id: str) -> None:
        if self.enabled:
            self.originates[call_id] += 1
            self.leads[lead_id] += 1

    def abandon_message(self, call_id: str) -> None:
        if self.enabled:
            self.abandon_messages[call_id] += 1

    def opt_out(self, call_id: str) -> None:
        if self.enabled:
            self.opt_outs.append(call_id)

    def bridge(self, call_id: str, agent_id: str) -> None:
        if self.enabled:
            self.bridged[call_id] = agent_id

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"originates": dict(self.originates), "leads": dict(self.leads),
                "abandon_messages": dict(self.abandon_messages), "opt_outs": list(self.opt_outs),
                "bridged": dict(self.bridged)}


@dataclass(slots=True)
class Contexts:
    """Dialplan contexts the emulator plays (names as in ``asterisk/extensions.conf``)."""

    customer: str = "dialer-customer"
    agent: str = "dialer-agent"
    abandon: str = "dialer-abandon"
    optout: str = "dialer-optout"
    # Local/<n>@<ctx> contexts that reach a (simulated) customer; any other Local context fails like
    # Local/...@nosuchcontext did on the real Asterisk.
    outbound: tuple[str, ...] = ("dialer-outbound", "dialer-test-customers", "customers", "voicecustomers")
    abandon_message_s: float = 6.0
    optout_message_s: float = 3.0


# -- channels and calls -------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Chan:
    name: str
    uid: str
    linkedid: str
    context: str
    exten: str
    priority: int = 1
    state: str = "Down"
    cid_num: str = "<unknown>"
    cid_name: str = "<unknown>"
    app: str = ""
    appdata: str = ""
    bridge: str = ""
    created: float = 0.0
    call: _Call | None = None
    agent: str | None = None  # set on agent session channels
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Call:
    plan: CallPlan
    action_id: str
    dial: str  # the Originate's Channel as sent, without options
    one: _Chan  # runs the dialplan (Context/Exten of the Originate)
    two: _Chan | None  # the Local ;2 facing the customer (None for a direct trunk channel)
    context: str
    exten: str
    timeout: float
    sync_session: _Session | None = None
    state: str = "dialing"  # dialing | up | gone
    connected: bool = False
    reported: bool = False  # OriginateResponse sent
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class _Session(asyncio.Protocol):
    """One AMI client connection."""

    def __init__(self, emu: AmiEmulator) -> None:
        self.emu = emu
        self.proto = AmiProtocol("server")
        self.transport: asyncio.Transport | None = None
        self.authed = False
        self.closing = False
        self.events = True
        self.user = ""
        self.events_sent = 0  # event frames written on this connection (the flood checks none is lost)
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport quacks like asyncio.Transport without subclassing it: no isinstance check.
        self.transport = typing.cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        self.emu._sessions.add(self)
        self.emu.connections += 1
        self.write(format_banner("11.0.0"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.emu._sessions.discard(self)
        self.emu.events_sent_closed += self.events_sent
        if self.events_sent:
            log.info("ami emulator session closed", peer=self.peer, events_sent=self.events_sent)

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        try:
            frames = drain(self.proto)
        except RemoteProtocolError:
            self.close()
            return
        for m in frames:
            if isinstance(m, Message) and not self.closing:
                self.emu._on_action(self, m)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing() and not self.emu.silent:
            self.transport.write(data)
            # Every frame starts a line; only an event frame's first line is "Event: ..." (values hold no LF).
            self.events_sent += data.count(b"\nEvent: ") + data.startswith(b"Event: ")

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class AmiEmulator:
    """The AMI-speaking PBX. ``await start()`` binds (port 0 = a free port), ``await close()`` stops."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, username: str = "dialer", secret: str = "",
                 plan: PlanFn = default_plan, contexts: Contexts | None = None, time_scale: float = 1.0,
                 full_events: bool = False, timestamp_events: bool = False) -> None:
        self.host, self.port = host, port
        # full_events: also the events the engine ignores (dialplan steps, DIAL* variables, device states,
        # caller ID updates), so an answered call costs what it costs on a real Asterisk 22 (~96 events).
        self.full_events = full_events
        # timestamp_events: manager.conf ``timestampevents = yes``: a wall-clock Timestamp on every event.
        self.timestamp_events = timestamp_events
        self.events_sent_closed = 0  # events written on connections since closed
        self.username, self._secret = username, secret
        self.plan = plan
        self.contexts = contexts or Contexts()
        self.time_scale = time_scale
        self.silent = False
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._chans: dict[str, _Chan] = {}  # by name
        self._by_uid: dict[str, _Chan] = {}
        self._bridges: dict[str, list[_Chan]] = {}
        self._seq = itertools.count()
        self._uid_seq = itertools.count()
        self._boot = int(time.time())
        self.originates: list[dict[str, str]] = []  # every Originate received (headers), for assertions
        self.journal = Journal()
        self.keep_originates = True  # a flood turns this off: thousands of header dicts are not free
        self.originate_count = 0
        self.logins = 0
        self.connections = 0
        self.drop_on_originate = 0  # fault: queue the next N Originates, then cut the link before answering
        self.ping_refused = False  # fault: answer Ping with an Error (a session the PBX no longer knows)
        self.unreachable_agents: set[str] = set()  # fault: these agents' phones ring but are never answered
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Session(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ami emulator listening", host=self.host, port=self.port)
        return self.port

    async def close(self) -> None:
        self._forget_all()
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def restart(self) -> None:
        """Crash and come back on the same port with no memory of any call (a PBX restart)."""
        await self.close()
        self._boot = int(time.time()) + next(self._seq)
        await self.start()

    # -- fault injection --------------------------------------------------------------------

    def drop_connections(self) -> None:
        """Cut every client connection at once (calls carry on, as on a real PBX)."""
        for s in list(self._sessions):
            if s.transport is not None:
                s.transport.abort()
        self._sessions.clear()

    def set_silent(self, silent: bool = True) -> None:
        """Keep connections open but send nothing more (a hung PBX or a black-holed network)."""
        self.silent = silent

    def send_malformed(self) -> None:
        """Write frames no Asterisk would send: junk lines, LF-only and partial headers."""
        self._broadcast(b"this is not a header line\r\n\r\nEvent: Broken\nno colon here\n\n:\r\n\r\n", events=False)

    def remote_hangup(self, ref: str, cause: int = 16) -> bool:
        """The far end (or the network) hangs up a channel, by name or uniqueid; False if unknown."""
        c = self._find(ref)
        if c is None:
            return False
        if c.call is not None and c.call.state != "dialing":  # with the given cause, on a single channel too
            self._customer_hangup(c.call, cause)
        else:
            self._hangup_chan(c, cause)
        return True

    @property
    def channels(self) -> list[str]:
        return list(self._chans)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    # -- output -----------------------------------------------------------------------------

    def _broadcast(self, data: bytes, events: bool = True) -> None:
        for s in self._sessions:
            if s.authed and (s.events or not events):
                s.write(data)

    def _event(self, name: str, items: Iterable[tuple[str, str]], privilege: str = "call,all") -> None:
        if self._sessions:
            if self.timestamp_events:
                self._broadcast(format_frame([("Event", name), ("Privilege", privilege),
                                              ("Timestamp", f"{time.time():.6f}"), *items]))
            else:
                self._broadcast(format_frame([("Event", name), ("Privilege", privilege), *items]))

    def _extra(self, c: _Chan, name: str, *items: tuple[str, str], privilege: str = "call,all") -> None:
        """An event only the full volume carries: the engine ignores it, but must read it."""
        self._event(name, [*self._snap(c), *items], privilege)

    def _extra_exten(self, c: _Chan, app: str, data: str = "") -> None:
        self._event("Newexten", [*self._snap(c), ("Extension", c.exten), ("Application", app), ("AppData", data)],
                    "dialplan,all")

    def _device(self, c: _Chan, state: str) -> None:
        self._event("DeviceStateChange", [("Device", c.name.rsplit("-", 1)[0]), ("State", state)])

    def stats(self, session: _Session | None = None) -> dict[str, int]:
        """Event counters: on ``session`` (the asking connection), on every connection, and calls up."""
        total = self.events_sent_closed + sum(s.events_sent for s in self._sessions)
        return {"EventsSent": session.events_sent if session is not None else total, "EventsSentTotal": total,
                "Sessions": len(self._sessions), "Channels": len(self._chans), "Originates": self.originate_count}

    @staticmethod
    def _snap(c: _Chan, prefix: str = "") -> list[tuple[str, str]]:
        return [
            (f"{prefix}Channel", c.name), (f"{prefix}ChannelState", str(STATE_NUM.get(c.state, 0))),
            (f"{prefix}ChannelStateDesc", c.state), (f"{prefix}CallerIDNum", c.cid_num),
            (f"{prefix}CallerIDName", c.cid_name), (f"{prefix}ConnectedLineNum", c.cid_num),
            (f"{prefix}ConnectedLineName", c.cid_name), (f"{prefix}Language", "en"), (f"{prefix}AccountCode", ""),
            (f"{prefix}Context", c.context), (f"{prefix}Exten", c.exten), (f"{prefix}Priority", str(c.priority)),
            (f"{prefix}Uniqueid", c.uid), (f"{prefix}Linkedid", c.linkedid),
        ]

    def _respond(self, s: _Session, m: Message, response: str, *extra: tuple[str, str]) -> None:
        items = [("Response", response)]
        if m.action_id is not None:
            items.append(("ActionID", m.action_id))
        s.write(format_frame([*items, *extra]))

    def _later(self, call: _Call | None, delay: float, fn: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        h = self._loop.call_later(max(0.0, delay * self.time_scale), fn, *args)
        if call is not None:
            call.timers.append(h)

    # -- actions ----------------------------------------------------------------------------

    def _on_action(self, s: _Session, m: Message) -> None:
        action = (m.action or "").lower()
        if not m.items or not action:
            self._respond(s, m, "Error", ("Message", "Missing action in request"))
            self._bad_format(s, "NONE")
            return
        if action == "logoff":
            self._respond(s, m, "Goodbye", ("Message", "Thanks for all the fish."))
            s.close()
            return
        if action == "login":
            self._login(s, m)
            return
        if not s.authed:
            self._respond(s, m, "Error", ("Message", "Permission denied"))
            return
        handler = self._actions.get(action)
        if handler is None:
            self._respond(s, m, "Error", ("Message", f"Invalid/unknown command: {m.action}. Use Action: "
                                                      "ListCommands to show available commands."))
            self._bad_format(s, m.action or "")
            return
        handler(self, s, m)

    def _bad_format(self, s: _Session, what: str) -> None:
        if s.authed:
            s.write(format_frame([("Event", "RequestBadFormat"), ("Privilege", "security,all"),
                                  ("Severity", "Error"), ("Service", "AMI"), ("EventVersion", "1"),
                                  ("RequestType", f"Action: {what}"), ("AccountID", s.user)]))

    def _login(self, s: _Session, m: Message) -> None:
        if m.get("Username") != self.username or m.get("Secret") != self._secret:
            self._respond(s, m, "Error", ("Message", "Authentication failed"))
            log.info("ami emulator login refused")
            s.close()  # as Asterisk does: nothing more is read or answered on this socket
            return
        s.authed, s.user = True, self.username
        s.events = (m.get("Events") or "on").lower() != "off"
        self.logins += 1
        self._respond(s, m, "Success", ("Message", "Authentication accepted"))
        up = str(int(time.time()) - self._boot)
        s.write(format_frame([("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", up),
                              ("LastReload", up), ("Status", "Fully Booted")]))
        s.write(format_frame([("Event", "SuccessfulAuth"), ("Privilege", "security,all"),
                              ("Severity", "Informational"), ("Service", "AMI"), ("EventVersion", "1"),
                              ("AccountID", self.username), ("UsingPassword", "0")]))

    def _stats_action(self, s: _Session, m: Message) -> None:
        """``Action: DialerEmulatorStats`` (emulator only): how many events this connection was sent so far.

        Answered in order with the events, so a client that counts the events it read before this response
        must find exactly ``EventsSent``: the flood's proof that no event was lost."""
        self._respond(s, m, "Success", *((k, str(v)) for k, v in self.stats(s).items()))

    def _ping(self, s: _Session, m: Message) -> None:
        if self.ping_refused:
            self._respond(s, m, "Error", ("Message", "Permission denied"))
            return
        self._respond(s, m, "Success", ("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}"))

    def _events_action(self, s: _Session, m: Message) -> None:
        s.events = (m.get("EventMask") or "on").lower() != "off"
        self._respond(s, m, "Success")

    def _find(self, ref: str | None) -> _Chan | None:
        if not ref:
            return None
        return self._chans.get(ref) or self._by_uid.get(ref)

    def _getvar(self, s: _Session, m: Message) -> None:
        var = m.get("Variable") or ""
        if m.get("Channel"):
            c = self._find(m.get("Channel"))
            if c is None:
                self._respond(s, m, "Error", ("Message", "No such channel"))
                return
            value = c.variables.get(var, c.variables.get("__" + var, ""))
        else:
            value = ""
        self._respond(s, m, "Success", ("Variable", var), ("Value", value))

    def _setvar(self, s: _Session, m: Message) -> None:
        c = self._find(m.get("Channel"))
        if m.get("Channel") and c is None:
            self._respond(s, m, "Error", ("Message", "No such channel"))
            return
        if c is not None:
            c.variables[m.get("Variable") or ""] = m.get("Value") or ""
        self._respond(s, m, "Success", ("Message", "Variable Set"))

    def _user_event(self, s: _Session, m: Message) -> None:
        self._respond(s, m, "Success", ("Message", "Event Sent"))
        items = [(k, v) for k, v in m.items if k not in ("Action", "ActionID")]
        self._event("UserEvent", items, "user,all")

    def _core_show_channels(self, s: _Session, m: Message) -> None:
        aid = m.action_id or ""
        self._respond(s, m, "Success", ("EventList", "start"), ("Message", "Channels will follow"))
        now = time.monotonic()
        chans = list(self._chans.values())
        out = bytearray()
        for c in chans:
            snap = self._snap(c)
            dur = int(now - c.created)
            out += format_frame([("Event", "CoreShowChannel"), ("ActionID", aid), *snap, ("Application", c.app),
                                 ("ApplicationData", c.appdata),
                                 ("Duration", f"{dur // 3600:02d}:{dur // 60 % 60:02d}:{dur % 60:02d}"),
                                 ("BridgeId", c.bridge)])
        out += format_frame([("Event", "CoreShowChannelsComplete"), ("ActionID", aid), ("EventList", "Complete"),
                             ("ListItems", str(len(chans)))])
        s.write(bytes(out))

    def _hangup_action(self, s: _Session, m: Message) -> None:
        ref = m.get("Channel") or ""
        cause = int(m.get("Cause") or 16) if (m.get("Cause") or "16").isdigit() else 16
        if len(ref) > 1 and ref.startswith("/") and ref.endswith("/"):
            rx = re.compile(ref[1:-1])
            hits = [c for c in self._chans.values() if rx.search(c.name)]
            self._respond(s, m, "Success", ("EventList", "start"), ("Message", "Channels hung up will follow"))
            for c in hits:
                s.write(format_frame([("Event", "ChannelHungup"), ("Channel", c.name),
                                      ("ActionID", m.action_id or "")]))
            s.write(format_frame([("Event", "ChannelsHungupListComplete"), ("ActionID", m.action_id or ""),
                                  ("EventList", "Complete"), ("ListItems", str(len(hits)))]))
        else:
            c = self._find(ref)
            if c is None:
                self._respond(s, m, "Error", ("Message", "No such channel"))
                return
            self._respond(s, m, "Success", ("Message", "Channel Hungup"))
            hits = [c]
        for c in hits:
            self._hangup_chan(c, cause)

    def _redirect(self, s: _Session, m: Message) -> None:
        c = self._find(m.get("Channel"))
        if c is None:
            self._respond(s, m, "Error", ("Message", "No such channel"))
            return
        ctx, exten = m.get("Context") or "", m.get("Exten") or "s"
        self._respond(s, m, "Success", ("Message", "Redirect successful"))
        self._leave_bridge(c)
        self._goto(c, ctx, exten)

    def _bridge_action(self, s: _Session, m: Message) -> None:
        a, b = self._find(m.get("Channel1")), self._find(m.get("Channel2"))
        if a is None or b is None:
            self._respond(s, m, "Error", ("Message", f"Channel{1 if a is None else 2} does not exist: "
                                                      f"{m.get('Channel1') if a is None else m.get('Channel2')}"))
            return
        self._respond(s, m, "Success", ("Message", "Channels have been bridged"))
        self._leave_bridge(a)
        self._leave_bridge(b)
        bid = str(uuid.uuid4())
        self._bridges[bid] = []
        binfo = [("BridgeUniqueid", bid), ("BridgeType", "basic"), ("BridgeTechnology", "simple_bridge"),
                 ("BridgeCreator", "<unknown>"), ("BridgeName", "<unknown>")]
        self._event("BridgeCreate", [*binfo, ("BridgeNumChannels", "0"), ("BridgeVideoSourceMode", "none")])
        for n, c in enumerate((b, a), 1):
            c.bridge = bid
            c.app, c.appdata = "Bridge", ""
            self._bridges[bid].append(c)
            self._event("BridgeEnter", [*binfo, ("BridgeNumChannels", str(n)), ("BridgeVideoSourceMode", "none"),
                                        *self._snap(c)])
        for c, other in ((a, b), (b, a)):
            call = c.call
            if call is not None and c is call.one and other.agent is not None:
                self.journal.bridge(_var(c, "DIALER_CALL") or c.uid, other.agent)
            if call is not None and c is call.one and call.state == "up" and not call.connected:
                call.connected = True
                if self.full_events and c.agent is None:
                    self._full_bridge(call, b if c is a else a)
                self._cancel(call)
                self._later(call, call.plan.talk, self._customer_hangup, call, 16)

    def _originate(self, s: _Session, m: Message) -> None:
        channel = m.get("Channel")
        if not channel:
            self._respond(s, m, "Error", ("Message", "Channel not specified"))
            return
        if "/" not in channel:
            self._respond(s, m, "Error", ("Message", "Invalid channel"))
            return
        timeout_s = m.get("Timeout") or "30000"
        if not timeout_s.isdigit():
            self._respond(s, m, "Error", ("Message", "Invalid timeout"))
            return
        self.originate_count += 1
        if self.keep_originates:
            self.originates.append(dict(m.headers))
        tech = channel.split("/", 1)[0]
        is_async = (m.get("Async") or "false").lower() in ("true", "yes", "1", "on")
        if tech not in KNOWN_TECH:
            if not is_async:
                self._respond(s, m, "Error", ("Message", "Originate failed"))
                return
            self._respond(s, m, "Success", ("Message", "Originate successfully queued"))
            self._originate_response(m.action_id or "", "Failure", channel, m.get("Context") or "",
                                     m.get("Exten") or "", 0, "<unknown>", "<unknown>", "<unknown>")
            return
        assert self._loop is not None
        if self.drop_on_originate > 0:
            self.drop_on_originate -= 1
            self._loop.call_soon(self._start_call, m, None)
            s.closing = True
            if s.transport is not None:
                s.transport.abort()  # the acknowledgement is lost; the call goes ahead regardless
            return
        if is_async:
            self._respond(s, m, "Success", ("Message", "Originate successfully queued"))
        self._loop.call_soon(self._start_call, m, s if not is_async else None)

    def _originate_response(self, aid: str, response: str, channel: str, context: str, exten: str,
                            reason: int, uid: str, cid_num: str, cid_name: str) -> None:
        self._event("OriginateResponse", [("ActionID", aid), ("Response", response), ("Channel", channel),
                                          ("Context", context), ("Exten", exten), ("Reason", str(reason)),
                                          ("Uniqueid", uid), ("CallerIDNum", cid_num), ("CallerIDName", cid_name)])

    _actions: dict[str, Callable[[AmiEmulator, _Session, Message], None]] = {}

    # -- a call's life ---------------------------------------------------------------------

    def _new_uid(self) -> str:
        return f"{self._boot}.{next(self._uid_seq)}"

    def _start_call(self, m: Message, sync: _Session | None) -> None:
        channel = m.get("Channel") or ""
        dial = channel
        tech, _, rest = channel.partition("/")
        variables: dict[str, str] = {}
        for v in m.get_all("Variable"):
            for part in v.split(","):
                k, _, val = part.partition("=")
                if k:
                    variables[k] = val
        cid_name, cid_num = _parse_callerid(m.get("CallerID") or "")
        context, exten = m.get("Context") or "", m.get("Exten") or "s"
        timeout = int(m.get("Timeout") or "30000") / 1000.0
        seq = next(self._seq)
        uid1 = m.get("ChannelId") or self._new_uid()
        uid2 = m.get("OtherChannelId") or self._new_uid()
        if tech == "Local":
            target, _, _opts = rest.partition("/")
            dial = f"Local/{target}"
            number, _, lctx = target.partition("@")
            base = f"Local/{target}-{seq:08x}"
            one = _Chan(f"{base};1", uid1, uid1, lctx, number, cid_num=cid_num, cid_name=cid_name)
            two: _Chan | None = _Chan(f"{base};2", uid2, uid1, lctx, number, state="Ring", cid_num=cid_num,
                                      cid_name=cid_name)
        else:
            number = rest.split("@", 1)[0].split("/")[-1]
            host = rest.split("@", 1)[1] if "@" in rest else rest
            lctx = ""
            one = _Chan(f"{tech}/{host}-{seq:08x}", uid1, uid1, context, exten, cid_num=cid_num, cid_name=cid_name)
            two = None
        agent = context == self.contexts.agent
        plan = CallPlan("answer", answer_after=0.02, talk=math.inf) if agent else self.plan(number, variables)
        if agent and (variables.get("__DIALER_AGENT") or variables.get("DIALER_AGENT") or number) in \
                self.unreachable_agents:
            plan = CallPlan("noanswer", answer_after=math.inf)  # rings until the Originate times out
        if tech == "Local" and lctx not in self.contexts.outbound and not agent:
            plan = CallPlan("failed", fail_after=0.0)
        call = _Call(plan, m.action_id or "", dial, one, two, context, exten, timeout, sync)
        now = time.monotonic()
        for c in (one, two):
            if c is None:
                continue
            c.call, c.created = call, now
            c.variables.update(variables)
            self._chans[c.name] = c
            self._by_uid[c.uid] = c
            self._event("Newchannel", self._snap(c))
        if agent:
            one.agent = variables.get("DIALER_AGENT") or variables.get("__DIALER_AGENT") or number
        else:
            self.journal.dialled(_var(one, "DIALER_CALL") or one.uid, _var(one, "DIALER_LEAD") or "?")
        for c in (one, two):
            if c is None:
                continue
            for k, v in variables.items():
                self._event("VarSet", [*self._snap(c), ("Variable", k), ("Value", v)], "dialplan,all")
        if two is not None:
            self._event("LocalBridge", [*self._snap(one, "LocalOne"), *self._snap(two, "LocalTwo"),
                                        ("Context", lctx), ("Exten", number), ("LocalOptimization", "No")])
            self._event("DialBegin", [*self._snap(one, "Dest"), ("DialString", rest.split("/")[0])])
            if self.full_events:
                self._full_start(one, two)
        log.debug("emulated dial", number=mask_phone(number), outcome=plan.outcome)
        if plan.outcome == "failed":
            self._later(call, plan.fail_after, self._fail, call, plan.cause, 0)
        elif plan.outcome in ("busy", "congestion"):
            cause, reason = (17, 5) if plan.outcome == "busy" else (34, 8)
            self._later(call, plan.fail_after, self._fail, call, cause, reason)
        else:
            self._later(call, 0.003, self._ringing, call)
            if plan.outcome == "answer" and plan.answer_after < timeout:
                self._later(call, plan.answer_after, self._answer, call)
            elif plan.answer_after < timeout:
                self._later(call, plan.answer_after, self._no_answer, call)
            else:
                self._later(call, timeout, self._originate_timeout, call)

    def _ringing(self, call: _Call) -> None:
        if call.state != "dialing":
            return
        self._newstate(call.one, "Ringing")
        if call.two is not None:
            self._event("DialState", [*self._snap(call.one, "Dest"), ("DialStatus", "RINGING")])
            if self.full_events:
                self._extra_exten(call.two, "Wait", "2")
                self._device(call.one, "RINGING")

    # -- the full event volume (what a real Asterisk 22 adds around the events the engine reads) --------

    def _full_start(self, one: _Chan, two: _Chan) -> None:
        """After the Local pair is created: caller ID updates, the ;2 dialplan up to Ringing()."""
        for c in (one, two):
            self._extra(c, "NewCallerid", ("CID-CallingPres", "0 (Presentation Allowed, Not Screened)"))
            self._extra(c, "NewConnectedLine")
        self._extra_exten(one, "AppDial2", "(Outgoing Line)")
        self._extra_exten(two, "NoOp", f"dialer call {two.variables.get('__DIALER_CALL', '')}")
        self._extra_exten(two, "Set", f"LAST={two.exten[-1:]}")
        self._extra(two, "VarSet", ("Variable", "LAST"), ("Value", two.exten[-1:]), privilege="dialplan,all")
        self._extra_exten(two, "GotoIf", "0?busy")
        self._extra_exten(two, "Ringing")
        self._device(one, "INUSE")

    def _full_answer(self, call: _Call) -> None:
        if call.two is not None:
            self._extra_exten(call.two, "Answer")
            self._device(call.two, "INUSE")
        self._device(call.one, "INUSE")
        self._extra_exten(call.one, "NoOp", "dialer call answered")
        self._extra_exten(call.one, "GotoIf", "1?wait")

    _DIAL_VARS = ("DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "ANSWEREDTIME", "ANSWEREDTIME_MS",
                  "DIALEDTIME", "DIALEDTIME_MS", "RINGTIME", "RINGTIME_MS", "PROGRESSTIME", "PROGRESSTIME_MS")

    def _full_bridge(self, call: _Call, agent: _Chan) -> None:
        """What a Dial to an agent costs on a real Asterisk (the transcript's DIAL* variables, the agent
        leg's caller ID and device updates), around our Bridge of two channels already up."""
        c = call.one
        for k in self._DIAL_VARS:  # Dial() clears them first
            self._extra(c, "VarSet", ("Variable", k), ("Value", ""), privilege="dialplan,all")
        for k, v in (("DIALSTATUS", "ANSWER"), ("DIALEDPEERNAME", agent.name), ("DIALEDPEERNUMBER", agent.exten)):
            self._extra(c, "VarSet", ("Variable", k), ("Value", v), privilege="dialplan,all")
        for a, b in ((agent, c), (c, agent)):
            self._extra(a, "NewConnectedLine")
            self._extra(a, "NewCallerid", ("CID-CallingPres", "0 (Presentation Allowed, Not Screened)"))
            self._extra(a, "VarSet", ("Variable", "BRIDGEPEER"), ("Value", b.name), privilege="dialplan,all")
            self._extra(a, "VarSet", ("Variable", "BRIDGEPVTCALLID"), ("Value", ""), privilege="dialplan,all")
            self._device(a, "INUSE")
        self._extra_exten(agent, "AppDial", "(Outgoing Line)")
        self._extra(agent, "VarSet", ("Variable", "DIALEDPEERNUMBER"), ("Value", c.exten), privilege="dialplan,all")
        self._event("DialBegin", [*self._snap(c), *self._snap(agent, "Dest"), ("DialString", agent.name)])
        self._event("DialEnd", [*self._snap(c), *self._snap(agent, "Dest"), ("DialStatus", "ANSWER")])
        self._extra_exten(agent, "Bridge", c.name)
        self._event("QueueMemberStatus", [("Queue", "dialer"), ("MemberName", agent.name),
                                          ("Interface", agent.name.rsplit("-", 1)[0]), ("Status", "2"),
                                          ("Paused", "0"), ("InCall", "1")], "agent,all")

    def _full_hangup(self, call: _Call) -> None:
        """Before the customer's hangup: the ;2 Hangup(), the answered-call timers, BRIDGEPEER cleared."""
        c = call.one
        if call.two is not None:
            self._extra_exten(call.two, "Hangup", "16")
        for k, v in (("ANSWEREDTIME", "6"), ("ANSWEREDTIME_MS", "6508"), ("DIALEDTIME", "8"),
                     ("DIALEDTIME_MS", "8510"), ("RINGTIME", "2"), ("RINGTIME_MS", "2004"), ("PROGRESSTIME", "2"),
                     ("PROGRESSTIME_MS", "2004"), ("DIALSTATUS", "ANSWER")):
            self._extra(c, "VarSet", ("Variable", k), ("Value", v), privilege="dialplan,all")
        peers = self._bridges.get(c.bridge, [c])
        for p in peers:
            self._extra(p, "VarSet", ("Variable", "BRIDGEPEER"), ("Value", ""), privilege="dialplan,all")
            self._device(p, "NOT_INUSE")
            if p.agent is not None:
                self._extra(p, "NewConnectedLine")
                self._extra_exten(p, "Goto", "hold")
                self._event("QueueMemberStatus", [("Queue", "dialer"), ("MemberName", p.name),
                                                  ("Interface", p.name.rsplit("-", 1)[0]), ("Status", "1"),
                                                  ("Paused", "0"), ("InCall", "0")], "agent,all")
        self._extra(c, "SoftHangupRequest", ("Cause", "16"))

    def _newstate(self, c: _Chan, state: str) -> None:
        c.state = state
        self._event("Newstate", self._snap(c))

    def _report(self, call: _Call, ok: bool, reason: int) -> None:
        if call.reported:
            return
        call.reported = True
        if call.sync_session is not None:
            resp = Message((("ActionID", call.action_id),))
            if ok:
                self._respond(call.sync_session, resp, "Success", ("Message", "Originate successfully queued"))
            else:
                self._respond(call.sync_session, resp, "Error", ("Message", "Originate failed"))
        chan = call.one.name if ok else call.dial
        uid = call.one.uid if ok else "<unknown>"
        self._originate_response(call.action_id, "Success" if ok else "Failure", chan, call.context, call.exten,
                                 reason, uid, call.one.cid_num, call.one.cid_name)

    def _fail(self, call: _Call, cause: int, reason: int) -> None:
        """Busy (5/17), congestion (8/34) or failed (0/0): as captured, OriginateResponse first for busy."""
        if call.state != "dialing":
            return
        if cause == 0:
            self._hangup_event(call.two or call.one, 0)
            self._report(call, False, reason)
            self._gone(call, [call.one] if call.two is not None else [])
            return
        self._report(call, False, reason)
        if call.two is not None:
            self._newstate(call.two, "Busy")
            status = {17: "BUSY", 34: "CONGESTION"}.get(cause, "CHANUNAVAIL")
            self._event("DialEnd", [*self._snap(call.one, "Dest"), ("DialStatus", status)])
            self._event("HangupRequest", [*self._snap(call.two), ("Cause", "0")])
            self._hangup_event(call.two, cause)
            self._gone(call, [call.one], cause=0)
        else:
            self._gone(call, [call.one], cause=cause)

    def _no_answer(self, call: _Call) -> None:
        if call.state != "dialing":
            return
        if call.two is not None:
            self._event("SoftHangupRequest", [*self._snap(call.two), ("Cause", "16")])
            self._event("HangupRequest", [*self._snap(call.one), ("Cause", "19")])
            self._hangup_event(call.two, 19)
            self._event("DialEnd", [*self._snap(call.one, "Dest"), ("DialStatus", "NOANSWER")])
        self._report(call, False, 0)
        self._gone(call, [call.one], cause=19)

    def _originate_timeout(self, call: _Call) -> None:
        if call.state != "dialing":
            return
        if call.two is not None:
            self._event("HangupRequest", [*self._snap(call.two), ("Cause", "19")])
            self._hangup_event(call.two, 19)
        self._report(call, False, 3)
        self._gone(call, [call.one], cause=19)

    def _answer(self, call: _Call) -> None:
        if call.state != "dialing":
            return
        call.state = "up"
        if call.two is not None:
            self._newstate(call.two, "Up")
        self._newstate(call.one, "Up")
        if call.two is not None:
            self._event("DialEnd", [*self._snap(call.one, "Dest"), ("DialStatus", "ANSWER")])
        self._report(call, True, 4)
        if self.full_events:
            self._full_answer(call)
        self._goto(call.one, call.context, call.exten)
        plan = call.plan
        if call.one.agent is not None:
            return
        if plan.machine:
            self._later(call, plan.talk, self._customer_hangup, call, 16)
        else:
            self._later(call, plan.patience, self._customer_hangup, call, 16)

    def _goto(self, c: _Chan, context: str, exten: str) -> None:
        """Enter a dialplan context, playing what ``asterisk/extensions.conf`` does there."""
        c.context, c.exten, c.priority = context, exten, 1
        ctx = self.contexts
        call = c.call
        if context == ctx.customer and call is not None:
            amd = (c.variables.get("DIALER_AMD") or c.variables.get("__DIALER_AMD")) == "1"
            if amd:
                self._exten(c, "AMD", "")
                self._later(call, call.plan.amd_after, self._amd_result, call)
            else:
                self._exten(c, "Wait", "120")
        elif context == ctx.agent:
            self._exten(c, "Wait", "3600")
        elif context == ctx.abandon and call is not None:
            self._exten(c, "UserEvent", "DialerAbandon")
            self._event("UserEvent", [*self._snap(c), ("UserEvent", "DialerAbandon"),
                                      ("Call", c.variables.get("__DIALER_CALL", ""))], "user,all")
            self._exten(c, "Playback", "dialer/abandon")
            self.journal.abandon_message(_var(c, "DIALER_CALL") or c.uid)
            self._cancel(call)
            if call.plan.opt_out:  # Read() hears a 9 during the message: GotoIf to dialer-optout
                self._later(call, min(call.plan.opt_out_after, ctx.abandon_message_s), self._goto, c,
                            ctx.optout, "s")
            else:
                self._later(call, ctx.abandon_message_s, self._dialplan_hangup, call)
        elif context == ctx.optout and call is not None:
            if call.state == "gone":
                return
            self._exten(c, "UserEvent", "DialerOptOut")
            self._event("UserEvent", [*self._snap(c), ("UserEvent", "DialerOptOut"),
                                      ("Call", _var(c, "DIALER_CALL")), ("Lead", _var(c, "DIALER_LEAD")),
                                      ("Campaign", _var(c, "DIALER_CAMPAIGN"))], "user,all")
            self.journal.opt_out(_var(c, "DIALER_CALL") or c.uid)
            self._exten(c, "Playback", "dialer/optout-done")
            self._cancel(call)
            self._later(call, ctx.optout_message_s, self._dialplan_hangup, call)
        else:
            self._exten(c, "Wait", "120")

    def _exten(self, c: _Chan, app: str, data: str) -> None:
        c.app, c.appdata = app, data
        self._event("Newexten", [*self._snap(c), ("Extension", c.exten), ("Application", app), ("AppData", data)],
                    "dialplan,all")
        c.priority += 1

    def _amd_result(self, call: _Call) -> None:
        if call.state != "up":
            return
        c = call.one
        status = call.plan.amd_status or ("MACHINE" if call.plan.machine else "HUMAN")
        cause = {"HUMAN": "HUMAN-818-800", "MACHINE": "MAXWORDS-3-2"}.get(status, "TOOLONG-5000")
        for k, v in (("AMDSTATUS", status), ("AMDCAUSE", cause)):
            c.variables[k] = v
            self._event("VarSet", [*self._snap(c), ("Variable", k), ("Value", v)], "dialplan,all")
        self._exten(c, "UserEvent", f"AMDResult,Status: {status},Cause: {cause}")
        self._event("UserEvent", [*self._snap(c), ("UserEvent", "AMDResult"), ("Status", status), ("Cause", cause)],
                    "user,all")
        self._exten(c, "Wait", "120")

    def _customer_hangup(self, call: _Call, cause: int) -> None:
        """The far end hangs up: ``;2`` first with the true cause, then ``;1`` (as captured)."""
        if call.state == "gone":
            return
        if self.full_events and call.connected:
            self._full_hangup(call)
        if call.two is not None:
            self._event("SoftHangupRequest", [*self._snap(call.two), ("Cause", str(cause))])
            self._event("HangupRequest", [*self._snap(call.one), ("Cause", str(cause))])
            self._hangup_event(call.two, cause)
        self._gone(call, [call.one], cause=cause)

    def _dialplan_hangup(self, call: _Call) -> None:
        """Our side hangs up (abandon message done, Hangup action): ``;1`` first, then ``;2``."""
        if call.state == "gone":
            return
        self._event("SoftHangupRequest", [*self._snap(call.one), ("Cause", "16")])
        chans = [call.one] if call.two is None else [call.one, call.two]
        if call.two is not None:
            self._event("HangupRequest", [*self._snap(call.two), ("Cause", "16")])
        self._gone(call, chans, cause=16)

    def _hangup_chan(self, c: _Chan, cause: int) -> None:
        call = c.call
        if call is None:
            self._leave_bridge(c)
            self._hangup_event(c, cause)
            self._drop_chan(c)
            return
        if call.state == "dialing":
            if call.two is not None:
                self._event("DialEnd", [*self._snap(call.one, "Dest"), ("DialStatus", "NOANSWER")])
                self._event("HangupRequest", [*self._snap(call.two), ("Cause", str(cause))])
                self._hangup_event(call.two, cause)
            self._gone(call, [call.one], cause=cause, report=False)
            self._report(call, False, 0)
            return
        if c is call.two:
            self._customer_hangup(call, cause)
        else:
            self._dialplan_hangup(call)

    def _hangup_event(self, c: _Chan, cause: int) -> None:
        self._event("Hangup", [*self._snap(c), ("Cause", str(cause)), ("Cause-txt", CAUSE_TXT.get(cause, "Unknown"))])
        self._drop_chan(c)

    def _gone(self, call: _Call, chans: Sequence[_Chan], cause: int = 0, report: bool = True) -> None:
        """End a call: the remaining channels hang up; a bridged agent goes back to holding."""
        self._cancel(call)
        call.state = "gone"
        for c in chans:
            if c.name not in self._chans:
                continue
            peers = self._leave_bridge(c)
            self._hangup_event(c, cause)
            for p in peers:
                if p.agent is not None:
                    self._goto(p, self.contexts.agent, "s")
                elif p.call is not None and p.call is not call:
                    self._dialplan_hangup(p.call)
        if report and not call.reported and call.sync_session is not None:
            self._report(call, False, 0)

    def _leave_bridge(self, c: _Chan) -> list[_Chan]:
        """Take a channel out of its bridge; returns who was left behind (bridge destroyed if empty-ish)."""
        bid = c.bridge
        if not bid or bid not in self._bridges:
            c.bridge = ""
            return []
        members = self._bridges[bid]
        binfo = [("BridgeUniqueid", bid), ("BridgeType", "basic"), ("BridgeTechnology", "simple_bridge"),
                 ("BridgeCreator", "<unknown>"), ("BridgeName", "<unknown>")]
        members.remove(c)
        c.bridge = ""
        self._event("BridgeLeave", [*binfo, ("BridgeNumChannels", str(len(members))),
                                    ("BridgeVideoSourceMode", "none"), *self._snap(c)])
        left = list(members)
        for p in left:  # a two-party basic bridge: the other party leaves too
            members.remove(p)
            p.bridge = ""
            self._event("BridgeLeave", [*binfo, ("BridgeNumChannels", str(len(members))),
                                        ("BridgeVideoSourceMode", "none"), *self._snap(p)])
        del self._bridges[bid]
        self._event("BridgeDestroy", [*binfo, ("BridgeNumChannels", "0"), ("BridgeVideoSourceMode", "none")])
        return left

    def _drop_chan(self, c: _Chan) -> None:
        self._chans.pop(c.name, None)
        if self._by_uid.get(c.uid) is c:
            del self._by_uid[c.uid]

    @staticmethod
    def _cancel(call: _Call) -> None:
        for h in call.timers:
            h.cancel()
        call.timers.clear()

    def _forget_all(self) -> None:
        for c in self._chans.values():
            if c.call is not None:
                self._cancel(c.call)
        self._chans.clear()
        self._by_uid.clear()
        self._bridges.clear()


AmiEmulator._actions = {
    "ping": AmiEmulator._ping,
    "originate": AmiEmulator._originate,
    "hangup": AmiEmulator._hangup_action,
    "redirect": AmiEmulator._redirect,
    "bridge": AmiEmulator._bridge_action,
    "getvar": AmiEmulator._getvar,
    "setvar": AmiEmulator._setvar,
    "coreshowchannels": AmiEmulator._core_show_channels,
    "userevent": AmiEmulator._user_event,
    "events": AmiEmulator._events_action,
    "dialeremulatorstats": AmiEmulator._stats_action,
}


def _var(c: _Chan, name: str) -> str:
    """A channel variable as the dialplan reads it: ``NAME`` or its inherited ``__NAME``."""
    return c.variables.get(name) or c.variables.get("__" + name, "")


def _parse_callerid(text: str) -> tuple[str, str]:
    m = re.match(r'\s*"?([^"<]*)"?\s*<([^>]*)>', text)
    if m:
        return m.group(1).strip() or "<unknown>", m.group(2) or "<unknown>"
    return "<unknown>", text or "<unknown>"


# -- command line ---------------------------------------------------------------------------


@dataclass(slots=True)
class Faults:
    """Periodic faults for soak tests from the command line (seconds; 0 = never)."""

    drop_every: float = 0.0
    malformed_every: float = 0.0
    restart_every: float = 0.0
    silent_every: float = 0.0  # go silent this often ...
    silent_for: float = 15.0  # ... for this long
    new_secret_after: float = 0.0  # once: the secret changes on the PBX only, and every connection drops


async def serve(host: str, port: int, *, username: str, secret: str, time_scale: float = 1.0,
                contexts: Contexts | None = None, plan: PlanFn = default_plan, faults: Faults | None = None,
                stop: asyncio.Event | None = None, full_events: bool = False,
                timestamp_events: bool = False, record: str | Path | None = None) -> None:
    """Run an emulator until ``stop`` is set (or, without one, until SIGINT/SIGTERM), injecting the
    periodic ``faults``; then write the :class:`Journal` to ``record`` (JSON) if asked. Stopping on a
    signal rather than dying from it is what lets the journal be written when a test terminates us."""
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    emu = AmiEmulator(host, port, username=username, secret=secret, contexts=contexts, time_scale=time_scale,
                      plan=plan, full_events=full_events, timestamp_events=timestamp_events)
    emu.keep_originates = False  # nobody reads them in this process; a flood would pile them up
    emu.journal.enabled = record is not None
    await emu.start()
    print(f"AMI emulator on {host}:{emu.port} (user {username})", flush=True)
    faults = faults or Faults()

    async def every(period: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period)
            await action()

    async def drop() -> None:
        emu.drop_connections()

    async def malformed() -> None:
        emu.send_malformed()

    async def silence() -> None:
        emu.set_silent(True)
        await asyncio.sleep(faults.silent_for)
        emu.set_silent(False)

    async def new_secret() -> None:
        await asyncio.sleep(faults.new_secret_after)
        emu._secret = secrets.token_hex(16)  # nobody knows it: every later login is refused
        log.info("ami emulator secret changed; dropping every connection")
        emu.drop_connections()

    try:
        async with asyncio.TaskGroup() as tg:
            for period, action in ((faults.drop_every, drop), (faults.malformed_every, malformed),
                                   (faults.restart_every, emu.restart), (faults.silent_every, silence)):
                if period > 0:
                    tg.create_task(every(period, action))
            if faults.new_secret_after > 0:
                tg.create_task(new_secret())
            await stop.wait()
            raise _Stop  # leaving the group cancels the fault loops
    except* _Stop:
        pass
    finally:
        await emu.close()
        if record is not None:
            await asyncio.to_thread(Path(record).write_text, json.dumps(emu.journal.as_dict()), encoding="utf-8")


class _Stop(Exception):
    """Leaves the fault TaskGroup (cancelling the fault loops) when ``stop`` is set."""


def _load_plan(spec: str) -> PlanFn:
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name or "plan")
    if not callable(fn):
        raise SystemExit(f"--plan {spec}: not callable")
    return fn  # type: ignore[no-any-return]


def _plan_from_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> PlanFn:
    """The plan the command line asks for: a scenario's behaviour model, a module's function, or the
    last-digit default (with its patience and opt-out options)."""
    if args.plan and args.scenario:
        p.error("--plan and --scenario are two ways to decide calls: pick one")
    if (args.plan or args.scenario) and (args.patience is not None or args.opt_out_digits):
        p.error("--patience and --opt-out-digits shape the default plan only")
    if args.seed is not None and not args.scenario:
        p.error("--seed needs --scenario")
    if args.scenario:
        from engine.config import ConfigError

        try:
            return ScenarioPlan.from_file(args.scenario, seed=args.seed, time_scale=args.time_scale)
        except ConfigError as exc:
            p.error(str(exc))
    if args.plan:
        return _load_plan(args.plan)
    return with_default_options(default_plan, patience=args.patience, opt_out_digits=args.opt_out_digits)


def main(argv: Sequence[str] | None = None) -> int:
    """``dialer pbx-emulator``: an AMI-speaking Asterisk 22 stand-in for load tests and demos."""
    p = argparse.ArgumentParser(prog="dialer pbx-emulator",
                                description="AMI server that answers like Asterisk 22 and plays the dialer's "
                                            "dialplan with simulated customers.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5038)
    p.add_argument("--user", default="dialer")
    p.add_argument("--secret", default=None, help="AMI secret (prefer --secret-env: argv is visible to other users)")
    p.add_argument("--secret-env", default="DIALER_AMI_SECRET", help="environment variable holding the secret")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every delay (0.1 = ten times faster)")
    p.add_argument("--plan", default=None, help="module:function deciding each call (default: by last digit)")
    p.add_argument("--scenario", default=None, metavar="FILE.toml",
                   help="draw each call from this campaign's [simulation.customers] model instead of the last digit")
    p.add_argument("--seed", type=int, default=None, help="with --scenario: the seed (default: its [simulation] seed)")
    p.add_argument("--patience", type=float, default=None, metavar="S",
                   help="default plan: a person waits this long in silence before hanging up (scaled like every "
                        "delay; default 10)")
    p.add_argument("--opt-out-digits", default="", metavar="DIGITS",
                   help="default plan: people whose number ends in one of these digits press 9 in the abandon "
                        "message")
    p.add_argument("--record", default=None, metavar="FILE.json",
                   help="on exit, write what happened per call id (originates, abandon messages, opt-outs, "
                        "bridges)")
    p.add_argument("--customer-context", default="dialer-customer")
    p.add_argument("--agent-context", default="dialer-agent")
    p.add_argument("--abandon-context", default="dialer-abandon")
    p.add_argument("--drop-every", type=float, default=0.0, metavar="S", help="fault: cut every AMI connection")
    p.add_argument("--malformed-every", type=float, default=0.0, metavar="S", help="fault: send malformed frames")
    p.add_argument("--restart-every", type=float, default=0.0, metavar="S", help="fault: restart, forgetting calls")
    p.add_argument("--silent-every", type=float, default=0.0, metavar="S", help="fault: stop sending ...")
    p.add_argument("--silent-for", type=float, default=15.0, metavar="S", help="... for this long")
    p.add_argument("--new-secret-after", type=float, default=0.0, metavar="S",
                   help="fault: after S seconds change the secret (to one nobody knows) and drop every connection")
    p.add_argument("--full-events", action="store_true",
                   help="the full event volume of a real Asterisk 22 (~96 events per answered call), not only "
                        "the events the engine reads")
    p.add_argument("--timestamp-events", action="store_true",
                   help="a Timestamp header on every event (manager.conf timestampevents = yes)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (a faster event loop)")
    args = p.parse_args(list(argv) if argv is not None else None)
    secret = args.secret if args.secret is not None else os.environ.get(args.secret_env, "")
    if not secret:
        p.error(f"no secret: pass --secret or set {args.secret_env}")
    contexts = Contexts(customer=args.customer_context, agent=args.agent_context, abandon=args.abandon_context)
    faults = Faults(args.drop_every, args.malformed_every, args.restart_every, args.silent_every, args.silent_for,
                    args.new_secret_after)
    plan = _plan_from_args(p, args)
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port, username=args.user, secret=secret, time_scale=args.time_scale,
                         contexts=contexts, plan=plan, faults=faults, full_events=args.full_events,
                         timestamp_events=args.timestamp_events, record=args.record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

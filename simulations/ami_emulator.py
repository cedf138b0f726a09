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
answering after ``RINGTIME`` s who talks ``TALKTIME`` s).

Scale: every delay is one ``loop.call_later`` handle (no task per call or per
event) and each event is formatted once for all sessions, so thousands of
concurrent calls stay cheap. Faults are injected with :meth:`AmiEmulator.drop_connections`,
:meth:`AmiEmulator.set_silent`, :meth:`AmiEmulator.send_malformed` and
:meth:`AmiEmulator.restart`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import math
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog

from engine.models import mask_phone
from engine.pbx.ami.protocol import AmiProtocol, Message, RemoteProtocolError, drain, format_banner, format_frame

log = structlog.get_logger(__name__)

Outcome = Literal["answer", "busy", "congestion", "noanswer", "failed"]
STATE_NUM = {"Down": 0, "Ring": 4, "Ringing": 5, "Up": 6, "Busy": 7}
CAUSE_TXT = {0: "Unknown", 16: "Normal Clearing", 17: "User busy", 19: "User alerting, no answer",
             34: "Circuit/channel congestion", 21: "Call Rejected", 1: "Unallocated (unassigned) number"}
KNOWN_TECH = ("Local", "PJSIP", "SIP", "IAX2", "DAHDI")


@dataclass(slots=True)
class CallPlan:
    """What one dialled party does.

    ``answer_after``: ring time before the answer (``answer``) or before the far
    end gives up with cause 19 (``noanswer``; ``inf`` = until the Originate
    timeout). ``talk``: conversation once bridged to an agent (for a machine,
    the greeting played after the answer). ``patience``: a person left in
    silence hangs up after this long.
    """

    outcome: Outcome = "answer"
    answer_after: float = 2.0
    machine: bool = False
    talk: float = 6.0
    patience: float = 10.0
    amd_after: float = 0.8
    amd_status: str | None = None  # override AMD's verdict (e.g. NOTSURE); default from ``machine``
    fail_after: float = 0.005  # busy / congestion / failed signalled this long after the dial


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


def _float(v: str | None, default: float) -> float:
    try:
        return float(v) if v else default
    except ValueError:
        return default


@dataclass(slots=True)
class Contexts:
    """Dialplan contexts the emulator plays (names as in ``asterisk/extensions.conf``)."""

    customer: str = "dialer-customer"
    agent: str = "dialer-agent"
    abandon: str = "dialer-abandon"
    # Local/<n>@<ctx> contexts that reach a (simulated) customer; any other Local context fails like
    # Local/...@nosuchcontext did on the real Asterisk.
    outbound: tuple[str, ...] = ("dialer-outbound", "dialer-test-customers", "customers", "voicecustomers")
    abandon_message_s: float = 6.0


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.emu._sessions.add(self)
        self.emu.connections += 1
        self.write(format_banner("11.0.0"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.emu._sessions.discard(self)

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

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class AmiEmulator:
    """The AMI-speaking PBX. ``await start()`` binds (port 0 = a free port), ``await close()`` stops."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, username: str = "dialer", secret: str = "",
                 plan: PlanFn = default_plan, contexts: Contexts | None = None, time_scale: float = 1.0) -> None:
        self.host, self.port = host, port
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
        self.logins = 0
        self.connections = 0
        self.drop_on_originate = 0  # fault: queue the next N Originates, then cut the link before answering
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
        if c.call is not None and c.call.two is not None and c.call.state != "dialing":
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
            self._broadcast(format_frame([("Event", name), ("Privilege", privilege), *items]))

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

    def _ping(self, s: _Session, m: Message) -> None:
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
        for c in (a, b):
            call = c.call
            if call is not None and c is call.one and call.state == "up" and not call.connected:
                call.connected = True
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
        for c in (one, two):
            if c is None:
                continue
            for k, v in variables.items():
                self._event("VarSet", [*self._snap(c), ("Variable", k), ("Value", v)], "dialplan,all")
        if two is not None:
            self._event("LocalBridge", [*self._snap(one, "LocalOne"), *self._snap(two, "LocalTwo"),
                                        ("Context", lctx), ("Exten", number), ("LocalOptimization", "No")])
            self._event("DialBegin", [*self._snap(one, "Dest"), ("DialString", rest.split("/")[0])])
        log.debug("emulated dial", number=mask_phone(number), outcome=plan.outcome)
        if plan.outcome == "failed":
            self._later(call, plan.fail_after, self._fail, call, 0, 0)
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
            status = "BUSY" if cause == 17 else "CONGESTION"
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
            self._cancel(call)
            self._later(call, ctx.abandon_message_s, self._dialplan_hangup, call)
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
}


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


async def serve(host: str, port: int, *, username: str, secret: str, time_scale: float = 1.0,
                contexts: Contexts | None = None, plan: PlanFn = default_plan, faults: Faults | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run an emulator until ``stop`` is set (or forever), injecting the periodic ``faults``."""
    emu = AmiEmulator(host, port, username=username, secret=secret, contexts=contexts, time_scale=time_scale,
                      plan=plan)
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

    try:
        async with asyncio.TaskGroup() as tg:
            for period, action in ((faults.drop_every, drop), (faults.malformed_every, malformed),
                                   (faults.restart_every, emu.restart), (faults.silent_every, silence)):
                if period > 0:
                    tg.create_task(every(period, action))
            await (stop or asyncio.Event()).wait()
            raise _Stop  # leaving the group cancels the fault loops
    except* _Stop:
        pass
    finally:
        await emu.close()


class _Stop(Exception):
    """Leaves the fault TaskGroup (cancelling the fault loops) when ``stop`` is set."""


def _load_plan(spec: str) -> PlanFn:
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name or "plan")
    if not callable(fn):
        raise SystemExit(f"--plan {spec}: not callable")
    return fn  # type: ignore[no-any-return]


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
    p.add_argument("--customer-context", default="dialer-customer")
    p.add_argument("--agent-context", default="dialer-agent")
    p.add_argument("--abandon-context", default="dialer-abandon")
    p.add_argument("--drop-every", type=float, default=0.0, metavar="S", help="fault: cut every AMI connection")
    p.add_argument("--malformed-every", type=float, default=0.0, metavar="S", help="fault: send malformed frames")
    p.add_argument("--restart-every", type=float, default=0.0, metavar="S", help="fault: restart, forgetting calls")
    p.add_argument("--silent-every", type=float, default=0.0, metavar="S", help="fault: stop sending ...")
    p.add_argument("--silent-for", type=float, default=15.0, metavar="S", help="... for this long")
    args = p.parse_args(list(argv) if argv is not None else None)
    secret = args.secret if args.secret is not None else os.environ.get(args.secret_env, "")
    if not secret:
        p.error(f"no secret: pass --secret or set {args.secret_env}")
    contexts = Contexts(customer=args.customer_context, agent=args.agent_context, abandon=args.abandon_context)
    faults = Faults(args.drop_every, args.malformed_every, args.restart_every, args.silent_every, args.silent_for)
    plan = _load_plan(args.plan) if args.plan else default_plan
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, username=args.user, secret=secret, time_scale=args.time_scale,
                          contexts=contexts, plan=plan, faults=faults))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

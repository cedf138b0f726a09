"""The ``asterisk`` backend: drives one or more Asterisk servers over AMI.

Shape
    One ``_Link`` per Asterisk server owns a TCP connection. Its reader never
    runs engine code: it resolves action futures and puts every event on one
    ``asyncio.Queue``. One consumer task, owned like every other long-lived task
    by the backend's ``TaskGroup``, feeds that queue through each server's
    :class:`~engine.pbx.ami.correlator.Correlator` and calls the engine's sink,
    so call events leave in the order Asterisk produced them and a misbehaving
    sink cannot kill a connection.

Transports (``[asterisk] ami_transport``)
    Who turns bytes into AMI messages is a choice; everything above and below it
    (login, the ActionID futures, heartbeat, reconnect, reconciliation, the
    correlator, the rules below) is shared, and the same tests run on both.

    ``"native"`` (the default): the engine's sans-IO framer
    (:mod:`engine.pbx.ami.protocol`) over asyncio streams. It frames a whole
    read at once, skips unneeded events before parsing them, bounds a frame
    (an endless one is refused, not buffered), keeps UTF-8 split across reads
    intact and accepts LF-only frames.

    ``"panoramisk"``: panoramisk's ``AMIProtocol`` (an ``asyncio.Protocol``)
    carries the socket and frames the bytes into its ``Message``; replies and
    events are then routed by this module (:class:`_PanoramiskProtocol`). Its
    ``Manager`` is not used, and its action registry is bypassed, because
    panoramisk 1.4 was measured doing things a dialer must never do: after a
    reconnect the Manager re-sends actions that had no reply yet (replayed on
    ``FullyBooted``), so an Originate whose acknowledgement was lost is dialled
    twice; it parks async Originates' futures until their OriginateResponse
    (swallowing that event) and silently drops them on a reconnect; a refused
    login neither raises nor stops its reconnect timer; its Ping never checks
    the reply; a raising sync callback tears down the connection; and an
    Originate without ``Async`` raises (``KeyError``) inside its read loop.
    Here no action is ever re-sent, login and Ping replies are checked, nothing
    raised while routing reaches asyncio, and replies resolve our own futures.
    ``tests/test_ami_transport.py`` shows each of these on both transports.

    Why native is the default: ingest rate. ``python -m simulations.ami_transport_rate``
    feeds the real Asterisk 22 bytes of 300 answered calls (31,800 frames, in
    64 KiB reads) through each transport's whole path (framing, routing,
    prefilter, queue, correlator, sink), no sockets, best of three, on the
    shared 2-CPU development machine (load 2-3): native 138,030 and 150,212
    frames/s in two runs, panoramisk 37,037 and 39,268 frames/s (3.7-3.8x
    slower: under cProfile ~85% of that path is
    panoramisk's own ``Message.from_line`` and case-insensitive dict, built for
    every frame; converting the ~20% of messages the correlator needs into the
    engine's ``Message`` is ~14%). A real Asterisk sends ~96 events per answered
    call: a few hundred concurrent calls are well within panoramisk's reach,
    the issue-6 floods (~60k events/s) are not. The flood
    (``simulations/flood.py``) builds its backend from the campaign, so it runs
    native unless its campaign sets ``ami_transport = "panoramisk"``. Choose
    panoramisk for a small deployment that prefers the community parser;
    nothing else changes.

Rules
    * Every action has a timeout (``action_timeout``); its ActionID future is
      popped in ``finally``.
    * An Originate is sent at most once. If the connection drops before its
      acknowledgement, ``originate`` returns anyway (the PBX may have accepted
      it) and the call is settled by reconciliation, never by a re-send.
    * After every reconnect, ``CoreShowChannels`` reconciles the calls in
      flight: those whose channels are gone end as ``Ended(0, "unknown")``,
      which the engine never redials blindly.
    * Our own ``Ping`` every ``ping_interval``; no reply within the timeout
      drops the connection (a silent PBX is a dead PBX), then reconnect.
    * A refused login raises :class:`~engine.pbx.base.PbxAuthError` at once and
      the link stops: retrying a wrong secret only fills Asterisk's security log.
      Refused on a reconnect mid-run, the link's calls in flight end as
      ``unknown`` (nothing more will be heard of them) and, once every server
      has refused, :class:`~engine.pbx.base.PbxFailed` tells the engine to stop
      the run (``dialer run`` exits 1 and says why).

Agent sessions
    Each agent's phone is called once at login (``agent_login``) and parked in
    the agent holding context, where it stays between calls. Connecting a
    customer is then one ``Bridge`` action between two channels that are already
    up: no ringing the agent, no answer delay, so the 2-second connect limit is
    spent waiting for a free agent and not on call set-up. When the customer
    hangs up, the agent's channel leaves the bridge and continues in the
    holding context, ready for the next call. A session that vanished (the PBX
    restarted, the link was down and reconciliation no longer finds it, or its
    channel hung up with any cause but 16) is called back at once, with
    backoff, until it is up again or the agent logs out. A session hung up with
    cause 16 (normal clearing: the agent put the phone down) is not called back
    (that is how an agent leaves).
    Either way the engine is told at once, with an ``AgentSession(agent_id,
    up=False)`` event, and ``AgentSession(agent_id, up=True)`` when a session
    comes back: the dialer pauses the agent meanwhile (``AgentPool.session_lost``),
    because every connect to them would fail and leave a customer in silence.

Several servers
    A customer can only be bridged to an agent whose session lives on the same
    server: ``Bridge`` joins two channels of one Asterisk, and there is no trunk
    between servers to cross. The engine hands an answered call to whichever
    agent is free (it knows nothing of servers), so the backend makes every
    agent reachable from every call it places: all agent sessions of one engine
    live on one server, the *agent server* (the first connected server, in
    configuration order, when the first agent logs in), and while any session
    exists every customer leg is originated there too. A connect can then never
    fail for want of a shared server. If the agent server is unreachable while
    its sessions may still be up (a dropped AMI link hangs up nothing),
    originates and logins are refused rather than placed where no agent could
    take them; when it comes back without them, they are called back, together,
    on the first connected server.
    With agents, the other servers are thus a fall-back for the start (the first
    server listed is down when the agents log in), not load spreading: spread
    load by running several engine nodes, one agent server each, on a shared
    Redis store. Without any agent session (load tests of the PBX side),
    originates are spread over the connected servers, fewest calls in flight
    first. Every later command is routed by call id to the server holding the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from panoramisk.ami_protocol import AMIProtocol

from engine.models import CallAttempt, mask_phone
from engine.pbx.ami.correlator import Correlator
from engine.pbx.ami.protocol import (
    AmiProtocol,
    Banner,
    Closed,
    FieldValue,
    Message,
    RemoteProtocolError,
    format_action,
)
from engine.pbx.base import AgentSession, CallEvent, Ended, EventSink, PbxAuthError, PbxError, PbxEvent, PbxFailed

log = structlog.get_logger(__name__)

MIN_RING_TIMEOUT_S = 15.0  # Ofcom-style minimum ring before giving up; also keeps carriers from flagging us
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
TRANSPORTS = ("native", "panoramisk")  # [asterisk] ami_transport: who frames the AMI bytes
DEFAULT_TRANSPORT = "native"
AGENT_HUNG_UP_CAUSE = "16"  # Q.850 normal clearing on an agent session: the agent put the phone down (leaving)


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AmiServer:
    """One Asterisk server. The secret is read when connecting, from a file or an env var, never stored here."""

    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "dialer"
    secret_env: str = "DIALER_AMI_SECRET"
    secret_file: str | None = None

    def secret(self) -> str:
        """Read the secret now (so a rotated file is picked up on reconnect); PbxAuthError if missing."""
        if self.secret_file:
            try:
                value = Path(self.secret_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise PbxAuthError(f"cannot read the AMI secret file: {exc.strerror}") from None
        else:
            value = os.environ.get(self.secret_env, "")
        if not value:
            raise PbxAuthError(f"no AMI secret for {self.username}@{self.host} (set {self.secret_env})")
        return value

    @property
    def label(self) -> str:
        """``host:port`` for logs (never the secret)."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AsteriskConfig:
    """Everything the backend needs; names must match ``asterisk/extensions.conf``."""

    servers: tuple[AmiServer, ...] = (AmiServer(),)
    customer_context: str = "dialer-customer"  # where the answered customer leg runs (AMD, then waits)
    agent_context: str = "dialer-agent"  # where agent sessions wait between calls
    abandon_context: str = "dialer-abandon"  # plays the abandon message, then hangs up
    trunk: str = "PJSIP/{number}@trunk"  # dial string: {number} = E.164 as stored, {digits} = without '+'
    agent_channel: str = "PJSIP/{agent}"  # how to ring an agent's phone at login
    amd: bool = False  # run AMD in the customer context (DIALER_AMD=1) and wait for its verdict
    action_timeout: float = 5.0
    ping_interval: float = 10.0
    ping_timeout: float | None = None  # default: action_timeout
    connect_timeout: float = 5.0
    reconnect_delay: float = 0.5  # first retry; doubles up to reconnect_max
    reconnect_max: float = 10.0
    agent_answer_timeout: float = 30.0  # how long agent_login waits for the agent to pick up
    transport: str = DEFAULT_TRANSPORT  # who frames the AMI bytes: "native" or "panoramisk" (see the module doc)

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown AMI transport {self.transport!r} (use one of: {', '.join(TRANSPORTS)})")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> AsteriskConfig:
        """Build from the engine's ``[asterisk]`` section (or a whole campaign config) by attribute names."""
        amd = None
        if hasattr(settings, "asterisk"):  # a CampaignConfig: take AMD from its [amd] section
            amd = bool(getattr(getattr(settings, "amd", None), "enabled", False))
            settings = settings.asterisk
        servers = tuple(
            AmiServer(host=s.host, port=int(s.port), username=s.username,
                      secret_env=getattr(s, "secret_env", "DIALER_AMI_SECRET"),
                      secret_file=getattr(s, "secret_file", None))
            for s in getattr(settings, "servers", ()) or ()
        ) or (AmiServer(),)
        kw: dict[str, Any] = {"servers": servers}
        for name in ("customer_context", "agent_context", "abandon_context", "trunk", "agent_channel",
                     "action_timeout", "ping_interval", "ping_timeout", "connect_timeout"):
            if getattr(settings, name, None) is not None:
                kw[name] = getattr(settings, name)
        if getattr(settings, "ami_transport", None) is not None:
            kw["transport"] = settings.ami_transport
        if amd is not None:
            kw["amd"] = amd
        kw.update(overrides)
        return cls(**kw)


_WATCHED = frozenset({"OriginateResponse", "Hangup", "Shutdown"})  # events the backend itself acts on


class _LinkDown(PbxError):
    """The AMI connection dropped while an action waited for its response."""


# -- one AMI connection -----------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Any]
    collect: list[Message] | None = None  # event-list actions (CoreShowChannels) gather their events here


@dataclass(slots=True)
class _Agent:
    agent_id: str
    uid: str
    action_id: str
    up: asyncio.Future[bool]
    link: _Link


class _Link:
    """One Asterisk server: connection, login, reader, heartbeat, reconnect. Bytes are framed by the
    engine's own sans-IO framer (``ami_transport = "native"``); :class:`_PanoramiskLink` swaps that part."""

    transport_name = "native"

    def __init__(self, index: int, server: AmiServer, cfg: AsteriskConfig, queue: asyncio.Queue[Any]) -> None:
        self.index = index
        self.server = server
        self.cfg = cfg
        self.queue = queue
        self.correlator = Correlator(abandon_context=cfg.abandon_context)
        self.log = log.bind(ami=server.label)
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._proto = AmiProtocol()
        self._keep = self.correlator.prefilter(_WATCHED)
        self.ready = False
        self.auth_failed: PbxAuthError | None = None
        # Events read on this connection, and fed through the correlator: a flood compares them with
        # what the PBX says it sent (nothing may be lost between the socket and the call state).
        self.events_read = 0
        self.events_correlated = 0
        # How old the last correlated event was (its Timestamp, when the PBX sends them: manager.conf
        # timestampevents = yes), less the smallest age ever seen (network and clock offset).
        self._lag = 0.0
        self._lag_at = 0.0  # monotonic time of the last measurement
        self._lag_floor = float("inf")

    # -- connecting ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket, read the banner, log in. Raises PbxAuthError on refused credentials."""
        secret = self.server.secret()
        async with asyncio.timeout(self.cfg.connect_timeout):
            reader, writer = await asyncio.open_connection(self.server.host, self.server.port)
        self._reader, self._writer, self._proto = reader, writer, AmiProtocol()
        self._transport = writer.transport
        try:
            async with asyncio.timeout(self.cfg.action_timeout):
                banner = await self._read_one()
                if not isinstance(banner, Banner):
                    raise PbxError("no AMI banner")
                aid = self._next_id("login")
                writer.write(format_action("Login", aid, {"Username": self.server.username, "Secret": secret,
                                                          "Events": "on"}))
                while True:
                    m = await self._read_one()
                    if isinstance(m, Closed):
                        raise PbxError("connection closed during login")
                    if isinstance(m, Message) and m.action_id == aid:
                        break
        except BaseException:
            writer.close()
            raise
        if m.response != "Success":
            writer.close()
            raise self._refused(m)
        self.ready = True
        self.log.info("ami logged in", user=self.server.username)

    def _refused(self, reply: Message) -> PbxAuthError:
        """Remember a refused login (the link gives up; ``_pick`` reports it) and return the error."""
        self.auth_failed = PbxAuthError(f"AMI login refused for {self.server.username}@{self.server.label}: "
                                        f"{reply.get('Message') or reply.response}")
        return self.auth_failed

    async def _read_one(self) -> Banner | Message | Closed:
        assert self._reader is not None
        while True:
            ev = self._proto.next_event()
            if isinstance(ev, Banner | Message | Closed):
                return ev
            self._proto.receive_data(await self._reader.read(65536))

    def abort(self) -> None:
        """Drop the connection now (the reader sees EOF and the link reconnects)."""
        if self._transport is not None:
            self._transport.abort()

    async def _send(self, data: bytes) -> None:
        """Write one serialised action (backpressure: wait while the socket buffer is full)."""
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    def send_nowait(self, data: bytes) -> None:
        """Write without waiting (Logoff on close); silently nothing when not connected."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def close_transport(self) -> None:
        """Close the socket and wait (bounded) until it is closed."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._writer.wait_closed()

    # -- running --------------------------------------------------------------------------

    async def supervise(self) -> None:
        """Read, heartbeat and reconnect until cancelled or the credentials are refused."""
        delay = self.cfg.reconnect_delay
        settle: set[str] | None = None  # calls to reconcile after a reconnect
        while True:
            if not self.ready:
                try:
                    await self.connect()
                except PbxAuthError:
                    # No way back in, so nothing more will be heard of this server's calls: they end
                    # as unknown now (never redialled blindly), like calls a restart took, rather than
                    # waiting for events that cannot come. Later originates here raise PbxAuthError.
                    self.log.error("ami login refused on reconnect; giving up on this server")
                    self.queue.put_nowait((self.index, _Reconcile([], set(self.correlator.in_flight()))))
                    return
                except (OSError, TimeoutError, PbxError) as exc:
                    self.log.info("ami reconnect failed", error=str(exc) or type(exc).__name__, retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.cfg.reconnect_max)
                    continue
                delay = self.cfg.reconnect_delay
                # Only calls registered before this connection: a fresh originate may not have a channel yet.
                settle = set(self.correlator.in_flight())
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._heartbeat())
                    if settle is not None:
                        tg.create_task(self._reconcile(settle))
                        settle = None
                    await self._read_loop()
                    raise _LinkDown("connection closed")
            except* (PbxError, OSError, RemoteProtocolError) as eg:
                self.log.warning("ami connection lost", error=str(eg.exceptions[0]) or "closed")
            self._down()

    async def _read_loop(self) -> None:
        """Frame everything a read brought, then queue its events as one batch: one queue item per
        read instead of one per event keeps the consumer's cost on the events, not on the queue."""
        assert self._reader is not None
        proto, reader = self._proto, self._reader
        self._keep = self.correlator.prefilter(_WATCHED)
        while True:
            self._take_frames()
            if isinstance(proto.next_event(), Closed):
                return
            proto.receive_data(await reader.read(262144))

    def feed(self, data: bytes) -> None:
        """Frame and route bytes as if read from the socket (the ingest measurement drives this)."""
        self._proto.receive_data(data)
        self._take_frames()

    def _take_frames(self) -> None:
        """Every complete frame buffered now: replies resolve their actions, events go to the queue as
        one batch (one queue item per read, not per event, keeps the consumer's cost on the events).
        An event nobody here can use (no action waits for it, the backend does not watch it, the
        correlator says it cannot change a call) is counted and dropped unparsed."""
        proto, dispatch = self._proto, self._dispatch
        batch = [m for m in proto.messages(self._keep) if dispatch(m)]
        if proto.skipped:
            self.events_read += proto.skipped
            self.events_correlated += proto.skipped  # the correlator's filter decided them
            proto.skipped = 0
        if batch:
            self.queue.put_nowait((self.index, batch))

    def _dispatch(self, m: Message) -> bool:
        """Resolve action replies; True for an event the consumer must see. Reads no header an event
        does not need: most events are never parsed (see ``Message``)."""
        ev = m.event
        if ev is not None:
            self.events_read += 1
        aid = m.action_id
        if aid is not None and aid in self._pending:
            p = self._pending[aid]
            if m.event is None:  # a response (OriginateResponse also has a Response header: it is an event)
                if p.collect is None or m.response != "Success":
                    if not p.future.done():
                        p.future.set_result(m)
                    return False
                if m.get("EventList") == "start" or "follow" in (m.get("Message") or ""):
                    return False  # list events follow
            elif p.collect is not None:
                p.collect.append(m)
                if (m.event or "").endswith("Complete"):
                    if not p.future.done():
                        p.future.set_result(p.collect)
                return False
        if ev is None:
            return False
        if ev == "Shutdown":
            self.log.warning("asterisk is shutting down")
        return True

    async def _heartbeat(self) -> None:
        timeout = self.cfg.ping_timeout or self.cfg.action_timeout
        while True:
            await asyncio.sleep(self.cfg.ping_interval)
            try:
                reply = await self.action("Ping", limit=timeout)
            except TimeoutError:
                self.log.warning("ami silent; dropping the connection", timeout=timeout)
                self.abort()
                raise _LinkDown("heartbeat timeout") from None
            if reply.response != "Success":
                # Asterisk answers every Ping of a logged-in session: a refusal means this socket no
                # longer carries our session (a proxy re-routed it, the manager was reloaded), and its
                # events cannot be trusted. Log in again on a fresh connection.
                self.log.warning("ami ping refused; dropping the connection", message=reply.get("Message"))
                self.abort()
                raise _LinkDown("ping refused")

    def note_age(self, timestamp: str) -> None:
        """Update ``ingest_lag`` from an event's Timestamp header (wall-clock seconds at the PBX)."""
        try:
            age = time.time() - float(timestamp)
        except ValueError:
            return
        self._lag_floor = min(self._lag_floor, age)
        self._lag, self._lag_at = age - self._lag_floor, time.monotonic()

    @property
    def ingest_lag(self) -> float:
        """The last measured lag; 0 once nothing was correlated for a second (a quiet PBX has no
        backlog, and a stale figure must not hold dialling forever)."""
        return self._lag if time.monotonic() - self._lag_at < 1.0 else 0.0

    def _down(self) -> None:
        self.ready = False
        if self._transport is not None:
            self._transport.abort()
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(_LinkDown("AMI connection lost"))
        self._pending.clear()

    async def _reconcile(self, calls: set[str]) -> None:
        """After a reconnect: settle the calls in flight from what the server still has."""
        try:
            listing = await self.action("CoreShowChannels", collect=True)
        except (TimeoutError, PbxError) as exc:
            self.log.warning("reconcile failed; dropping the connection to retry", error=str(exc))
            self.abort()
            return
        rows = [m.headers for m in listing if m.event == "CoreShowChannel"]
        self.queue.put_nowait((self.index, _Reconcile(rows, calls)))

    # -- actions --------------------------------------------------------------------------

    def _next_id(self, kind: str) -> str:
        return f"dialer-{self.index}-{kind}-{next(self._ids)}"

    async def action(self, name: str, fields: Mapping[str, FieldValue] | None = None, *, action_id: str | None = None,
                     limit: float | None = None, collect: bool = False, before_login: bool = False) -> Any:
        """Send one action and wait for its response (or its event list); always bounded."""
        if (not self.ready and not before_login) or self._transport is None or self._transport.is_closing():
            raise _LinkDown(f"not connected to {self.server.label}")
        aid = action_id or self._next_id(name.lower())
        try:
            data = format_action(name, aid, fields)
        except ValueError as exc:
            raise PbxError(str(exc)) from None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[aid] = _Pending(fut, [] if collect else None)
        try:
            async with asyncio.timeout(limit or self.cfg.action_timeout):
                await self._send(data)
                return await fut
        except (ConnectionError, RuntimeError) as exc:
            raise _LinkDown(str(exc)) from None
        finally:
            self._pending.pop(aid, None)


class _PanoramiskProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's asyncio protocol: its ``data_received`` frames the bytes into its ``Message``; what
    happens to each message is ours (``handle_message``), and so is what a lost connection means.

    Overridden, and why (each is one of the measured pitfalls, see the module docstring):
    ``handle_message`` -- panoramisk's action registry (``Action.multi``/``completed``) parks an async
    Originate's future until its OriginateResponse, swallows that event, raises (``KeyError``) in the
    read loop when ``Async`` is missing, and lets ``close()`` queue unanswered actions for a re-send;
    here replies resolve our own ActionID futures and events go to the backend's queue, nothing else.
    ``connection_lost`` -- panoramisk's calls back a ``Manager`` that reconnects on a timer and replays
    those actions; here the link is told, fails its waiting actions and reconnects on its own terms.
    ``data_received`` -- wrapped so that no exception can reach asyncio (which would close the
    socket), and so that one read's events reach the queue as one batch.
    """

    def __init__(self, link: _PanoramiskLink) -> None:
        super().__init__()
        self.link = link
        self.batch: list[Message] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.encoding = "utf-8"  # panoramisk reads it per chunk; its default is ascii

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except Exception:
            self.link.log.exception("ami bytes could not be framed; skipped")
        finally:
            batch, self.batch = self.batch, []
            if batch:
                self.link.queue.put_nowait((self.link.index, batch))
            if self.version is not None:
                self.link.banner_seen()

    def handle_message(self, message: Any) -> None:
        try:
            self.link.route(message, self.batch)
        except Exception:  # one odd frame must not cost the connection
            self.link.log.exception("ami message could not be routed; skipped")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.link.lost(exc)


class _PanoramiskLink(_Link):
    """:class:`_Link` with panoramisk's ``AMIProtocol`` carrying the bytes (``[asterisk] ami_transport =
    "panoramisk"``). Login, heartbeat, reconnect, reconciliation and every rule are the shared ones."""

    transport_name = "panoramisk"

    def __init__(self, index: int, server: AmiServer, cfg: AsteriskConfig, queue: asyncio.Queue[Any]) -> None:
        super().__init__(index, server, cfg, queue)
        self._protocol: _PanoramiskProtocol | None = None
        self._closed: asyncio.Future[None] | None = None
        self._banner: asyncio.Future[None] | None = None
        self._keep_h = self.correlator.prefilter_headers(_WATCHED)

    async def connect(self) -> None:
        """Connect through panoramisk's protocol, wait for the banner, log in (our action, our check)."""
        secret = self.server.secret()
        loop = asyncio.get_running_loop()
        self._closed, self._banner = loop.create_future(), loop.create_future()
        self._keep_h = self.correlator.prefilter_headers(_WATCHED)
        async with asyncio.timeout(self.cfg.connect_timeout):
            transport, protocol = await loop.create_connection(lambda: _PanoramiskProtocol(self),
                                                               self.server.host, self.server.port)
        self._transport, self._protocol = transport, protocol
        try:
            async with asyncio.timeout(self.cfg.action_timeout):
                await self._banner
            reply: Message = await self.action("Login", {"Username": self.server.username, "Secret": secret,
                                                         "Events": "on"}, before_login=True)
        except BaseException:
            transport.close()
            raise
        if reply.response != "Success":
            transport.close()
            raise self._refused(reply)
        self.ready = True
        self.log.info("ami logged in", user=self.server.username, transport=self.transport_name)

    def banner_seen(self) -> None:
        if self._banner is not None and not self._banner.done():
            self._banner.set_result(None)

    def lost(self, exc: Exception | None) -> None:
        """The socket is gone: fail every waiting action now (nothing is ever re-sent) and wake the reader."""
        self.ready = False
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(_LinkDown("AMI connection lost"))
        if self._banner is not None and not self._banner.done():
            self._banner.set_exception(PbxError("connection closed before the AMI banner"))
            self._banner.exception()  # retrieved: nobody may be waiting for it any more
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    async def _read_loop(self) -> None:
        """panoramisk reads in its own callbacks; this only waits for the connection to end."""
        assert self._closed is not None
        await asyncio.shield(self._closed)

    def route(self, pm: Any, batch: list[Message]) -> None:
        """One panoramisk message: a reply resolves its action, an event the backend can use joins
        ``batch``; the rest is counted and dropped (as the native framer's prefilter does)."""
        ev = pm.get("Event")
        if ev is not None:
            aid = pm.get("ActionID")
            if (aid is None or aid not in self._pending) and not self._keep_h(ev, pm):
                self.events_read += 1
                self.events_correlated += 1  # the correlator's filter decided it
                return
        m = _from_panoramisk(pm)
        if self._dispatch(m):
            batch.append(m)

    def feed(self, data: bytes) -> None:
        """Bytes into panoramisk's ``data_received`` (the ingest measurement drives this)."""
        assert self._protocol is not None
        self._protocol.data_received(data)

    async def _send(self, data: bytes) -> None:
        # panoramisk's protocol has no write flow control: actions are few and small, so the
        # transport's buffer is the queue.
        assert self._transport is not None
        self._transport.write(data)

    async def close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            if self._closed is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await asyncio.shield(self._closed)


def _from_panoramisk(pm: Any) -> Message:
    """panoramisk's case-insensitive ``Message`` (repeated keys as lists) as the engine's ``Message``."""
    items: list[tuple[str, str]] = []
    for k, v in pm.items():
        if isinstance(v, list):
            items.extend((k, x) for x in v)
        else:
            items.append((k, v))
    return Message(items)


@dataclass(frozen=True, slots=True)
class _Reconcile:
    rows: list[Mapping[str, str]]
    calls: set[str]


# -- the backend ------------------------------------------------------------------------------


class AsteriskBackend:
    """:class:`~engine.pbx.base.PbxBackend` over AMI; ``AsteriskBackend(config)`` then ``await start(sink)``."""

    name = "asterisk"

    def __init__(self, config: AsteriskConfig | Any = None) -> None:
        if config is None:
            config = AsteriskConfig()
        elif not isinstance(config, AsteriskConfig):
            config = AsteriskConfig.from_settings(config)
        self.cfg: AsteriskConfig = config
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        link_class = _PanoramiskLink if config.transport == "panoramisk" else _Link
        self._links = [link_class(i, s, config, self._queue) for i, s in enumerate(config.servers)]
        self._route: dict[str, _Link] = {}
        self._agents: dict[str, _Agent] = {}
        self._agent_by_action: dict[str, _Agent] = {}
        self._agent_by_uid: dict[str, _Agent] = {}
        self._agent_seq = itertools.count(1)
        self._sink: EventSink | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._wanted: set[str] = set()  # agents logged in (and not out): sessions to keep up
        self._restoring: set[str] = set()
        self._down_reported: set[str] = set()  # agents told to the engine as AgentSession(up=False)
        self._rr = itertools.count()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        """Log in to every server (auth refused anywhere -> PbxAuthError) and start delivering events."""
        self._sink = sink
        results = await asyncio.gather(*(link.connect() for link in self._links), return_exceptions=True)
        for r in results:
            if isinstance(r, PbxAuthError):
                await self._close_links()
                raise r
        if all(isinstance(r, BaseException) for r in results):
            await self._close_links()
            raise PbxError(f"no Asterisk server reachable: {results[0]!s}")
        for link, r in zip(self._links, results, strict=True):
            if isinstance(r, BaseException):
                link.log.warning("ami server unreachable at start; will keep trying", error=str(r))
        self._runner = asyncio.create_task(self._run(), name="asterisk-backend")

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._consume(), name="asterisk-events")
            for link in self._links:
                tg.create_task(link.supervise(), name=f"ami-{link.server.label}")

    async def close(self) -> None:
        """Stop delivering events, log off, release connections."""
        self._sink = None
        self._wanted.clear()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
            self._tg = None
        for link in self._links:
            if link.ready:
                with contextlib.suppress(Exception):
                    link.send_nowait(format_action("Logoff", link._next_id("logoff")))
        await self._close_links()

    async def _close_links(self) -> None:
        for link in self._links:
            link.ready = False
            for p in link._pending.values():  # nobody reads any more: fail waiting actions now
                if not p.future.done():
                    p.future.set_exception(_LinkDown("backend closed"))
            link._pending.clear()
            await link.close_transport()

    # -- events ---------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            index, item = await self._queue.get()
            self._consume_item(self._links[index], item)

    def _consume_item(self, link: _Link, item: list[Message] | _Reconcile) -> None:
        """One queue item: a reconciliation, or one read's events, through the server's correlator."""
        if isinstance(item, _Reconcile):
            if link.auth_failed is not None and all(other.auth_failed for other in self._links):
                # Every server has refused our login on a reconnect: no call can be placed or
                # followed any more, and nothing here will change that.
                self._emit(PbxFailed(str(link.auth_failed)))
            events = link.correlator.reconcile(item.rows, only=item.calls)
            self._reconcile_agents(link, item.rows)
            vanished = sum(1 for e in events if isinstance(e, Ended) and e.reason == "unknown")
            link.log.info("ami reconciled", in_flight=len(link.correlator.in_flight()), vanished=vanished)
            self._deliver(events)
            return
        feed, interested = link.correlator.feed, link.correlator.interested
        for m in item:  # one read's events, in order
            ev = m.event
            if ev == "OriginateResponse" or ev == "Hangup":
                self._watch_agents(m)
            elif not interested(ev, m.raw):
                continue  # e.g. a list event kept for its ActionID: cannot change any call
            try:
                events = feed(m.headers)
            except Exception:  # a correlator bug must not stop every other call's events
                link.log.exception("ami message could not be correlated", ami_event=ev)
                continue
            if events:
                self._deliver(events)
        link.events_correlated += len(item)
        ts = item[-1].get("Timestamp")  # one parse per read, not per event
        if ts:
            link.note_age(ts)

    def _deliver(self, events: Sequence[CallEvent]) -> None:
        for ev in events:
            if isinstance(ev, Ended):
                self._route.pop(ev.call_id, None)
            self._emit(ev)

    def _emit(self, ev: PbxEvent) -> None:
        if self._sink is None:
            return
        try:
            self._sink(ev)
        except Exception:
            log.exception("event sink raised", kind=type(ev).__name__, call_id=getattr(ev, "call_id", None))

    def _watch_agents(self, m: Message) -> None:
        if m.event == "OriginateResponse":
            a = self._agent_by_action.pop(m.action_id or "", None)
            if a is not None and not a.up.done():
                a.up.set_result(m.response == "Success")
        elif m.event == "Hangup":
            a = self._agent_by_uid.get(m.get("Uniqueid") or "")
            if a is not None:
                self._drop_agent(a)
                if not a.up.done():
                    a.up.set_result(False)  # a login in progress: agent_login reports it
                    return
                cause = m.get("Cause") or "0"
                left = cause == AGENT_HUNG_UP_CAUSE
                log.warning("agent session ended", agent_id=a.agent_id, cause=cause,
                            next="none: the agent hung up" if left else "calling the agent back")
                self._session_down(a.agent_id, restore=not left)

    def _session_down(self, agent_id: str, *, restore: bool) -> None:
        """Tell the engine the agent can take no call (AgentSession down), and call them back if asked."""
        if agent_id not in self._down_reported:
            self._down_reported.add(agent_id)
            self._emit(AgentSession(agent_id, False))
        if restore:
            self._restore_later(agent_id)

    def _reconcile_agents(self, link: _Link, rows: Sequence[Mapping[str, str]]) -> None:
        alive = {r.get("Uniqueid") for r in rows}
        for a in list(self._agents.values()):
            if a.link is link and a.uid not in alive and a.up.done():
                self._drop_agent(a)
                log.warning("agent session lost while disconnected; calling the agent back", agent_id=a.agent_id)
                self._session_down(a.agent_id, restore=True)

    def _restore_later(self, agent_id: str) -> None:
        if agent_id in self._wanted and agent_id not in self._restoring and self._tg is not None:
            self._restoring.add(agent_id)
            self._tg.create_task(self._restore(agent_id), name=f"agent-restore-{agent_id}")

    async def _restore(self, agent_id: str) -> None:
        """Bring a lost session back (see "Agent sessions"); never raises, stops when the agent logs out."""
        delay = self.cfg.reconnect_delay
        try:
            while agent_id in self._wanted and agent_id not in self._agents:
                try:
                    await self.agent_login(agent_id)
                    log.info("agent session restored", agent_id=agent_id)
                    return
                except PbxError as exc:
                    log.warning("agent session not restored yet", agent_id=agent_id, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.reconnect_max)
        finally:
            self._restoring.discard(agent_id)

    def _drop_agent(self, a: _Agent) -> None:
        if self._agents.get(a.agent_id) is a:
            del self._agents[a.agent_id]
        self._agent_by_uid.pop(a.uid, None)
        self._agent_by_action.pop(a.action_id, None)
        a.link.correlator.unregister_agent(a.uid)

    # -- commands -------------------------------------------------------------------------

    def _agent_server(self) -> _Link | None:
        """The server holding the agent sessions (logins in progress included), or None without any."""
        return next((a.link for a in self._agents.values()), None)

    def _pick(self) -> _Link:
        home = self._agent_server()
        if home is not None:  # the only server whose calls an agent can take
            if not home.ready:
                raise PbxError(f"the agents' Asterisk server {home.server.label} is not connected")
            return home
        ready = [link for link in self._links if link.ready]
        if not ready:
            auth = next((link.auth_failed for link in self._links if link.auth_failed), None)
            if auth is not None and all(link.auth_failed for link in self._links):
                raise auth
            raise PbxError("no Asterisk server connected")
        turn = next(self._rr)
        return min(ready, key=lambda link: (len(link.correlator), (link.index - turn) % len(ready)))

    def _link_of(self, call_id: str) -> _Link:
        link = self._route.get(call_id)
        if link is None:
            raise PbxError(f"call {call_id} is not in flight")
        return link

    async def originate(self, call: CallAttempt, *, ring_timeout: float, caller_id: str) -> None:
        """Async Originate with ChannelId/OtherChannelId from the call id; sent once, never re-sent."""
        link = self._pick()
        cid = call.call_id
        if not _SAFE_ID.match(cid):
            raise PbxError("call id unusable as an Asterisk ChannelId")
        phone = call.lead.phone
        timeout_s = max(float(ring_timeout), MIN_RING_TIMEOUT_S)
        channel = self.cfg.trunk.format(number=phone, digits=phone.lstrip("+"))
        chan_id, other_id = f"{cid}", f"{cid}-2"
        aid = link._next_id("orig")
        fields: dict[str, FieldValue] = {
            "Channel": channel,
            "Context": self.cfg.customer_context,
            "Exten": "s",
            "Priority": "1",
            "Timeout": str(int(timeout_s * 1000)),
            "CallerID": caller_id,
            "Async": "true",
            "ChannelId": chan_id,
            "OtherChannelId": other_id,
            "Variable": [
                f"__DIALER_CAMPAIGN={_var(call.campaign_id)}",
                f"__DIALER_LEAD={_var(call.lead.lead_id)}",
                f"__DIALER_CALL={cid}",
                f"DIALER_AMD={1 if self.cfg.amd else 0}",
            ],
        }
        link.correlator.register(cid, action_id=aid, channel=channel, channel_id=chan_id, other_channel_id=other_id,
                                 amd=self.cfg.amd)
        self._route[cid] = link
        clog = link.log.bind(call_id=cid, phone=mask_phone(phone))
        try:
            reply: Message = await link.action("Originate", fields, action_id=aid)
        except (TimeoutError, _LinkDown) as exc:
            # The PBX may have queued it: never re-send. Reconciliation (or the engine's own
            # timeout) settles the call; a retry here could ring the customer twice.
            clog.warning("originate unacknowledged; left to reconciliation", error=str(exc) or "timeout")
            return
        except PbxError:
            link.correlator.forget(cid)
            self._route.pop(cid, None)
            raise
        if reply.response != "Success":
            link.correlator.forget(cid)
            self._route.pop(cid, None)
            raise PbxError(f"originate refused: {reply.get('Message') or reply.response}")
        clog.debug("originate queued", timeout_s=timeout_s)

    async def connect(self, call_id: str, agent_id: str) -> None:
        """Bridge the customer with the agent's parked session channel (same server only)."""
        link = self._link_of(call_id)
        agent = self._agents.get(agent_id)
        if agent is None or not agent.up.done() or not agent.up.result():
            raise PbxError(f"agent {agent_id} has no session")
        if agent.link is not link:
            raise PbxError(f"agent {agent_id} is on another Asterisk server than call {call_id}")
        chan = link.correlator.customer_channel(call_id)
        if chan is None:
            raise PbxError(f"call {call_id} has no live channel")
        link.correlator.expect_connect(call_id, agent_id)
        reply = await self._act(link, "Bridge", {"Channel1": chan, "Channel2": agent.uid, "Tone": "no"})
        if reply.response != "Success":
            raise PbxError(f"bridge refused: {reply.get('Message')}")

    async def abandon(self, call_id: str) -> None:
        """Send the customer to the abandon-message context (it raises DialerAbandon, plays, hangs up)."""
        link = self._link_of(call_id)
        chan = link.correlator.customer_channel(call_id)
        if chan is None:
            raise PbxError(f"call {call_id} has no live channel")
        reply = await self._act(link, "Redirect", {"Channel": chan, "Context": self.cfg.abandon_context,
                                                   "Exten": "s", "Priority": "1"})
        if reply.response != "Success":
            raise PbxError(f"redirect refused: {reply.get('Message')}")

    async def hangup(self, call_id: str) -> None:
        """Hang up the customer leg; a channel already gone is not an error (its Hangup event is coming)."""
        link = self._route.get(call_id)
        if link is None:
            return
        chan = link.correlator.customer_channel(call_id)
        if chan is None:
            return
        reply = await self._act(link, "Hangup", {"Channel": chan, "Cause": "16"})
        if reply.response != "Success" and reply.get("Message") != "No such channel":
            raise PbxError(f"hangup refused: {reply.get('Message')}")

    async def agent_login(self, agent_id: str) -> None:
        """Ring the agent's phone and park it in the agent context; returns once the agent answered."""
        old = self._agents.get(agent_id)
        if old is not None and old.up.done() and old.up.result():
            return
        link = self._pick_agent_link()
        uid = f"agent-{_var(agent_id)}-{next(self._agent_seq)}"
        aid = link._next_id("agent")
        loop = asyncio.get_running_loop()
        a = _Agent(agent_id, uid, aid, loop.create_future(), link)
        self._agents[agent_id] = a
        self._agent_by_action[aid] = a
        self._agent_by_uid[uid] = a
        link.correlator.register_agent(agent_id, uid)
        fields: dict[str, FieldValue] = {
            "Channel": self.cfg.agent_channel.format(agent=agent_id),
            "Context": self.cfg.agent_context, "Exten": "s", "Priority": "1",
            "Timeout": str(int(self.cfg.agent_answer_timeout * 1000)), "CallerID": f"Dialer <{agent_id}>",
            "Async": "true", "ChannelId": uid, "Variable": [f"__DIALER_AGENT={_var(agent_id)}"],
        }
        try:
            reply = await self._act(link, "Originate", fields, action_id=aid)
            if reply.response != "Success":
                raise PbxError(f"agent session refused: {reply.get('Message')}")
            async with asyncio.timeout(self.cfg.agent_answer_timeout + self.cfg.action_timeout):
                ok = await a.up
            if not ok:
                raise PbxError(f"agent {agent_id} did not answer")
        except (PbxError, TimeoutError) as exc:
            self._drop_agent(a)
            raise PbxError(f"agent {agent_id} login failed: {exc}") from None
        self._wanted.add(agent_id)
        log.info("agent session up", agent_id=agent_id, ami=link.server.label)
        if agent_id in self._down_reported:
            self._down_reported.discard(agent_id)
            self._emit(AgentSession(agent_id, True))

    async def agent_logout(self, agent_id: str) -> None:
        """Hang up the agent's parked channel; the session is forgotten even if the PBX is unreachable."""
        self._wanted.discard(agent_id)
        self._down_reported.discard(agent_id)
        a = self._agents.get(agent_id)
        if a is None:
            return
        self._drop_agent(a)
        if a.link.ready:
            with contextlib.suppress(PbxError):
                await self._act(a.link, "Hangup", {"Channel": a.uid, "Cause": "16"})

    def _pick_agent_link(self) -> _Link:
        """Where a new agent session goes: beside the others (never split the team over servers)."""
        home = self._agent_server()
        if home is not None:
            if not home.ready:
                raise PbxError(f"the agents' Asterisk server {home.server.label} is not connected")
            return home
        ready = [link for link in self._links if link.ready]
        if not ready:
            raise PbxError("no Asterisk server connected")
        return ready[0]  # configuration order: the operator lists the preferred server first

    async def _act(self, link: _Link, name: str, fields: Mapping[str, FieldValue], *,
                   action_id: str | None = None) -> Message:
        try:
            reply: Message = await link.action(name, fields, action_id=action_id)
        except TimeoutError:
            raise PbxError(f"{name} timed out on {link.server.label}") from None
        return reply

    # -- introspection (tests, status) --------------------------------------------------------

    @property
    def connected(self) -> bool:
        """At least one server is logged in (new originates can go out)."""
        return any(link.ready for link in self._links)

    @property
    def ingest_lag(self) -> float:
        """Seconds between the PBX emitting the events just correlated and now (worst server).

        The loop-lag check alone misses a backlog that sits in socket buffers rather than in the loop:
        a caller that dials should hold while this grows. 0 unless the PBX stamps its events."""
        return max((link.ingest_lag for link in self._links), default=0.0)

    def in_flight(self) -> list[str]:
        """Call ids whose end has not been reported yet, over every server."""
        return [cid for link in self._links for cid in link.correlator.in_flight()]

    @property
    def connected_servers(self) -> list[str]:
        """``host:port`` of every server logged in now, in configuration order."""
        return [link.server.label for link in self._links if link.ready]

    @property
    def agent_server(self) -> str | None:
        """``host:port`` of the server holding the agent sessions, None while there is none."""
        home = self._agent_server()
        return home.server.label if home is not None else None


def _var(value: str) -> str:
    """A value safe inside ``Variable: K=V`` (Asterisk splits on commas)."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", value)

"""The agent API over HTTP and WebSocket (aiohttp), served inside the engine's event loop.

Requests carry ``Authorization: Bearer <token>``; a WebSocket may instead send
``{"type": "auth", "token": ...}`` as its first message (browsers cannot set
headers on a WebSocket). Tokens never appear in URLs, so no proxy or access log
can record one; aiohttp's own access log is off, and the desk logs what matters
(logins, decisions, refusals) with agent ids only.

Every reply is JSON. A refusal is ``{"error": "<why>"}`` with the HTTP status
the desk chose (400 bad input, 401 no valid token, 403 not allowed, 409 not
now). See docs/agent-api.md for the endpoints and the events.

With ``[agents] tls_cert`` and ``tls_key`` the server speaks HTTPS/WSS only. The
token roster is read again on ``reload_tokens`` (SIGHUP) and whenever the tokens
file changes (a task of the server looks every ``TOKENS_WATCH_S``); a connection
opened with a token that no longer holds is closed (4401, "token revoked"). The
certificate and key are read again the same way, so a renewed certificate is
served from the next connection on without a restart (connections open keep the
one they were made with); a pair that does not load keeps the one in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from engine.agent_api.desk import CLOSE, CloseWith, DeskError
from engine.agent_api.tls import TlsError, server_context
from engine.agent_api.tokens import Identity, Roster, TokenError

if TYPE_CHECKING:
    from engine.agent_api.desk import ApiDesk

log = structlog.get_logger("engine.agent_api")

PREFIX = "/api/v1"
AUTH_WAIT_S = 10.0  # a WebSocket must say who it is within this long
HEARTBEAT_S = 30.0  # WebSocket pings: a dead connection is noticed (and its agent paused) within about this
SHUTDOWN_S = 5.0  # bounded wait for open requests and connections at shutdown
TOKENS_WATCH_S = 2.0  # how often the tokens file is looked at for a change
REVOKED = CloseWith(4401, b"token revoked")  # the close of a connection whose token no longer holds
WHO = web.RequestKey("who", Identity)  # the caller, set by the auth middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **details: Any) -> web.Response:
    return web.json_response({"error": message, **details}, status=status)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file (also one replaced by rename, as editors do), or None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(slots=True)
class _Conn:
    """One open event stream: who opened it, with which token (its digest), and its event queue."""

    who: Identity
    digest: bytes
    queue: asyncio.Queue[Any]


class AgentApiServer:
    """The aiohttp application of one ``ApiDesk``: started and stopped by the desk's ``run``."""

    def __init__(self, desk: ApiDesk) -> None:
        self.desk = desk
        self.port = desk.port
        self.tls = desk.cfg.agents.tls_cert is not None
        self.tokens_watch_s = TOKENS_WATCH_S
        self._sockets: dict[web.WebSocketResponse, _Conn] = {}
        self._no_sockets = asyncio.Event()  # set whenever no WebSocket is open
        self._no_sockets.set()
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None  # re-reads the tokens and TLS files (owned; cancelled in stop)
        self._reload_asked = asyncio.Event()
        self._ssl: ssl.SSLContext | None = None  # the context served with; a renewed certificate is loaded into it
        self.reloads = 0  # roster reloads done (taken or refused), for tests and status
        self.tls_reloads = 0  # certificate reloads done (taken or refused)
        self.app = web.Application(middlewares=[self._auth])
        r = self.app.router
        r.add_get(f"{PREFIX}/events", self._events)
        r.add_get(f"{PREFIX}/me", self._call(lambda who, req: self.desk.me(self._agent_only(who))))
        r.add_post(f"{PREFIX}/login", self._call(lambda who, req: self.desk.login(who)))
        r.add_post(f"{PREFIX}/logout", self._call(lambda who, req: self.desk.logout(who)))
        r.add_post(f"{PREFIX}/ready", self._call(lambda who, req: self.desk.ready(who)))
        r.add_post(f"{PREFIX}/pause", self._call(lambda who, req: self.desk.pause(who)))
        r.add_get(f"{PREFIX}/dispositions", self._call(lambda who, req: {"dispositions": self.desk.dispositions()}))
        r.add_get(f"{PREFIX}/previews/{{offer_id}}",
                  self._call(lambda who, req: self.desk.offer_view(who, req.match_info["offer_id"])))
        r.add_post(f"{PREFIX}/previews/{{offer_id}}/accept",
                   self._call(lambda who, req: self.desk.decide(who, req.match_info["offer_id"], True)))
        r.add_post(f"{PREFIX}/previews/{{offer_id}}/skip",
                   self._call(lambda who, req: self.desk.decide(who, req.match_info["offer_id"], False)))
        r.add_post(f"{PREFIX}/previews/{{offer_id}}/cancel",
                   self._call(lambda who, req: self.desk.cancel(who, req.match_info["offer_id"])))
        r.add_get(f"{PREFIX}/calls/{{call_id}}",
                  self._call(lambda who, req: self.desk.call_view(who, req.match_info["call_id"])))
        r.add_post(f"{PREFIX}/calls/{{call_id}}/tags", self._call(self._tags, body=True))
        r.add_post(f"{PREFIX}/calls/{{call_id}}/notes", self._call(self._notes, body=True))
        r.add_post(f"{PREFIX}/calls/{{call_id}}/disposition", self._call(self._disposition, body=True))
        r.add_post(f"{PREFIX}/calls/{{call_id}}/hangup",
                   self._call(lambda who, req: self.desk.hangup(who, req.match_info["call_id"])))
        r.add_get(f"{PREFIX}/supervisor", self._call(lambda who, req: self.desk.supervision(who)))

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (HTTPS only when ``[agents] tls_cert``/``tls_key`` are set: a ``TlsError`` names a bad
        file) and start watching the tokens file."""
        ssl_context = self._ssl = server_context(self.desk.cfg.agents)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.desk.host, self.desk.port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, f"the agent API cannot listen on {self.desk.host}:{self.desk.port} "
                          f"([agents] host, port): {exc.strerror or exc}") from exc
        bound = self._runner.addresses
        self.port = int(bound[0][1]) if bound else self.desk.port
        tokens_file = self.desk.cfg.agents.tokens_file
        if tokens_file or ssl_context is not None:
            self._watcher = asyncio.create_task(self._watch(Path(tokens_file) if tokens_file else None),
                                                name="agent-api-files")

    async def stop(self) -> None:
        """No new connections, every screen told and closed, then the server's own bounded cleanup."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        self.desk.close_all()
        sockets = list(self._sockets)
        if sockets:
            # Each connection's writer sends the goodbye and closes; give them a bounded moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_S):
                    await self._no_sockets.wait()
            for ws in list(self._sockets):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHUTDOWN_S):
                        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"engine stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the token roster, reloaded --------------------------------------------------------

    def reload_tokens(self) -> None:
        """Read the tokens file and the TLS files again now (SIGHUP); safe from a signal handler: the
        watcher does the work."""
        if not self.desk.cfg.agents.tokens_file:
            log.warning("agent tokens not reloaded: they come from the environment variable "
                        f"{self.desk.cfg.agents.tokens_env}, fixed at start; restart to change them "
                        "(or use [agents] tokens_file)")
        if self._watcher is not None:
            self._reload_asked.set()

    async def _watch(self, tokens: Path | None) -> None:
        """Reload the roster and the certificate when asked, or each when its files change; one task does
        every reload, in order."""
        section = self.desk.cfg.agents
        tls = [Path(p) for p in (section.tls_cert, section.tls_key) if p] if self._ssl is not None else []
        seen, seen_tls = _stamp(tokens) if tokens else None, [_stamp(p) for p in tls]
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tokens_watch_s):
                    await self._reload_asked.wait()
            asked = self._reload_asked.is_set()
            self._reload_asked.clear()
            why = "SIGHUP" if asked else "file changed"
            if tokens is not None and (asked or _stamp(tokens) != seen):
                seen = _stamp(tokens)
                try:
                    await self._reload(tokens, why)
                except Exception:  # a bug here must not end the watching, nor the campaign
                    log.exception("agent tokens reload failed; the roster in use stands", file=str(tokens))
                self.reloads += 1
            if tls and (asked or [_stamp(p) for p in tls] != seen_tls):
                seen_tls = [_stamp(p) for p in tls]
                try:
                    await self._reload_tls(why)
                except Exception:
                    log.exception("TLS certificate reload failed; the one in use stands")
                self.tls_reloads += 1

    async def _reload_tls(self, why: str) -> None:
        """Serve the certificate and key now in their files from the next handshake on, or keep the pair
        in use if they do not load together (a renewal caught half-written: the next change retries).
        The pair is first loaded into a context of its own, so the one served is only ever given a pair
        that works; audited."""
        section = self.desk.cfg.agents
        assert self._ssl is not None and section.tls_cert and section.tls_key
        fields = ("agents.tls_cert", "agents.tls_key")
        try:
            await asyncio.to_thread(server_context, section)  # file reads: off the loop
            await asyncio.to_thread(self._ssl.load_cert_chain, section.tls_cert, section.tls_key)
        except (TlsError, OSError, ssl.SSLError) as exc:
            log.error("TLS certificate not reloaded; the one in use stands", error=str(exc), reason=why,
                      field=getattr(exc, "field", None))
            self.desk.audit.record(actor="engine", role="admin", action="tls_reload_refused", lead_id="",
                                   fields=fields, reason=f"{why}: {exc}")
            return
        log.info("TLS certificate reloaded", cert=section.tls_cert, reason=why)
        self.desk.audit.record(actor="engine", role="admin", action="tls_reload", lead_id="", fields=fields,
                               reason=f"{why}: {section.tls_cert}")

    async def _reload(self, path: Path, why: str) -> None:
        """Swap the roster for the file's, or keep the one in use if the file does not parse; audited."""
        try:
            roster = await asyncio.to_thread(Roster.from_file, path)  # a file read: off the loop
        except TokenError as exc:
            # The message names the file, line and field, never a token.
            log.error("agent tokens file not reloaded; the roster in use stands", file=exc.source or str(path),
                      line=exc.line, field=exc.field, error=str(exc), reason=why)
            self.desk.audit.record(actor="engine", role="admin", action="roster_reload_refused", lead_id="",
                                   fields=("agents.tokens_file",), reason=f"{why}: {exc}")
            return
        change, joined = self.desk.replace_roster(roster, why=why)
        closed = self._close_revoked(roster)  # at once: before any slow PBX login of someone new
        log.info("agent tokens reloaded", file=str(path), reason=why, added=list(change.added),
                 removed=list(change.removed), changed=list(change.changed), streams_closed=closed)
        self.desk.audit.record(actor="engine", role="admin", action="roster_reload", lead_id="",
                               fields=("agents.tokens_file",), reason=f"{why}: {change.describe()}")
        await self.desk.bring_up(joined)

    def _close_revoked(self, roster: Roster) -> int:
        """Close every event stream opened with a token the roster no longer gives to the same person."""
        closed = 0
        for conn in list(self._sockets.values()):
            if roster.holds(conn.who, conn.digest):
                continue
            conn.queue.put_nowait({"type": "token_revoked", "reason": "your token was revoked or changed: "
                                   "sign in again with a valid one"})
            conn.queue.put_nowait(REVOKED)
            closed += 1
        return closed

    # -- plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == f"{PREFIX}/events":
            return await handler(request)  # authenticates itself (header or first message)
        who = self.desk.roster.identify(_bearer(request))
        if who is None:
            log.warning("agent api: request without a valid token refused", path=request.path,
                        remote=request.remote)
            return _error(401, "a valid token is required (Authorization: Bearer <token>)")
        request[WHO] = who
        return await handler(request)

    @staticmethod
    def _agent_only(who: Identity) -> Identity:
        if not who.takes_calls:
            raise DeskError(403, f"role {who.role!r} has no seat; see {PREFIX}/supervisor")
        return who

    def _call(self, action: Callable[..., Any], body: bool = False) -> Handler:
        """A route: the caller's identity (and JSON body) to a desk action, its answer or refusal as JSON."""

        async def handle(request: web.Request) -> web.StreamResponse:
            who = request[WHO]
            try:
                if body:
                    try:
                        data = await request.json() if request.can_read_body else {}
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        return _error(400, "the body must be a JSON object")
                    if not isinstance(data, dict):
                        return _error(400, "the body must be a JSON object")
                    out = action(who, request, data)
                else:
                    out = action(who, request)
                if asyncio.iscoroutine(out):
                    out = await out
            except DeskError as exc:
                return _error(exc.status, exc.message, **exc.details)
            return web.json_response(out)

        return handle

    def _tags(self, who: Identity, request: web.Request, data: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        return self.desk.tag(who, request.match_info["call_id"], data.get("tags"))

    def _notes(self, who: Identity, request: web.Request, data: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        return self.desk.note(who, request.match_info["call_id"], data.get("note"), data.get("tags"))

    def _disposition(self, who: Identity, request: web.Request,
                     data: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        return self.desk.dispose(who, request.match_info["call_id"], data.get("disposition"),
                                 data.get("follow_up_at"))

    # -- the event stream -----------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """One WebSocket: events pushed to its agent (or to a supervisor: every agent's state)."""
        token = _bearer(request)
        who = self.desk.roster.identify(token)
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        if who is None:
            token = await self._first_message_token(ws)
            who = self.desk.roster.identify(token)
            if who is None:
                log.warning("agent api: event stream without a valid token refused", remote=request.remote)
                await ws.send_json({"type": "error", "error": "a valid token is required"})
                await ws.close(code=4401, message=b"unauthorized")
                return ws
        assert token is not None
        queue = self.desk.subscribe(who)
        self._sockets[ws] = _Conn(who, self.desk.roster.digest_of(token), queue)
        self._no_sockets.clear()
        writer = asyncio.create_task(self._pump(ws, queue), name=f"agent-api-writer-{who.actor}")
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._incoming(msg.data, queue)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self.desk.unsubscribe(who, queue)
            self._sockets.pop(ws, None)
            if not self._sockets:
                self._no_sockets.set()
        return ws

    @staticmethod
    async def _first_message_token(ws: web.WebSocketResponse) -> str | None:
        """The token of a ``{"type": "auth", "token": ...}`` first message, or None."""
        try:
            async with asyncio.timeout(AUTH_WAIT_S):
                msg = await ws.receive()
        except TimeoutError:
            return None
        if msg.type != WSMsgType.TEXT:
            return None
        try:
            data = json.loads(msg.data)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("type") != "auth" or not isinstance(data.get("token"), str):
            return None
        return str(data["token"])

    @staticmethod
    def _incoming(text: str, queue: asyncio.Queue[Any]) -> None:
        """Clients only ping on the stream (actions are HTTP requests, so each has its own reply)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("type") == "ping":
            queue.put_nowait({"type": "pong"})
        else:
            queue.put_nowait({"type": "error", "error": "only {\"type\": \"ping\"} is read on this stream; "
                              "actions are HTTP requests"})

    @staticmethod
    async def _pump(ws: web.WebSocketResponse, queue: asyncio.Queue[Any]) -> None:
        """Send the connection's events in order; on CLOSE, close it (the reader then ends)."""
        while True:
            event = await queue.get()
            if event is CLOSE:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"closed by the engine")
                return
            if isinstance(event, CloseWith):
                await ws.close(code=event.code, message=event.reason)
                return
            try:
                await ws.send_json(event)
            except ConnectionError:
                return

"""The agent API over HTTP and WebSocket (aiohttp), served inside the engine's event loop.

Requests carry ``Authorization: Bearer <token>``; a WebSocket may instead send
``{"type": "auth", "token": ...}`` as its first message (browsers cannot set
headers on a WebSocket). Tokens never appear in URLs, so no proxy or access log
can record one; aiohttp's own access log is off, and the desk logs what matters
(logins, decisions, refusals) with agent ids only.

Every reply is JSON. A refusal is ``{"error": "<why>"}`` with the HTTP status
the desk chose (400 bad input, 401 no valid token, 403 not allowed, 409 not
now). See docs/agent-api.md for the endpoints and the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from engine.agent_api.desk import CLOSE, DeskError
from engine.agent_api.tokens import Identity

if TYPE_CHECKING:
    from engine.agent_api.desk import ApiDesk

log = structlog.get_logger("engine.agent_api")

PREFIX = "/api/v1"
AUTH_WAIT_S = 10.0  # a WebSocket must say who it is within this long
HEARTBEAT_S = 30.0  # WebSocket pings: a dead connection is noticed (and its agent paused) within about this
SHUTDOWN_S = 5.0  # bounded wait for open requests and connections at shutdown

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **details: Any) -> web.Response:
    return web.json_response({"error": message, **details}, status=status)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class AgentApiServer:
    """The aiohttp application of one ``ApiDesk``: started and stopped by the desk's ``run``."""

    def __init__(self, desk: ApiDesk) -> None:
        self.desk = desk
        self.port = desk.port
        self._sockets: set[web.WebSocketResponse] = set()
        self._no_sockets = asyncio.Event()  # set whenever no WebSocket is open
        self._no_sockets.set()
        self._runner: web.AppRunner | None = None
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
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.desk.host, self.desk.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, f"the agent API cannot listen on {self.desk.host}:{self.desk.port} "
                          f"([agents] host, port): {exc.strerror or exc}") from exc
        bound = self._runner.addresses
        self.port = int(bound[0][1]) if bound else self.desk.port

    async def stop(self) -> None:
        """No new connections, every screen told and closed, then the server's own bounded cleanup."""
        self.desk.close_all()
        sockets = list(self._sockets)
        if sockets:
            # Each connection's writer sends the goodbye and closes; give them a bounded moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_S):
                    await self._no_sockets.wait()
            for ws in list(self._sockets):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"engine stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

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
        request["who"] = who
        return await handler(request)

    @staticmethod
    def _agent_only(who: Identity) -> Identity:
        if not who.takes_calls:
            raise DeskError(403, f"role {who.role!r} has no seat; see {PREFIX}/supervisor")
        return who

    def _call(self, action: Callable[..., Any], body: bool = False) -> Handler:
        """A route: the caller's identity (and JSON body) to a desk action, its answer or refusal as JSON."""

        async def handle(request: web.Request) -> web.StreamResponse:
            who: Identity = request["who"]
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
        who = self.desk.roster.identify(_bearer(request))
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        if who is None:
            who = await self._first_message_auth(ws)
            if who is None:
                log.warning("agent api: event stream without a valid token refused", remote=request.remote)
                await ws.send_json({"type": "error", "error": "a valid token is required"})
                await ws.close(code=4401, message=b"unauthorized")
                return ws
        self._sockets.add(ws)
        self._no_sockets.clear()
        queue = self.desk.subscribe(who)
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
            self._sockets.discard(ws)
            if not self._sockets:
                self._no_sockets.set()
        return ws

    async def _first_message_auth(self, ws: web.WebSocketResponse) -> Identity | None:
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
        return self.desk.roster.identify(data["token"])

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
            try:
                await ws.send_json(event)
            except ConnectionError:
                return

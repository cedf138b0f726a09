"""The agent desk for real people: ``engine.desk.AgentDesk`` driven by the agent API.

The dialer asks the desk three things (go or skip on a preview, show a screen-pop,
a disposition after the call); here each question becomes an event pushed to the
agent's open connections and a future the agent's HTTP request resolves. What
the agent may read or change goes through ``engine.privacy`` (role views, audited
reads, notes and tags), so the API adds no second set of access rules.

The desk knows nothing about HTTP: every action raises ``DeskError`` with a
status and a message, and ``engine.agent_api.server`` turns that into a reply.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from engine.agent_api.tokens import Identity, Roster, RosterChange
from engine.agents import AgentPool
from engine.audit import AuditLog
from engine.calls import UNANSWERED
from engine.config import CampaignConfig
from engine.lanes import build_lanes
from engine.models import Agent, AgentState, Alert, CallAttempt, CallState, Lead
from engine.pbx.base import PbxError
from engine.plugins import retier
from engine.privacy import add_note, add_tags, preview_pop, screen_pop, view_lead
from engine.retry import follow_up_delay

if TYPE_CHECKING:
    from engine.agent_api.server import AgentApiServer
    from engine.dialer import Dialer

log = structlog.get_logger("engine.agent_api")

STATE_WATCH_S = 0.25  # how often agents' states are compared with what their screens were last told
MAX_QUEUED = 1000  # events waiting for one slow connection before it is dropped
MAX_NOTE = 4000  # characters in one note
MAX_TAGS = 20  # tags in one request
MAX_TAG = 64  # characters in one tag
CLOSE = object()  # put in a connection's queue: say goodbye and close
# Waits between the PBX logins of an agent who joined by a roster reload while their phone does not
# answer the first (not plugged in yet, still registering): the last one is repeated until it does.
LOGIN_RETRY_S = (5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class CloseWith:
    """Put in a connection's queue: close it with this WebSocket close code and reason."""

    code: int
    reason: bytes


class DeskError(Exception):
    """An agent's request the desk refuses: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


@dataclass
class _Offer:
    """A lead shown for preview, waiting for the agent's go."""

    offer_id: str
    lead: Lead
    alerts: tuple[Alert, ...]
    decision: asyncio.Future[bool]
    call: CallAttempt  # the attempt an accept dials (its call id is known before the dial)


@dataclass
class _Seat:
    """One agent's place at the desk: what is on their screen and their open connections."""

    agent_id: str
    offer: _Offer | None = None
    dialing: _Offer | None = None  # the accepted preview, while its call is placed and rings (cancel)
    call_id: str | None = None  # the call that is theirs: connected, or in wrap-up
    wrap_call: CallAttempt | None = None
    wrap: asyncio.Future[str | None] | None = None
    pause_after: bool = False  # asked to pause while busy: paused when the wrap-up ends
    told_state: str | None = None
    channels: set[asyncio.Queue[Any]] = field(default_factory=set)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class ApiDesk:
    """``AgentDesk`` for people working through the agent API (``[agents] desk = "api"``).

    Build it, build the ``Dialer`` with it, then ``attach(dialer)``: the desk reads the call
    being worked (lead, history, alerts) from the dialer, and writes notes and tags through its
    store and audit log. ``run`` (the dialer's agent-desk task) serves the API until cancelled.
    """

    wrap_up_bounded = True  # ``[agents] wrap_up_timeout`` (at most 30 min) ends every wrap-up

    def __init__(self, cfg: CampaignConfig, roster: Roster, *, host: str | None = None,
                 port: int | None = None) -> None:
        self.cfg = cfg
        self.roster = roster
        self.host = host if host is not None else cfg.agents.host
        self.port = port if port is not None else cfg.agents.port  # the bound port once serving
        self.seats: dict[str, _Seat] = {a: _Seat(a) for a in roster.agents}
        self.watchers: set[asyncio.Queue[Any]] = set()  # supervisors' connections
        self.serving = asyncio.Event()
        self._dialer: Dialer | None = None
        self._pool: AgentPool | None = None
        self._offers = itertools.count(1)
        self._stopping = False
        self.server: AgentApiServer | None = None  # while serving
        self.login_retry_s = LOGIN_RETRY_S
        self._logins: dict[str, asyncio.Task[None]] = {}  # PBX logins tried again (owned; cancelled by run)

    # -- wiring ---------------------------------------------------------------------------

    def attach(self, dialer: Dialer) -> None:
        """Give the desk the dialer it serves (calls in flight, store, audit log, PBX, figures)."""
        if dialer.audit is None:
            raise ValueError("the agent API needs the audit log: build the Dialer with audit=AuditLog(...)")
        unknown = sorted(set(dialer.pool.agents) - set(self.seats))
        if unknown:
            raise ValueError(f"agents without a token cannot use the agent API: {', '.join(unknown)}")
        self._dialer = dialer

    @property
    def dialer(self) -> Dialer:
        if self._dialer is None:
            raise RuntimeError("ApiDesk.attach(dialer) was not called")
        return self._dialer

    @property
    def audit(self) -> AuditLog:
        audit = self.dialer.audit
        assert audit is not None  # checked by attach
        return audit

    @property
    def pool(self) -> AgentPool:
        if self._pool is None:
            raise DeskError(503, "the campaign is not running yet")
        return self._pool

    # -- the roster, reloaded while serving ------------------------------------------------

    def reload_tokens(self) -> None:
        """Read the tokens file again (SIGHUP to ``dialer run``); safe from a signal handler."""
        if self.server is None:
            log.warning("agent tokens not reloaded: the agent API is not serving")
            return
        self.server.reload_tokens()

    def replace_roster(self, roster: Roster, *, why: str) -> tuple[RosterChange, list[str]]:
        """Take a reloaded roster: from this moment only its tokens open anything. Returns what changed and
        the agents who joined, whose PBX sessions ``bring_up`` then starts.

        Agents it adds join logged out, and get no call before their PBX session is up. Agents whose token
        went (removed, changed, or no longer of role agent) are logged out without cutting anything short: at
        once when ready or paused, else when their call, wrap-up or accepted preview ends; a preview not yet
        accepted is withdrawn (nothing was dialled: the lead goes back as a skip). Signing in again with a
        valid token (``login``) keeps them. The server closes the connections of tokens that went.
        """
        change = roster.changes_from(self.roster)
        self.roster = roster
        pool = self.pool
        for agent_id in (*change.removed, *change.changed):
            if agent_id in self.seats and agent_id in pool.agents:
                self._retire(pool.agents[agent_id], why)
        joined = []
        for agent_id in roster.agents:
            if agent_id in change.added and agent_id in pool.agents:
                pool.stay(agent_id)  # removed, then put back before they had left
            if agent_id not in self.seats:
                self.seats[agent_id] = _Seat(agent_id)
            if agent_id not in pool.agents:
                self._join(agent_id)
                joined.append(agent_id)
        self.sync_states()
        return change, joined

    def _retire(self, agent: Agent, why: str) -> None:
        seat = self.seats[agent.agent_id]
        seat.pause_after = False  # they leave at the end of the call, not just pause
        offer = seat.offer
        if offer is not None and not offer.decision.done():
            offer.decision.set_result(False)
            self.push(agent.agent_id, {"type": "preview_withdrawn", "offer_id": offer.offer_id})
        self.pool.retire(agent.agent_id)
        log.info("agent's token revoked; logging out", agent_id=agent.agent_id, reason=why,
                 after_call=agent.agent_id in self.pool.leaving)

    def _join(self, agent_id: str) -> None:
        """An agent new to the roster joins the shift, logged out, in the lane their skills give them."""
        agent = Agent(agent_id, skills=tuple(self.cfg.agents.skills.get(agent_id, ())))
        _, groups = build_lanes(self.cfg, [agent])
        self.pool.add(agent, groups.get(agent_id, ""))
        self.pool.session_lost(agent_id)  # no call is put through to them before their PBX session is up
        log.info("agent added to the roster", agent_id=agent_id)

    async def bring_up(self, agent_ids: list[str]) -> None:
        """The PBX sessions of agents who joined (as at the start of the shift); then they can take calls.
        A login that fails is tried again in the background (``LOGIN_RETRY_S``) until it works."""
        for agent_id in agent_ids:
            if not await self._pbx_login(agent_id, attempt=1):
                self._keep_logging_in(agent_id)
        self.sync_states()

    async def _pbx_login(self, agent_id: str, attempt: int) -> bool:
        try:
            await self.dialer.pbx.agent_login(agent_id)  # bounded by the backend (Asterisk: rings the phone)
        except PbxError as exc:
            log.warning("new agent's PBX session not up; no calls until it is, trying again", agent_id=agent_id,
                        attempt=attempt, error=str(exc))
            return False
        self.pool.session_back(agent_id)
        return True

    def _keep_logging_in(self, agent_id: str) -> None:
        if agent_id not in self._logins:
            task = asyncio.create_task(self._login_until_up(agent_id), name=f"agent-login-{agent_id}")
            self._logins[agent_id] = task
            task.add_done_callback(lambda done: self._logins.pop(agent_id, None))

    async def _login_until_up(self, agent_id: str) -> None:
        """Try an agent's PBX login again until it works, they leave the roster, their session comes up
        some other way, or the shift ends: a phone unreachable at the reload takes calls as soon as it
        answers a login, not after a restart."""
        for attempt in itertools.count(2):
            await asyncio.sleep(self.login_retry_s[min(attempt - 2, len(self.login_retry_s) - 1)])
            pool = self.pool
            if self._stopping or agent_id not in self.roster.agents or agent_id not in pool.no_session:
                return
            if await self._pbx_login(agent_id, attempt):
                log.info("new agent's PBX session up", agent_id=agent_id, attempt=attempt)
                self.sync_states()
                return

    # -- AgentDesk ------------------------------------------------------------------------

    async def run(self, pool: AgentPool) -> None:
        """Serve the agent API for the whole shift; on cancel, tell every screen and close (bounded)."""
        from engine.agent_api.server import AgentApiServer

        self._pool = pool
        self.sync_states()  # what every screen is told from now on is a change from here
        server = AgentApiServer(self)
        await server.start()
        self.server = server
        self.port = server.port
        self.serving.set()
        log.info("agent api listening", host=self.host, port=self.port, agents=len(self.seats), tls=server.tls)
        try:
            while True:
                await asyncio.sleep(STATE_WATCH_S)
                self.sync_states()
        finally:
            self._stopping = True
            self.serving.clear()
            self.server = None
            logins = list(self._logins.values())
            for task in logins:
                task.cancel()
            await asyncio.gather(*logins, return_exceptions=True)
            await server.stop()
            log.info("agent api stopped")

    async def preview(self, agent: Agent, call: CallAttempt) -> bool:
        """Push the lead (number masked) to the agent and wait for accept or skip.

        The dialer bounds the wait (``[pacing] preview_timeout``); when it gives up, the screen is told
        the offer is withdrawn.
        """
        seat = self.seats[agent.agent_id]
        lead, alerts = call.lead, call.alerts
        offer = _Offer(f"P{next(self._offers)}", lead, alerts, asyncio.get_running_loop().create_future(), call)
        seat.offer, seat.dialing = offer, None
        try:
            pop = preview_pop(lead, agent_id=agent.agent_id, history=call.lead_history, alerts=alerts,
                              audit=self.audit)
            self.push(agent.agent_id, {"type": "preview", "offer_id": offer.offer_id,
                                       "timeout_s": self.cfg.pacing.preview_timeout, "screen_pop": pop})
            go = await offer.decision
            if go:
                seat.dialing = offer  # until the call ends: it may be called off while it rings
            return go
        finally:
            seat.offer = None
            if not offer.decision.done():
                offer.decision.cancel()
                self.push(agent.agent_id, {"type": "preview_withdrawn", "offer_id": offer.offer_id})

    def show(self, agent: Agent, screen_pop: dict[str, Any]) -> None:
        """The call is connected to this agent: it is theirs now, and its screen-pop goes to their screen."""
        seat = self.seats[agent.agent_id]
        seat.call_id = agent.call_id
        self.push(agent.agent_id, {"type": "call_connected", "call_id": agent.call_id, "screen_pop": screen_pop})
        self.sync_states()

    async def wrap_up(self, agent: Agent, call: CallAttempt) -> str | None:
        """Ask for the disposition; after ``[agents] wrap_up_timeout`` the campaign's default is taken."""
        seat = self.seats[agent.agent_id]
        seat.call_id, seat.wrap_call = call.call_id, call
        seat.wrap = asyncio.get_running_loop().create_future()
        timeout = self.cfg.agents.wrap_up_timeout
        self.push(agent.agent_id, {"type": "wrap_up", "call_id": call.call_id, "timeout_s": timeout,
                                   "outcome": call.outcome.value if call.outcome else None,
                                   "dispositions": self.dispositions()})
        self.sync_states()
        try:
            try:
                async with asyncio.timeout(timeout):
                    return await seat.wrap
            except TimeoutError:
                default = self.cfg.agents.default_disposition
                log.info("wrap-up timed out; default disposition", agent_id=agent.agent_id, call_id=call.call_id,
                         disposition=default)
                self.push(agent.agent_id, {"type": "wrap_up_timeout", "call_id": call.call_id,
                                           "disposition": default})
                return default
        finally:
            seat.call_id = seat.wrap_call = seat.wrap = None
            seat.dialing = None
            if seat.pause_after and agent.state == AgentState.WRAP_UP:
                seat.pause_after = False
                self.pool.pause(agent.agent_id)  # the dialer leaves a paused agent paused
            self.push(agent.agent_id, {"type": "call_done", "call_id": call.call_id})

    # -- events ---------------------------------------------------------------------------

    def push(self, agent_id: str, event: dict[str, Any]) -> None:
        """Queue ``event`` for each of the agent's open connections (never blocks)."""
        seat = self.seats.get(agent_id)
        if seat is not None:
            for q in list(seat.channels):
                self._put(q, event)

    def _put(self, q: asyncio.Queue[Any], event: Any) -> None:
        if q.qsize() >= MAX_QUEUED:
            log.warning("agent api connection too slow; dropped")
            q.put_nowait(CLOSE)
            return
        q.put_nowait(event)

    def subscribe(self, who: Identity) -> asyncio.Queue[Any]:
        """A queue of events for one new connection of ``who``, starting with where they stand."""
        q: asyncio.Queue[Any] = asyncio.Queue()
        if who.takes_calls:
            seat = self.seats[who.actor]
            seat.channels.add(q)
            q.put_nowait({"type": "hello", **self.me(who)})
        else:
            self.watchers.add(q)
            q.put_nowait({"type": "hello", "actor": who.actor, "role": who.role})
        return q

    def unsubscribe(self, who: Identity, q: asyncio.Queue[Any]) -> None:
        """A connection closed. An agent left READY with no screen open is paused: no call is put
        through to someone who cannot see it."""
        if not who.takes_calls:
            self.watchers.discard(q)
            return
        seat = self.seats[who.actor]
        seat.channels.discard(q)
        if seat.channels or self._stopping or self._pool is None:
            return
        agent = self._pool.agents.get(who.actor)
        if agent is not None and agent.state == AgentState.READY:
            self._pool.pause(who.actor)
            log.warning("agent's last screen disconnected while ready; paused", agent_id=who.actor)
            self.sync_states()

    def close_all(self) -> None:
        """Tell every open connection the engine is stopping, then close it."""
        for q in [*(q for s in self.seats.values() for q in s.channels), *self.watchers]:
            q.put_nowait({"type": "shutdown", "reason": "the campaign is stopping"})
            q.put_nowait(CLOSE)

    def sync_states(self) -> None:
        """Tell each agent (and the supervisors) of state changes the desk did not make itself: a preview
        call that was never answered, a logout, an answered call."""
        if self._pool is None:
            return
        for agent_id, seat in self.seats.items():
            agent = self._pool.agents.get(agent_id)
            if agent is None:
                continue
            if agent.call_id is None and seat.wrap is None:
                seat.call_id = None  # e.g. hung up before the bridge: nothing of that call is theirs now
            if seat.dialing is not None and seat.dialing.call.state == CallState.ENDED and seat.wrap is None:
                seat.dialing = None
            state = agent.state.value
            if state != seat.told_state:
                seat.told_state = state
                event = {"type": "state", "agent_id": agent_id, "state": state, "call_id": agent.call_id}
                self.push(agent_id, event)
                for q in list(self.watchers):
                    self._put(q, event)

    # -- what an agent may do ----------------------------------------------------------------

    def _agent(self, who: Identity) -> Agent:
        if not who.takes_calls:
            raise DeskError(403, f"role {who.role!r} does not take calls; only agents log in to the campaign")
        agent = self.pool.agents.get(who.actor)
        if agent is None:
            raise DeskError(403, f"{who.actor} is not an agent of this campaign")
        return agent

    def me(self, who: Identity) -> dict[str, Any]:
        """Where the agent stands: state, the preview waiting for them, their call."""
        seat = self.seats[who.actor]
        agent = self._pool.agents.get(who.actor) if self._pool is not None else None
        ringing = seat.dialing is not None and seat.dialing.call.state in UNANSWERED
        return {"agent_id": who.actor, "role": who.role,
                "state": agent.state.value if agent else AgentState.LOGGED_OUT.value,
                "offer_id": seat.offer.offer_id if seat.offer else None, "call_id": seat.call_id,
                "dialing": {"offer_id": seat.dialing.offer_id, "call_id": seat.dialing.call.call_id}
                if ringing and seat.dialing is not None else None,
                "wrap_up": seat.wrap is not None, "pause_after_call": seat.pause_after}

    def login(self, who: Identity) -> dict[str, Any]:
        """At the desk, paused: calls come only once the agent says ready."""
        agent = self._agent(who)
        if agent.agent_id in self.pool.leaving:  # signed in again (e.g. with their new token) before leaving
            self.pool.stay(agent.agent_id)
            log.info("agent stays after a roster reload", agent_id=agent.agent_id)
        if agent.state == AgentState.LOGGED_OUT:
            self.pool.pause(agent.agent_id)
            log.info("agent logged in", agent_id=agent.agent_id)
        self.sync_states()
        return self.me(who)

    def logout(self, who: Identity) -> dict[str, Any]:
        agent = self._agent(who)
        if agent.state in (AgentState.PREVIEWING, AgentState.ON_CALL, AgentState.WRAP_UP):
            raise DeskError(409, f"cannot log out while {agent.state.value}: finish the call (or the preview) "
                            "first; pause to stop taking calls after it")
        if agent.state != AgentState.LOGGED_OUT:
            self.pool.logout(agent.agent_id)
            log.info("agent logged out", agent_id=agent.agent_id)
        self.sync_states()
        return self.me(who)

    def ready(self, who: Identity) -> dict[str, Any]:
        agent = self._agent(who)
        seat = self.seats[agent.agent_id]
        if agent.state == AgentState.LOGGED_OUT:
            raise DeskError(409, "log in first")
        seat.pause_after = False
        if agent.state == AgentState.PAUSED:
            self.pool.make_ready(agent)
        self.sync_states()
        return self.me(who)

    def pause(self, who: Identity) -> dict[str, Any]:
        """Stop taking calls: now when ready, else at the end of the current call's wrap-up."""
        agent = self._agent(who)
        if agent.state == AgentState.LOGGED_OUT:
            raise DeskError(409, "log in first")
        if agent.state == AgentState.PREVIEWING:
            raise DeskError(409, "accept or skip the preview first")
        if agent.state == AgentState.READY:
            self.pool.pause(agent.agent_id)
        elif agent.state in (AgentState.ON_CALL, AgentState.WRAP_UP):
            self.seats[agent.agent_id].pause_after = True
        self.sync_states()
        return self.me(who)

    def decide(self, who: Identity, offer_id: str, go: bool) -> dict[str, Any]:
        """Accept (dial now) or skip the lead offered for preview."""
        agent = self._agent(who)
        offer = self.seats[agent.agent_id].offer
        if offer is None or offer.offer_id != offer_id or offer.decision.done():
            raise DeskError(409, f"no preview {offer_id!r} is waiting for you (it may have timed out)")
        offer.decision.set_result(go)
        log.info("preview decided", agent_id=agent.agent_id, offer_id=offer_id, go=go)
        if go:  # the call about to be placed: cancel it by the offer while it rings, or follow it by this id
            return {"offer_id": offer_id, "accepted": True, "call_id": offer.call.call_id}
        return {"offer_id": offer_id, "accepted": False}

    async def cancel(self, who: Identity, offer_id: str) -> dict[str, Any]:
        """Call off the preview the agent accepted, while its call is still ringing: hung up on the PBX, the
        attempt recorded as ``cancelled`` and the lead retried by ``[retry] cancelled``; the agent is back to
        ready (and the next preview). Refused once the call is answered: a person is on the line."""
        agent = self._agent(who)
        seat = self.seats[agent.agent_id]
        offer = seat.dialing
        if offer is None or offer.offer_id != offer_id:
            if seat.offer is not None and seat.offer.offer_id == offer_id:
                raise DeskError(409, f"preview {offer_id!r} is not accepted yet: skip it instead")
            raise DeskError(409, f"no call of preview {offer_id!r} is being placed for you")
        call = offer.call
        which = {"call_id": call.call_id}
        if call.state == CallState.ENDED:
            raise DeskError(409, "the call has already ended", **which)
        if not (call.state in UNANSWERED and await self.dialer.cancel_unanswered(call)):
            if call.state in UNANSWERED:  # its attempt is over without a dial (e.g. blocked at the reservation)
                raise DeskError(409, "the call has already ended (it was not placed)", **which)
            raise DeskError(409, "the call was answered: it cannot be cancelled; it is yours now (end it with "
                            f"POST /calls/{call.call_id}/hangup)", **which)
        seat.dialing = None
        log.info("preview call cancelled", agent_id=agent.agent_id, offer_id=offer_id, call_id=call.call_id)
        self.push(agent.agent_id, {"type": "call_cancelled", "offer_id": offer_id, "call_id": call.call_id})
        return {"offer_id": offer_id, "call_id": call.call_id, "cancelled": True}

    def offer_view(self, who: Identity, offer_id: str) -> dict[str, Any]:
        """The preview waiting for the agent, read again (e.g. after reconnecting); audited like the push."""
        agent = self._agent(who)
        offer = self.seats[agent.agent_id].offer
        if offer is None or offer.offer_id != offer_id or offer.decision.done():
            raise DeskError(409, f"no preview {offer_id!r} is waiting for you (it may have timed out)")
        pop = preview_pop(offer.lead, agent_id=agent.agent_id, history=(), alerts=offer.alerts, audit=self.audit)
        return {"offer_id": offer_id, "screen_pop": pop}

    def _own_call(self, who: Identity, call_id: str, why: str) -> CallAttempt:
        """The agent's own call, or 403 (audited when the call is known: someone tried to read it)."""
        agent = self._agent(who)
        seat = self.seats[agent.agent_id]
        call = seat.wrap_call if seat.wrap_call is not None and seat.wrap_call.call_id == call_id \
            else self.dialer.calls.get(call_id)
        if seat.call_id != call_id or call is None:
            other = self.dialer.calls.get(call_id)
            if other is not None:
                self.audit.record(actor=who.actor, role=who.role, action="denied", lead_id=other.lead.lead_id,
                                  fields=(), reason=f"{why}: not the agent's call")
            log.warning("agent refused a call that is not theirs", agent_id=who.actor, call_id=call_id)
            raise DeskError(403, "not your call: agents see a lead only while on a call with that person")
        return call

    def call_view(self, who: Identity, call_id: str) -> dict[str, Any]:
        """The call's screen-pop for its agent; the lead under their role for a supervisor or admin."""
        if who.takes_calls:
            call = self._own_call(who, call_id, "screen-pop read")
            pop = screen_pop(call.lead, agent_id=who.actor, history=call.lead_history, alerts=call.alerts,
                             audit=self.audit)
            return {"call_id": call_id, "screen_pop": pop}
        call = self.dialer.calls.get(call_id)
        if call is None:
            raise DeskError(404, f"no call {call_id!r} in flight")
        view = view_lead(call.lead, role=who.role, actor=who.actor, reason="supervision of a live call",
                         audit=self.audit)
        return {"call_id": call_id, "state": call.state.value, "agent_id": call.agent_id, "lead": view}

    async def tag(self, who: Identity, call_id: str, tags: Any) -> dict[str, Any]:
        """Tags added during the call: audited, and stored with the lead at once."""
        call = self._own_call(who, call_id, "tags")
        clean = _tags(tags)
        if not clean:
            raise DeskError(400, "tags: give a list of one or more tags")
        add_tags(call.lead, tags=clean, agent_id=who.actor, audit=self.audit)
        retier(self.dialer.plugins, self.dialer.cfg, call.lead)  # a tag a tier rule reads routes it next time
        await self.dialer.store.add_leads([call.lead])
        return {"call_id": call_id, "tags": list(call.lead.tags)}

    async def note(self, who: Identity, call_id: str, note: Any, tags: Any = None) -> dict[str, Any]:
        """A note (and tags) written during the call: audited, and stored with the lead (encrypted at rest)."""
        call = self._own_call(who, call_id, "note")
        if not isinstance(note, str) or not note.strip():
            raise DeskError(400, "note: give the note's text")
        if len(note) > MAX_NOTE:
            raise DeskError(400, f"note: at most {MAX_NOTE} characters")
        add_note(call.lead, note=note.strip(), tags=_tags(tags) if tags else (), agent_id=who.actor,
                 audit=self.audit)
        retier(self.dialer.plugins, self.dialer.cfg, call.lead)
        await self.dialer.store.add_leads([call.lead])
        notes = call.lead.attributes.get("notes")
        return {"call_id": call_id, "notes": len(notes) if isinstance(notes, list) else 0,
                "tags": list(call.lead.tags)}

    async def dispose(self, who: Identity, call_id: str, disposition: Any,
                      follow_up_at: Any = None) -> dict[str, Any]:
        """The disposition of the call in wrap-up, from the campaign's list; ``follow_up_at`` (ISO date with
        a time zone) is the time agreed with the person, for dispositions that create a follow-up."""
        call = self._own_call(who, call_id, "disposition")
        wrap = self.seats[who.actor].wrap
        if wrap is None or wrap.done():
            raise DeskError(409, "the call is still up: set the disposition in wrap-up, once it has ended")
        if not isinstance(disposition, str) or disposition not in self.cfg.dispositions:
            raise DeskError(400, f"disposition {disposition!r} is not one of this campaign's: "
                            f"{', '.join(sorted(self.cfg.dispositions))}", allowed=sorted(self.cfg.dispositions))
        delay = follow_up_delay(self.cfg, disposition, call.lead)
        now = self.dialer.clock.now()
        out: dict[str, Any] = {"call_id": call_id, "disposition": disposition,
                               "follow_up_due": _iso(now + delay) if delay is not None else None}
        if follow_up_at is not None:
            if delay is None:
                raise DeskError(400, f"disposition {disposition!r} creates no follow-up; leave follow_up_at out")
            at = _when(follow_up_at)
            if at <= now:
                raise DeskError(400, "follow_up_at: the time agreed is in the past")
            self.audit.record(actor=who.actor, role=who.role, action="update", lead_id=call.lead.lead_id,
                              fields=("attributes.callback_requested_at",), reason="follow-up time agreed")
            call.lead.attributes = {**call.lead.attributes, "callback_requested_at": _iso(at)}
            await self.dialer.store.add_leads([call.lead])
            out["callback_requested_at"] = _iso(at)
            out["follow_up_due"] = _iso(at)  # engine.retry.next_attempt_at keeps the agreed time
        if wrap.done():  # the wrap-up timed out while the follow-up time was being stored
            raise DeskError(409, "the wrap-up has ended (timed out): the campaign's default disposition was taken")
        wrap.set_result(disposition)
        log.info("disposition set", agent_id=who.actor, call_id=call_id, disposition=disposition)
        return out

    async def hangup(self, who: Identity, call_id: str) -> dict[str, Any]:
        """End the agent's connected call (the phone's own hang-up works too)."""
        call = self._own_call(who, call_id, "hangup")
        if self.seats[who.actor].wrap is not None:
            raise DeskError(409, "the call has already ended")
        await self.dialer.pbx.hangup(call.call_id)
        return {"call_id": call_id, "hangup": True}

    def dispositions(self) -> list[dict[str, Any]]:
        """The campaign's dispositions as the wrap-up screen lists them."""
        return [{"name": name, "final": rule.final, "follow_up": rule.follow_up is not None
                 or rule.customer_follow_ups, "same_agent": rule.same_agent, "success": rule.success}
                for name, rule in self.cfg.dispositions.items()]

    def supervision(self, who: Identity) -> dict[str, Any]:
        """Live figures and each agent's state: no lead data (a supervisor reads a lead by its call)."""
        if who.role not in ("supervisor", "admin"):
            raise DeskError(403, "supervisors and admins only")
        from engine.status import figures

        pool = self.pool
        now = asyncio.get_running_loop().time()
        agents = [{"agent_id": a.agent_id, "state": a.state.value, "since_s": round(now - a.since, 1),
                   "call_id": a.call_id, "calls": a.calls, "screens": len(self.seats[a.agent_id].channels)}
                  for a in pool.agents.values()]
        return {"campaign": self.cfg.id, "figures": figures(self.dialer), "agents": agents}


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        raise DeskError(400, f"tags: give a list of at most {MAX_TAGS} tags")
    out = []
    for tag in value:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG:
            raise DeskError(400, f"tags: each tag is text of 1 to {MAX_TAG} characters")
        out.append(tag.strip())
    return tuple(out)


def _when(value: Any) -> float:
    if not isinstance(value, str):
        raise DeskError(400, "follow_up_at: an ISO date and time with its zone, e.g. 2026-01-06T17:30:00+01:00")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise DeskError(400, f"follow_up_at: {value!r} is not an ISO date and time") from None
    if at.tzinfo is None:
        raise DeskError(400, "follow_up_at: give the time zone (e.g. +01:00 or Z): the agent's and the "
                        "person's may differ")
    return at.timestamp()


"""The agent pool: explicit agent states, and handing agents to answered calls.

A live answer needs an agent within the connect limit. Agents who become free
go first to the oldest answered call waiting for one (it is about to be
abandoned), and only then back to the ready queue, longest idle first.

Agents belong to one *group* (one per pacing lane: e.g. senior agents taking
high-intent leads in preview while the others work the rest predictively). A
campaign with a single lane has the single group ``""``. Answers are served
within their own group, so each lane's pacer sees exactly the agents it can use.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from engine.models import Agent, AgentState

# The states read on every dial, bound once: in Python 3.11 each ``AgentState.READY`` goes through the enum
# metaclass's ``__getattr__`` hook (about 70 ns), and the pool changes an agent's state three times a call.
_READY, _ON_CALL, _WRAP_UP = AgentState.READY, AgentState.ON_CALL, AgentState.WRAP_UP
_PREVIEWING, _PAUSED = AgentState.PREVIEWING, AgentState.PAUSED

_ALLOWED: dict[AgentState, frozenset[AgentState]] = {
    AgentState.LOGGED_OUT: frozenset({AgentState.READY, AgentState.PAUSED}),
    AgentState.READY: frozenset({AgentState.PREVIEWING, AgentState.ON_CALL, AgentState.PAUSED,
                                 AgentState.LOGGED_OUT}),
    AgentState.PREVIEWING: frozenset({AgentState.READY, AgentState.ON_CALL, AgentState.WRAP_UP,
                                      AgentState.PAUSED, AgentState.LOGGED_OUT}),
    AgentState.ON_CALL: frozenset({AgentState.WRAP_UP, AgentState.READY}),
    AgentState.WRAP_UP: frozenset({AgentState.READY, AgentState.PAUSED, AgentState.LOGGED_OUT}),
    AgentState.PAUSED: frozenset({AgentState.READY, AgentState.LOGGED_OUT}),
}


class AgentStateError(RuntimeError):
    """An agent was asked to move between states that do not follow each other."""


class AgentPool:
    def __init__(self, agents: Iterable[Agent], clock: Callable[[], float],
                 on_ready: Callable[[], None] = lambda: None, groups: dict[str, str] | None = None) -> None:
        self._clock = clock
        self._on_ready = on_ready
        self.agents: dict[str, Agent] = {a.agent_id: a for a in agents}
        self.group_of: dict[str, str] = {a: (groups or {}).get(a, "") for a in self.agents}
        self.groups: tuple[str, ...] = tuple(dict.fromkeys(self.group_of.values())) or ("",)
        self.by_state: dict[AgentState, dict[str, Agent]] = {s: {} for s in AgentState}
        self._by_group: dict[str, dict[AgentState, dict[str, Agent]]] = {
            g: {s: {} for s in AgentState} for g in self.groups}
        for a in self.agents.values():
            self.by_state[a.state][a.agent_id] = a
            self._by_group[self.group_of[a.agent_id]][a.state][a.agent_id] = a
        self._ready: dict[str, OrderedDict[str, Agent]] = {g: OrderedDict() for g in self.groups}  # longest idle first
        self._waiters: dict[str, deque[asyncio.Future[Agent | None]]] = {g: deque() for g in self.groups}
        self.time_in: dict[str, dict[AgentState, float]] = {a: {} for a in self.agents}
        self.no_session: set[str] = set()  # agents whose PBX session is down: they take no call
        self._session_paused: set[str] = set()  # paused by the pool for that reason (not on a break)
        self.leaving: set[str] = set()  # logged out as soon as their call, wrap-up or preview ends (retire)

    # -- state changes ------------------------------------------------------------------

    def _move(self, agent: Agent, state: AgentState) -> None:
        if state not in _ALLOWED[agent.state]:
            raise AgentStateError(f"agent {agent.agent_id}: {agent.state.value} -> {state.value} not allowed")
        now = self._clock()
        spent = self.time_in[agent.agent_id]
        spent[agent.state] = spent.get(agent.state, 0.0) + (now - agent.since)
        group = self.group_of[agent.agent_id]
        del self.by_state[agent.state][agent.agent_id]
        del self._by_group[group][agent.state][agent.agent_id]
        self._ready[group].pop(agent.agent_id, None)
        agent.state, agent.since = state, now
        self.by_state[state][agent.agent_id] = agent
        self._by_group[group][state][agent.agent_id] = agent

    def add(self, agent: Agent, group: str = "") -> None:
        """A person who joins during the shift (e.g. newly on the agent API's roster), as they are
        (normally logged out). ``group`` is their lane; a lane that had nobody gets its queues now."""
        if agent.agent_id in self.agents:
            raise ValueError(f"agent {agent.agent_id} is already in the pool")
        if group not in self._by_group:
            self.groups = (*self.groups, group)
            self._by_group[group] = {s: {} for s in AgentState}
            self._ready[group] = OrderedDict()
            self._waiters[group] = deque()
        agent.since = self._clock()
        self.agents[agent.agent_id] = agent
        self.group_of[agent.agent_id] = group
        self.by_state[agent.state][agent.agent_id] = agent
        self._by_group[group][agent.state][agent.agent_id] = agent
        self.time_in[agent.agent_id] = {}

    def retire(self, agent_id: str) -> None:
        """The agent leaves (e.g. their token was revoked), without cutting anything short: logged out
        now when ready or paused, else when the call, wrap-up or preview in hand ends (``make_ready``
        logs them out instead), so no call is dropped and none is put through to them meanwhile."""
        agent = self.agents[agent_id]
        if agent.state in (AgentState.READY, AgentState.PAUSED, AgentState.LOGGED_OUT):
            self.leaving.discard(agent_id)
            self.logout(agent_id)
        else:
            self.leaving.add(agent_id)

    def stay(self, agent_id: str) -> None:
        """A retirement called off (the agent signed in again): the end of their call makes them ready."""
        self.leaving.discard(agent_id)

    def login(self, agent_id: str) -> None:
        self.make_ready(self.agents[agent_id])

    def logout(self, agent_id: str) -> None:
        agent = self.agents[agent_id]
        if agent.state in (AgentState.ON_CALL,):
            raise AgentStateError(f"agent {agent_id} is on a call; log out after wrap-up")
        self._session_paused.discard(agent_id)
        if agent.state != AgentState.LOGGED_OUT:
            self._move(agent, AgentState.LOGGED_OUT)

    def pause(self, agent_id: str) -> None:
        """A pause the desk asked for (a break). An agent already paused for a lost session is now on
        that break instead: the session coming back will not end it, only the desk's ``make_ready``."""
        if agent_id in self._session_paused:
            self._session_paused.discard(agent_id)
            return
        self._move(self.agents[agent_id], AgentState.PAUSED)

    # -- PBX sessions ----------------------------------------------------------------------

    def session_lost(self, agent_id: str) -> bool:
        """The agent's PBX session is gone, so a connect to them would fail: they take no call until
        :meth:`session_back`. A ready agent is paused now; one on a call, in wrap-up or previewing is
        left alone and paused instead of made ready when that ends; one on a break stays on it.
        False if nothing changed (unknown agent, already lost)."""
        agent = self.agents.get(agent_id)
        if agent is None or agent_id in self.no_session:
            return False
        self.no_session.add(agent_id)
        if agent.state == AgentState.READY:
            self._move(agent, AgentState.PAUSED)
            self._session_paused.add(agent_id)
        return True

    def session_back(self, agent_id: str) -> bool:
        """The session is up again: an agent the pool paused for its loss is ready again; a break, a call
        or a wrap-up goes on as it was. False if nothing changed."""
        if agent_id not in self.no_session:
            return False
        self.no_session.discard(agent_id)
        if agent_id in self._session_paused:
            self._session_paused.discard(agent_id)
            agent = self.agents[agent_id]
            if agent.state == AgentState.PAUSED:
                self.make_ready(agent)
        return True

    def make_ready(self, agent: Agent) -> None:
        """The agent can take a call: give them to the oldest waiting answer, else queue them.

        Without a PBX session (:meth:`session_lost`) they are paused instead, until it is back: the end
        of a call, a wrap-up or a break cannot make an agent ready whom no call could reach. An agent
        who is leaving (:meth:`retire`) is logged out instead."""
        if agent.agent_id in self.leaving:
            self.leaving.discard(agent.agent_id)
            self._session_paused.discard(agent.agent_id)
            if agent.state != AgentState.LOGGED_OUT:
                if AgentState.LOGGED_OUT not in _ALLOWED[agent.state]:
                    self._move(agent, AgentState.READY)  # e.g. ON_CALL, handed back unused: via READY
                self._move(agent, AgentState.LOGGED_OUT)
            return
        if agent.agent_id in self.no_session:
            if agent.state != AgentState.PAUSED:
                if AgentState.PAUSED not in _ALLOWED[agent.state]:
                    self._move(agent, AgentState.READY)  # e.g. ON_CALL, handed back unused: via READY
                self._move(agent, AgentState.PAUSED)
            self._session_paused.add(agent.agent_id)
            return
        if agent.state is not _READY:
            self._move(agent, _READY)
        group = self.group_of[agent.agent_id]
        waiters = self._waiters[group]
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self._move(agent, _ON_CALL)
                waiter.set_result(agent)
                return
        self._ready[group][agent.agent_id] = agent
        self._on_ready()

    def _take(self, group: str, state: AgentState, prefer: str | None = None) -> Agent | None:
        """``prefer`` if ready, else the longest-idle ready agent of the group, moved to ``state``;
        None if nobody is ready."""
        ready = self._ready[group]
        if not ready:
            return None
        agent = ready.get(prefer) if prefer is not None else None
        if agent is None:
            agent = next(iter(ready.values()))
        self._move(agent, state)
        return agent

    def start_preview(self, group: str = "", prefer: str | None = None) -> Agent | None:
        """An agent to show a lead to (preview mode): ``prefer`` (e.g. the agent a follow-up belongs
        to) when they are ready, else the longest idle."""
        return self._take(group, _PREVIEWING, prefer)

    def end_preview(self, agent: Agent) -> None:
        self.make_ready(agent)

    def take_ready(self, group: str = "", prefer: str | None = None) -> Agent | None:
        """An agent for an answered call, at once (``prefer`` first when ready)."""
        return self._take(group, _ON_CALL, prefer)

    def to_call(self, agent: Agent) -> None:
        """A previewing agent's own call was answered."""
        self._move(agent, _ON_CALL)

    def to_wrap_up(self, agent: Agent) -> None:
        self._move(agent, _WRAP_UP)

    def return_unused(self, agent: Agent) -> None:
        """An agent handed to a call that ended before the bridge goes straight back, without wrap-up."""
        self.make_ready(agent)

    async def acquire(self, limit: float, waiter: asyncio.Future[Agent | None] | None = None,
                      group: str = "", prefer: str | None = None) -> Agent | None:
        """An agent of ``group`` for an answered call within ``limit`` seconds, or None (abandoned).

        ``prefer`` is taken when ready; the customer never waits for them while someone else is
        free. The caller may pass the ``waiter`` future and resolve it with None itself to give up
        early (the customer hung up while waiting).

        The limit is one timer that cancels the shielded wait, what ``asyncio.timeout`` does without its
        context manager and its cancellation of the task: the task wakes in the same steps as under a timeout,
        so the simulator's runs keep their order of events. A cancellation of the task itself (its
        ``cancelling()`` count up) is not the limit and goes on up.
        """
        agent = self.take_ready(group, prefer)
        if agent is not None:
            return agent
        loop = asyncio.get_running_loop()
        if waiter is None:
            waiter = loop.create_future()
        self._waiters[group].append(waiter)
        shielded = asyncio.shield(waiter)
        timer = loop.call_later(limit, shielded.cancel)
        try:
            return await shielded
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                self._give_back(waiter)
                raise
            # The limit. An agent may have been handed over in the same instant it ran out.
            if waiter.done() and not waiter.cancelled():
                return waiter.result()
            waiter.cancel()
            return None
        except BaseException:
            self._give_back(waiter)
            raise
        finally:
            timer.cancel()

    def _give_back(self, waiter: asyncio.Future[Agent | None]) -> None:
        """An answer that stops waiting for its own reasons: an agent already handed to it goes back."""
        if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
            self.return_unused(waiter.result())
        waiter.cancel()

    # -- figures ------------------------------------------------------------------------

    def waiting_calls(self, group: str | None = None) -> int:
        queues = self._waiters.values() if group is None else (self._waiters[group],)
        return sum(1 for q in queues for w in q if not w.done())

    def count(self, state: AgentState, group: str | None = None) -> int:
        return len(self.by_state[state] if group is None else self._by_group[group][state])

    def elapsed(self, state: AgentState, group: str | None = None) -> tuple[float, ...]:
        now = self._clock()
        agents = self.by_state[state] if group is None else self._by_group[group][state]
        return tuple([now - a.since for a in agents.values()])

    def pacing_view(self, group: str, now: float) -> tuple[int, tuple[float, ...], tuple[float, ...], int, int]:
        """What a pacing snapshot takes from one group at ``now``, in one call (one is made per decision):
        agents ready, elapsed seconds of each agent on a call and of each in wrap-up (as ``elapsed``),
        agents previewing, agents paused."""
        states = self._by_group[group]
        return (len(states[_READY]), tuple([now - a.since for a in states[_ON_CALL].values()]),
                tuple([now - a.since for a in states[_WRAP_UP].values()]), len(states[_PREVIEWING]),
                len(states[_PAUSED]))

    def totals(self) -> dict[AgentState, float]:
        """Seconds spent in each state by the whole team, up to now."""
        now = self._clock()
        out: dict[AgentState, float] = {s: 0.0 for s in AgentState}
        for agent_id, spent in self.time_in.items():
            for state, secs in spent.items():
                out[state] += secs
            agent = self.agents[agent_id]
            out[agent.state] += now - agent.since
        return out

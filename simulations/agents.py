"""Simulated agents: think time in preview, wrap-up, dispositions, logins spread over the start, breaks."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from engine.agents import AgentPool
from engine.config import AgentModel, CustomerModel
from engine.models import Agent, AgentState, CallAttempt
from engine.pbx.sim import SimBackend


class SimDesk:
    """An ``engine.desk.AgentDesk`` played by a model of agents."""

    wrap_up_bounded = True  # a wrap-up lasts the time drawn for it (``AgentDesk.wrap_up``)

    def __init__(self, agents: AgentModel, customers: CustomerModel, backend: SimBackend | Any,
                 rng: np.random.Generator) -> None:
        self.a = agents
        self.c = customers
        self.backend = backend
        self.rng = rng
        self.previews = 0
        self.screen_pops: dict[str, dict] = {}  # last screen-pop per agent
        self._wraps: dict[str, float] = {}  # call id -> its wrap-up, drawn once (an oracle may ask early)
        self._break_due: dict[str, list[float]] = {}  # agent id -> loop times of the breaks still to take
        self.breaks_taken = 0
        self.wrap_ends: dict[str, float] = {}  # agent id -> loop time their current wrap-up ends
        self._pool: AgentPool | None = None

    def wrap_for(self, call_id: str) -> float:
        """How long the agent who took this call will spend in wrap-up (drawn once, on first ask)."""
        wrap = self._wraps.get(call_id)
        if wrap is None:
            wrap = self.a.wrap_mean if self.a.wrap_fixed else float(self.rng.exponential(self.a.wrap_mean))
            self._wraps[call_id] = wrap
        return wrap

    async def run(self, pool: AgentPool) -> None:
        self._pool = pool
        loop = asyncio.get_running_loop()
        start = loop.time()
        spread = self.a.login_spread
        for agent_id in pool.agents:
            if spread > 0:
                loop.call_at(start + float(self.rng.uniform(0, spread)), pool.login, agent_id)
            else:
                pool.login(agent_id)
            if self.a.breaks:
                # Break times spread over an 8-hour shift; each is taken at the agent's next free moment.
                due = sorted(start + float(t) for t in self.rng.uniform(1800, 8 * 3600 - 1800, self.a.breaks))
                self._break_due[agent_id] = due
                loop.call_at(due[0], self._maybe_break, pool, agent_id)
        await asyncio.Event().wait()  # the shift lasts until the campaign stops

    def _maybe_break(self, pool: AgentPool, agent_id: str) -> None:
        """A ready agent goes on break now; one busy on a call goes at the end of the wrap-up."""
        agent = pool.agents[agent_id]
        if agent.state == AgentState.READY:
            self._take_break(pool, agent)

    def _take_break(self, pool: AgentPool, agent: Agent) -> None:
        due = self._break_due.get(agent.agent_id)
        loop = asyncio.get_running_loop()
        if not due or due[0] > loop.time():
            return
        due.pop(0)
        self.breaks_taken += 1
        pool.pause(agent.agent_id)
        length = float(self.rng.exponential(self.a.break_mean))
        loop.call_later(length, self._back, pool, agent)
        if due:
            loop.call_at(max(due[0], loop.time() + length + 1.0), self._maybe_break, pool, agent.agent_id)

    @staticmethod
    def _back(pool: AgentPool, agent: Agent) -> None:
        if agent.state == AgentState.PAUSED:
            pool.make_ready(agent)

    async def preview(self, agent: Agent, call: CallAttempt) -> bool:
        self.previews += 1
        await asyncio.sleep(float(self.rng.exponential(self.a.think_mean)) if self.a.think_mean else 0.0)
        return bool(self.rng.random() >= self.a.skip_rate)

    def show(self, agent: Agent, screen_pop: dict) -> None:
        self.screen_pops[agent.agent_id] = screen_pop

    async def wrap_up(self, agent: Agent, call: CallAttempt) -> str | None:
        truth = getattr(self.backend, "truth", None)  # only the in-process PBX knows who answered
        plan = truth(call.call_id) if truth is not None else None
        wrap = self.wrap_for(call.call_id)
        self._wraps.pop(call.call_id, None)
        self.wrap_ends[agent.agent_id] = asyncio.get_running_loop().time() + wrap
        await asyncio.sleep(wrap)
        if agent.state != AgentState.WRAP_UP:
            return None
        due = self._break_due.get(agent.agent_id)
        if due and self._pool is not None and due[0] <= asyncio.get_running_loop().time():
            self._take_break(self._pool, agent)
        if plan is not None and plan.machine:
            return "answering_machine"
        u = self.rng.random()
        c = self.c
        if u < c.sale_rate:
            return "sale"
        if u < c.sale_rate + c.refusal_rate:
            return "refused"
        if u < c.sale_rate + c.refusal_rate + c.callback_rate:
            return "callback"
        return "not_interested"

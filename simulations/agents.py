"""Simulated agents: think time in preview, wrap-up, dispositions, shift, breaks."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from engine.agents import AgentPool
from engine.config import AgentModel, CustomerModel
from engine.models import Agent, AgentState, Alert, CallAttempt, Lead
from engine.pbx.sim import SimBackend


class SimDesk:
    """An ``engine.desk.AgentDesk`` played by a model of agents."""

    def __init__(self, agents: AgentModel, customers: CustomerModel, backend: SimBackend | Any,
                 rng: np.random.Generator) -> None:
        self.a = agents
        self.c = customers
        self.backend = backend
        self.rng = rng
        self.previews = 0
        self.screen_pops: dict[str, dict] = {}  # last screen-pop per agent

    async def run(self, pool: AgentPool) -> None:
        for agent_id in pool.agents:
            pool.login(agent_id)
        await asyncio.Event().wait()  # the shift lasts until the campaign stops

    async def preview(self, agent: Agent, lead: Lead, alerts: tuple[Alert, ...]) -> bool:
        self.previews += 1
        await asyncio.sleep(float(self.rng.exponential(self.a.think_mean)) if self.a.think_mean else 0.0)
        return bool(self.rng.random() >= self.a.skip_rate)

    def show(self, agent: Agent, screen_pop: dict) -> None:
        self.screen_pops[agent.agent_id] = screen_pop

    async def wrap_up(self, agent: Agent, call: CallAttempt) -> str | None:
        truth = getattr(self.backend, "truth", None)  # only the in-process PBX knows who answered
        plan = truth(call.call_id) if truth is not None else None
        wrap = self.a.wrap_mean if self.a.wrap_fixed else float(self.rng.exponential(self.a.wrap_mean))
        await asyncio.sleep(wrap)
        if agent.state != AgentState.WRAP_UP:
            return None
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

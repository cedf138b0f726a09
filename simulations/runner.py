"""Runs the real engine against simulated customers and agents.

The same ``Dialer`` that drives Asterisk is built here with the ``sim``
backend, the simulated agent desk and (by default) the in-memory store; run
under ``simulations.vloop`` it covers an 8-hour shift in seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pluggy

from engine.clock import Clock, LoopClock
from engine.config import CampaignConfig, SimulationSection
from engine.dialer import Dialer
from engine.models import Agent, Lead
from engine.pacing import make_pacer
from engine.pbx.base import PbxBackend
from engine.pbx.sim import SimBackend
from engine.plugins import make_plugin_manager, rank_leads
from engine.results import ResultWriter
from engine.store.base import Store
from engine.store.memory import MemoryStore
from simulations.agents import SimDesk
from simulations.model import CustomerBehaviour, generate_phones
from simulations.vloop import run_virtual


def generate_leads(cfg: CampaignConfig, n: int, seed: int) -> list[Lead]:
    """Leads with fictional numbers; when the campaign ranks by tags or customer types, each lead
    gets a seeded draw of the tags its rules and products mention, and a customer type.

    Every simulated lead lives in the campaign's time zone: the numbers are spread over US area
    codes only to be distinct, and a pacing run should measure pacing, not the calling window
    closing on the West coast at the start of a New York shift (imported leads keep their own zones).
    """
    rng = np.random.default_rng([seed, 3])
    phones = generate_phones(n, rng)
    tags = sorted({t for r in cfg.ranking.tiers for t in r.tags_any}
                  | {t for ts in cfg.ranking.products.values() for t in ts})
    types = sorted(cfg.customer_types) if cfg.ranking.tiers else []
    leads = []
    campaign_id, timezone = cfg.id, cfg.campaign.timezone  # read once, not once a lead
    for i, p in enumerate(phones, 1):
        lead = Lead(lead_id=f"L{i:07d}", campaign_id=campaign_id, phone=p, timezone=timezone)
        if tags:
            lead.tags = tuple(t for t in tags if rng.random() < 0.2)
        if types:
            lead.attributes = {"customer_type": types[int(rng.integers(len(types)))]}
        leads.append(lead)
    return leads


def simulated_agents(cfg: CampaignConfig, n: int) -> list[Agent]:
    """Agents A001..An; the first ones get the skills ``[agents] simulated_skills`` asks for."""
    agents = [Agent(f"A{i:03d}", skills=tuple(cfg.agents.skills.get(f"A{i:03d}", ()))) for i in range(1, n + 1)]
    start = 0
    for skill, count in cfg.agents.simulated_skills.items():
        for agent in agents[start:start + count]:
            agent.skills = (*agent.skills, skill)
        start += count
    return agents


async def run_sim_campaign(cfg: CampaignConfig, *, leads: list[Lead] | None = None, store: Store | None = None,
                           plugins: pluggy.PluginManager | None = None, mode: str | None = None,
                           until: float | None = None, seed: int | None = None,
                           results: ResultWriter | None = None, node_id: str = "node-1",
                           on_dialer: Callable[[Dialer], None] | None = None,
                           backend: PbxBackend | None = None, clock: Clock | None = None) -> dict[str, Any]:
    """One campaign with simulated agents; returns the KPI summary. Runs on whatever loop is running.

    The PBX is the simulated one unless ``backend`` is given (e.g. the Asterisk backend
    against the AMI emulator, where the emulator plays the customers). The calendar follows
    ``[simulation] start`` unless ``clock`` is given: a campaign on a real PBX or a shared store
    must read the real wall clock, or its calling windows and daily caps would be fiction."""
    sim = cfg.simulation or SimulationSection()
    seed = sim.seed if seed is None else seed
    start = sim.start if sim.start.tzinfo else sim.start.replace(tzinfo=ZoneInfo(cfg.campaign.timezone))
    clock = clock if clock is not None else LoopClock(start)
    behaviour = CustomerBehaviour(sim.customers, np.random.default_rng([seed, 1]))
    if backend is None:
        backend = SimBackend(behaviour, amd=cfg.amd.enabled)
    desk = SimDesk(sim.agent, sim.customers, backend, np.random.default_rng([seed, 2]))
    store = store if store is not None else MemoryStore()
    if leads is None:
        leads = generate_leads(cfg, sim.leads, seed)
    plugins = plugins or make_plugin_manager(cfg.campaign.plugins)
    await rank_leads(plugins, cfg, leads)
    await store.add_leads(leads)
    dialer = Dialer(cfg, store=store, pbx=backend, desk=desk, agents=simulated_agents(cfg, sim.agents),
                    plugins=plugins, clock=clock,
                    pacer=make_pacer(mode or cfg.campaign.mode), results=results, node_id=node_id)
    if on_dialer is not None:
        on_dialer(dialer)
    wall = time.perf_counter()
    summary = await dialer.run(until=sim.duration if until is None else until)
    summary.update(seed=seed, mode=dialer.pacer.name, campaign=cfg.id,
                   wall_s=round(time.perf_counter() - wall, 3),
                   leads=await store.lead_counts(cfg.id), previews=desk.previews,
                   abandon_messages=getattr(backend, "abandon_messages", None))
    return summary


def simulate(cfg: CampaignConfig, *, mode: str | None = None, seed: int | None = None,
             **kwargs: Any) -> dict[str, Any]:
    """A whole campaign in virtual time, from a fresh event loop."""
    return run_virtual(run_sim_campaign(cfg, mode=mode, seed=seed, **kwargs))


def in_real_time(coro: Any) -> Any:
    return asyncio.run(coro)

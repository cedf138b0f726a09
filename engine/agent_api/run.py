"""``dialer run`` with real agents: the campaign's Dialer built around the API desk.

The agents are the people of the token roster with role ``agent`` (skills from
``[agents] skills``); nobody is simulated. The PBX is the one given (Asterisk in
production) or, for a lab, the simulated one with ``[simulation] customers``.
The audit log every screen-pop, note and tag is written to is opened here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pluggy

from engine.agent_api.desk import ApiDesk
from engine.agent_api.tokens import Roster
from engine.audit import AuditLog
from engine.clock import Clock, SystemClock
from engine.config import CampaignConfig, SimulationSection
from engine.dialer import Dialer
from engine.models import Agent, Lead
from engine.pacing import make_pacer
from engine.pbx.base import PbxBackend
from engine.plugins import make_plugin_manager, rank_leads
from engine.results import ResultWriter
from engine.store.base import Store


def audit_path(cfg: CampaignConfig, results_dir: str | None = None) -> Path:
    """Where the campaign's audit log goes: ``[agents] audit_log``, else next to the results."""
    if cfg.agents.audit_log:
        return Path(cfg.agents.audit_log)
    return Path(results_dir or cfg.results.dir) / "audit.jsonl"


def api_agents(cfg: CampaignConfig, roster: Roster) -> list[Agent]:
    """One ``Agent`` per person with role ``agent``, with their skills."""
    return [Agent(a, skills=tuple(cfg.agents.skills.get(a, ()))) for a in roster.agents]


async def run_api_campaign(cfg: CampaignConfig, *, roster: Roster, store: Store, leads: list[Lead] | None,
                           results: ResultWriter | None, audit: AuditLog, node_id: str = "node-1",
                           backend: PbxBackend | None = None, clock: Clock | None = None,
                           plugins: pluggy.PluginManager | None = None, until: float | None = None,
                           on_dialer: Callable[[Dialer], None] | None = None) -> dict[str, Any]:
    """Run the campaign with real agents until it ends, ``until`` seconds pass, or ``stop()``.

    ``leads``: added to the store first (None: the store already holds them, or, on an in-memory
    store, the ``[simulation]`` leads are generated for a lab run).
    """
    sim = cfg.simulation or SimulationSection()
    if backend is None:
        from engine.pbx.sim import SimBackend
        from simulations.model import CustomerBehaviour

        backend = SimBackend(CustomerBehaviour(sim.customers, np.random.default_rng([sim.seed, 1])),
                             amd=cfg.amd.enabled)
    if leads is None and cfg.campaign.store == "memory":
        from simulations.runner import generate_leads

        leads = generate_leads(cfg, sim.leads, sim.seed)
    plugins = plugins or make_plugin_manager(cfg.campaign.plugins)
    if leads:
        await rank_leads(plugins, cfg, leads)
        await store.add_leads(leads)
    desk = ApiDesk(cfg, roster)
    dialer = Dialer(cfg, store=store, pbx=backend, desk=desk, agents=api_agents(cfg, roster), plugins=plugins,
                    clock=clock or SystemClock(), pacer=make_pacer(cfg.campaign.mode), results=results,
                    node_id=node_id, audit=audit)
    desk.attach(dialer)
    if on_dialer is not None:
        on_dialer(dialer)
    wall = time.perf_counter()
    summary = await dialer.run(until=until)
    summary.update(mode=dialer.pacer.name, campaign=cfg.id, wall_s=round(time.perf_counter() - wall, 3),
                   leads=await store.lead_counts(cfg.id), agent_api={"host": desk.host, "port": desk.port})
    return summary

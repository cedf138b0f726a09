"""Small builders shared by the engine tests: campaigns, scripted customers, one-shot runs."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.clock import LoopClock
from engine.config import CampaignConfig, campaign_from_dict
from engine.dialer import Dialer
from engine.models import Q850, Agent, AnswerKind, CallAttempt, Lead
from engine.pacing import make_pacer
from engine.pbx.sim import CallPlan, SimBackend
from engine.plugins import make_plugin_manager
from engine.store.memory import MemoryStore
from simulations.agents import SimDesk


def campaign(**sections: Any) -> CampaignConfig:
    data: dict[str, Any] = {"campaign": {"id": "t", "mode": "progressive"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return campaign_from_dict(data)


class Script:
    """Customers whose every call follows a plan chosen by the lead id."""

    def __init__(self, plans: dict[str, CallPlan]) -> None:
        self.plans = plans

    def plan(self, call: CallAttempt, ring_timeout: float) -> CallPlan:
        return self.plans[call.lead.lead_id]


def human(after: float = 3.0, talk: float = 60.0, patience: float = 10.0) -> CallPlan:
    return CallPlan(after, machine=False, amd_verdict=AnswerKind.HUMAN, talk=talk, patience=patience)


def machine(after: float = 3.0, verdict: AnswerKind = AnswerKind.MACHINE) -> CallPlan:
    return CallPlan(after, machine=True, amd_verdict=verdict, talk=20.0)


def unanswered(cause: int, after: float = 4.0) -> CallPlan:
    return CallPlan(None, cause=int(cause), end_after=after)


NO_ANSWER = CallPlan(None, cause=int(Q850.NO_ANSWER), end_after=25.0)


async def run_script(cfg: CampaignConfig, plans: dict[str, CallPlan], *, agents: int = 1,
                     until: float | None = None, plugins: list[object] = (), store: MemoryStore | None = None,
                     seed: int = 1, pacer: Any = None, leads: list[Lead] | None = None,
                     **dialer_kwargs: Any) -> tuple[Dialer, dict[str, Any], MemoryStore]:
    """Run the real dialer on the sim backend with scripted customers (inside a virtual-time loop)."""
    store = store or MemoryStore()
    await store.add_leads(leads if leads is not None else
                          [Lead(lead_id=lid, campaign_id=cfg.id, phone=f"+1212555{i:04d}")
                           for i, lid in enumerate(plans, 1)])
    backend = SimBackend(Script(plans), amd=cfg.amd.enabled)
    sim = cfg.simulation
    desk = SimDesk(sim.agent if sim else _agent_model(), sim.customers if sim else _customer_model(), backend,
                   np.random.default_rng(seed))
    from datetime import datetime

    dialer = Dialer(cfg, store=store, pbx=backend, desk=desk,
                    agents=[Agent(f"A{i}") for i in range(1, agents + 1)],
                    plugins=make_plugin_manager(entry_points_too=False, extra=plugins),
                    clock=LoopClock(datetime(2026, 1, 5, 14, 0)),
                    pacer=pacer or make_pacer(cfg.campaign.mode), **dialer_kwargs)
    summary = await dialer.run(until=until)
    return dialer, summary, store


def _agent_model() -> Any:
    from engine.config import AgentModel

    return AgentModel(wrap_mean=10.0, think_mean=2.0, skip_rate=0.0)


def _customer_model() -> Any:
    from engine.config import CustomerModel

    return CustomerModel(sale_rate=0.0, refusal_rate=0.0, callback_rate=0.0)


class DialAll:
    """A test pacer: as many dials as the dial-ratio cap allows."""

    name = "dial-all"

    def decide(self, snap: Any) -> Any:
        from engine.pacing import Decision, dial_cap

        return Decision(dials=dial_cap(snap))

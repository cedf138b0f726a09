"""Pacing lanes: one campaign, several pacing modes by lead tier.

High-intent leads deserve a person who has read them first (preview), the
bulk is best dialled predictively, and some tiers are not dialled at all.
``[ranking] modes`` maps tiers to modes and ``mode_skills`` names the agent
skill a mode needs. Each lane has its own pacer, its tiers and its agents
(an agent belongs to the first lane whose skill they have, else to the lane of
``campaign.mode``), so each pacer decides on exactly the agents it can use.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import CampaignConfig
from engine.models import Agent
from engine.pacing import Pacer, make_pacer

ALL_TIERS = frozenset(range(10))


@dataclass(frozen=True)
class Lane:
    name: str  # also the agent group; "" when the campaign has a single lane
    pacer: Pacer
    tiers: frozenset[int] | None  # None: every tier


def build_lanes(cfg: CampaignConfig, agents: list[Agent], pacer: Pacer | None = None
                ) -> tuple[list[Lane], dict[str, str]]:
    """The lanes and each agent's lane (group)."""
    modes = {int(t): m for t, m in cfg.ranking.modes.items()}
    if not modes:
        return [Lane("", pacer or make_pacer(cfg.campaign.mode), None)], {}
    tiers_of: dict[str, set[int]] = {}
    for tier, mode in modes.items():
        tiers_of.setdefault(mode, set()).add(tier)
    rest = ALL_TIERS - set(modes)
    if rest:
        tiers_of.setdefault(cfg.campaign.mode, set()).update(rest)
    lanes = [Lane(mode, pacer if pacer is not None and mode == cfg.campaign.mode else make_pacer(mode),
                  frozenset(tiers)) for mode, tiers in sorted(tiers_of.items())]
    default = cfg.campaign.mode if cfg.campaign.mode in tiers_of else lanes[-1].name
    groups: dict[str, str] = {}
    for agent in agents:
        lane = next((m for m, skill in cfg.ranking.mode_skills.items() if m in tiers_of and skill in agent.skills),
                    default)
        groups[agent.agent_id] = lane
    return lanes, groups

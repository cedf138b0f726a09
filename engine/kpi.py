"""Figures operators judge a campaign by, with the project's one set of definitions.

Abandon rate = abandoned / live answers (never over all dials). Occupancy =
(talk + wrap-up) / logged-in time. Talk minutes per agent hour = talk /
logged-in hours x 60.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from engine.models import AgentState


@dataclass
class Counters:
    dials: int = 0  # originates sent
    answered: int = 0  # any answer (human, machine, unknown)
    live: int = 0  # live answers (abandon-rate denominator)
    connected: int = 0
    abandoned: int = 0
    machines: int = 0
    amd_false_positives: int = 0  # estimated people dropped as machines, counted in live and abandoned
    blocked: int = 0  # dials refused by the gate or the reservation
    skipped: int = 0  # preview skips
    errors: int = 0  # calls whose handling raised (logged); should stay 0
    interrupted: int = 0
    held: int = 0  # pacing decisions skipped because the event loop was behind (backpressure)
    talk_s: float = 0.0
    wrap_s: float = 0.0


def summarize(counters: Counters, time_in: dict[AgentState, float], agents: int, elapsed: float,
              leads: dict[str, int]) -> dict[str, Any]:
    logged_in = sum(v for s, v in time_in.items() if s != AgentState.LOGGED_OUT)
    talk = time_in.get(AgentState.ON_CALL, 0.0)
    wrap = time_in.get(AgentState.WRAP_UP, 0.0)
    out: dict[str, Any] = asdict(counters)
    out.update(
        agents=agents,
        elapsed_s=round(elapsed, 1),
        logged_in_h=round(logged_in / 3600, 3),
        occupancy=round((talk + wrap) / logged_in, 4) if logged_in else 0.0,
        talk_min_per_agent_hour=round(talk / 60 / (logged_in / 3600), 2) if logged_in else 0.0,
        abandon_rate=round(counters.abandoned / counters.live, 4) if counters.live else 0.0,
        contact_rate=round(counters.live / counters.dials, 4) if counters.dials else 0.0,
        leads=leads,
    )
    return out

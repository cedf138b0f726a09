"""What every pacer sees and returns.

Pacers are pure and synchronous: a ``Snapshot`` in, a ``Decision`` out, no
clock read and no I/O, so the simulator and the tests can drive them directly
and one seed gives one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine.models import slot_init
from engine.pacing.estimates import Estimates


@slot_init  # one per pacing decision
@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state of one campaign at one instant, as the pacer needs it."""

    now: float  # loop time
    ready: int  # agents ready and not yet promised a call
    on_call: tuple[float, ...]  # elapsed talk seconds of each agent on a call
    wrap_up: tuple[float, ...]  # elapsed seconds of each agent in wrap-up
    previewing: int  # agents looking at a lead (preview mode)
    paused: int
    ringing: tuple[float, ...]  # elapsed seconds of each call dialled and not yet answered
    waiting: int  # live answers waiting for an agent right now
    estimates: Estimates  # distributions learnt online for this campaign
    allowance: float  # the abandon controller's current marginal abandon allowance (0..1)
    connect_limit: float
    ring_timeout: float
    max_dial_ratio: float
    live: int = 0  # live answers counted by this campaign so far (for pacers with their own drop feedback)
    abandoned: int = 0  # abandoned calls among them

    @property
    def staffed(self) -> int:
        """Agents who will take calls: ready, previewing, on a call or in wrap-up."""
        return self.ready + self.previewing + len(self.on_call) + len(self.wrap_up)


@slot_init  # one per pacing decision
@dataclass(frozen=True, slots=True)
class Decision:
    """How many customer calls to start now, and (preview mode) how many agents to hand a lead."""

    dials: int = 0
    previews: int = 0


@runtime_checkable
class Pacer(Protocol):
    """A pacing strategy. Registered under the ``dialer.pacers`` entry-point group."""

    name: str

    def decide(self, snap: Snapshot) -> Decision:
        """Return the dials (and previews) to start now; must be fast and must not block."""


def dial_cap(snap: Snapshot) -> int:
    """Most new dials any pacer may start: the dial ratio cap over staffed agents."""
    limit = int(snap.max_dial_ratio * snap.staffed) - len(snap.ringing) - snap.waiting
    return max(0, limit)

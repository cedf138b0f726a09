"""Progressive pacing: exactly one call in flight per ready agent; no abandons by design
(apart from answers that arrive while the agent was taken by an earlier one)."""

from __future__ import annotations

from engine.pacing.base import Decision, Snapshot


class ProgressivePacer:
    name = "progressive"

    def decide(self, snap: Snapshot) -> Decision:
        return Decision(dials=max(0, snap.ready - len(snap.ringing) - snap.waiting))

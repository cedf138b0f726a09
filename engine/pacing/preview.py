"""Preview pacing: each ready agent is handed one lead; the dial starts on the agent's go."""

from __future__ import annotations

from engine.pacing.base import Decision, Snapshot


class PreviewPacer:
    name = "preview"
    preview = True

    def decide(self, snap: Snapshot) -> Decision:
        return Decision(previews=snap.ready)

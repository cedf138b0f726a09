"""Pacing: pure pacers (snapshot in, decision out) and the abandon-rate controller.

Pacers are found through the ``dialer.pacers`` entry-point group, so a plugin
package can ship its own; the built-in ones are registered there too.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from engine.pacing.base import Decision, Pacer, Snapshot, dial_cap
from engine.pacing.controller import AbandonController
from engine.pacing.estimates import Estimates
from engine.pacing.predictive import PredictivePacer
from engine.pacing.preview import PreviewPacer
from engine.pacing.progressive import ProgressivePacer

BUILTIN: dict[str, type] = {
    "preview": PreviewPacer,
    "progressive": ProgressivePacer,
    "predictive": PredictivePacer,
}

ENTRY_POINT_GROUP = "dialer.pacers"


def available_pacers() -> dict[str, object]:
    """Pacer names to their factories: built-ins, then entry points (which may add, not replace)."""
    found: dict[str, object] = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep
    return found


def make_pacer(name: str) -> Pacer:
    factory = available_pacers().get(name)
    if factory is None:
        raise KeyError(f"unknown pacer {name!r}; available: {', '.join(sorted(available_pacers()))}")
    if hasattr(factory, "load"):
        try:
            factory = factory.load()
        except Exception as exc:
            raise ImportError(f"pacer plugin {name!r} (entry point {factory.value}) failed to import: {exc}") \
                from exc
    pacer = factory()
    if not isinstance(pacer, Pacer):
        raise TypeError(f"pacer {name!r} has no name attribute and decide(snapshot) method")
    return pacer


__all__ = [
    "AbandonController",
    "Decision",
    "Estimates",
    "Pacer",
    "PredictivePacer",
    "PreviewPacer",
    "ProgressivePacer",
    "Snapshot",
    "available_pacers",
    "dial_cap",
    "make_pacer",
]

"""The claim order: a bonus per time zone for the leads of a claim, from the ``dialer_claim_order`` hook.

The store orders a tier's leads by score plus their zone's bonus at claim time (``Store.claim_leads``),
so that leads in zones where it is now a good hour to call come first, without rewriting stored scores.
The bonus moves with the called parties' local hours, so it is asked for again every wall-clock minute
(``EVERY_S``); in between the claims, which are on the hot path, reuse it at no cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy

from engine.plugins import await_maybe

EVERY_S = 60.0  # wall-clock seconds one answer of the hook is used for


class ClaimOrder:
    """The zone bonuses a dialer passes to ``claim_leads``: the sum of every ``dialer_claim_order``
    result, asked at most once per wall-clock minute (the zones from ``Store.lead_zones`` with it)."""

    def __init__(self, plugins: pluggy.PluginManager, campaign: Any, store: Any, log: Any,
                 every_s: float = EVERY_S) -> None:
        self._hook = getattr(plugins.hook, "dialer_claim_order", None)
        self._campaign, self._store, self._log, self._every = campaign, store, log, every_s
        self._slot: float | None = None
        self._bonus: dict[str, float] | None = None

    async def bonus(self, now: float) -> Mapping[str, float] | None:
        """The bonus per zone for a claim at wall-clock ``now``, or None (plain score order). A store
        without ``lead_zones`` (an older third-party one) or no implementation: None, and no store read."""
        if self._hook is None or not self._hook.get_hookimpls() or not hasattr(self._store, "lead_zones"):
            return None
        slot = now // self._every
        if slot == self._slot:
            return self._bonus
        zones = await self._store.lead_zones(self._campaign.id)  # StoreUnavailable: asked again next time
        self._slot = slot
        self._bonus = None
        total: dict[str, float] = {}
        try:
            for result in self._hook(campaign=self._campaign, now=now, zones=sorted(zones)):
                got = await await_maybe(result)
                for zone, value in (got or {}).items():
                    total[zone] = total.get(zone, 0.0) + float(value)
        except Exception as exc:  # ordering is advice: a failing plugin leaves the plain score order
            self._log.warning("dialer_claim_order failed: claims in plain score order for now",
                              error=f"{type(exc).__name__}: {exc}")
            return None
        self._bonus = {zone: value for zone, value in total.items() if value} or None
        return self._bonus

"""The store goes away mid-campaign: dialling stops (fail closed), calls in flight are still
tracked, their results are written once the store is back, and dialling resumes."""

from __future__ import annotations

import asyncio
import functools

import pytest
from helpers import campaign, human, run_script
from test_hopper import Steady

from engine.pbx.sim import SimBackend
from engine.store.base import StoreUnavailable
from engine.store.memory import MemoryStore


class FlakyStore(MemoryStore):
    """The in-memory store behind a switch: while ``down``, every call fails like a lost connection."""

    down = False

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name.startswith("_") or not asyncio.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def guarded(*a, **k):
            if MemoryStore.__getattribute__(self, "down"):
                raise StoreUnavailable("connection refused")
            return await attr(*a, **k)

        return guarded


@pytest.mark.parametrize("ahead", [False, True], ids=["direct", "reserved-ahead"])
def test_outage_pauses_dialling_and_loses_nothing(vrun, monkeypatch, ahead):
    dial_times: list[float] = []
    orig = SimBackend.originate

    async def spy(self, call, **kw):
        dial_times.append(asyncio.get_running_loop().time())
        return await orig(self, call, **kw)

    monkeypatch.setattr(SimBackend, "originate", spy)
    store = FlakyStore()
    cfg = campaign(retry={"max_attempts": 1}, pacing={"reserve_ahead": ahead})
    plans = {f"L{i}": human(after=2, talk=30) for i in range(1, 21 if ahead else 6)}

    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        loop.call_at(t0 + 10, setattr, store, "down", True)  # the first call is connected by then
        loop.call_at(t0 + 200, setattr, store, "down", False)
        # reserved ahead: a pacer that asks for a dial at every decision while fewer than two calls ring,
        # so that the hopper is in use when the store goes away
        return await run_script(cfg, plans, store=store, pacer=Steady(1, 2) if ahead else None)

    dialer, summary, store = vrun(main())
    # Fail closed during the outage. Reserved ahead: a lead reserved before it may still go out until the
    # outage is seen, within the hopper's age limit (1 s); no reservation is made during it.
    assert not [t for t in dial_times if 10 + (1.0 if ahead else 0.0) < t < 200], dial_times
    assert dial_times[0] < 10 and any(t >= 200 for t in dial_times)
    rows = vrun(store.results("t"))
    assert sorted(r["lead_id"] for r in rows) == sorted(plans)  # every call recorded, none twice
    first = next(r for r in rows if r["lead_id"] == "L1")
    assert first["outcome"] == "connected"
    assert summary["errors"] == 0
    if ahead:  # dials really went out from the hopper, and nothing it held was lost in the outage
        assert summary["reserve_ahead"]["taken"] > 0
        assert vrun(store.lead_counts("t")) == {"pending": 0, "leased": 0, "in_call": 0, "done": len(plans)}

"""Whole shifts in virtual time: the figures the spine promises on the reference scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_campaign
from simulations.runner import simulate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def twenty_agents():
    cfg = load_campaign(ROOT / "simulations" / "scenarios" / "twenty_agents.toml")
    return {mode: simulate(cfg, mode=mode) for mode in ("progressive", "predictive")}


def test_progressive_matches_its_closed_form(twenty_agents):
    # Each success costs (1/p - 1) no-answers of 25 s plus an 8 s answer delay of idle time,
    # against 135 s of talk and wrap: occupancy = 135 / (135 + 75 + 8) = 0.619 at p = 0.25.
    assert twenty_agents["progressive"]["occupancy"] == pytest.approx(0.619, abs=0.02)
    assert twenty_agents["progressive"]["abandon_rate"] <= 0.005


def test_predictive_holds_the_cap_and_beats_progressive(twenty_agents):
    pred, prog = twenty_agents["predictive"], twenty_agents["progressive"]
    assert pred["abandon_rate"] <= 0.03
    assert pred["occupancy"] >= prog["occupancy"] + 0.2
    assert pred["occupancy"] >= 0.85
    assert pred["errors"] == 0 and prog["errors"] == 0

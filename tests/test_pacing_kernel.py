"""The compiled pacing decisions (``engine.pacing.kernel``) against the numpy reference path: the same
dials on random snapshots, with tables learnt from data, and the same simulated shift to the last digit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.pacing import Estimates, PredictivePacer, dial_cap
from engine.testing import snapshot
from simulations.sweep import REFERENCE, Cell, run_cell


def _learnt(rng: np.random.Generator) -> Estimates:
    """Estimates that have seen calls: tables unlike the priors, and an answer rate off its prior."""
    est = Estimates(answer_rate=float(rng.uniform(0.1, 0.4)))
    rate = float(rng.uniform(0.05, 0.6))
    for i in range(int(rng.integers(0, 400))):
        answered = bool(rng.random() < rate)
        est.observe_answer(answered, float(rng.gamma(4.0, 2.0)) if answered else None, call_id=f"c{i}")
        if answered:
            est.observe_talk(float(rng.exponential(90.0)))
            est.observe_wrap(float(rng.uniform(3.0, 30.0)))
    return est


def _random_snapshots(seed: int, count: int, agents: tuple[int, int]):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        busy = int(rng.integers(*agents))
        est = _learnt(rng)
        yield snapshot(ready=int(rng.integers(0, 5)), waiting=int(rng.integers(0, 3)),
                       on_call=tuple(rng.exponential(100.0, busy)),
                       wrap_up=tuple(rng.uniform(0.0, 40.0, int(rng.integers(0, 1 + busy // 4)))),
                       ringing=tuple(rng.uniform(0.0, 27.0, int(rng.integers(0, 2 * busy + 1)))),
                       allowance=float(rng.choice([0.001, 0.01, 0.03, 0.1, 0.3, rng.uniform(0.0, 0.5)])),
                       estimates=est)


def _reference() -> PredictivePacer:
    pacer = PredictivePacer()
    pacer.compiled = False
    return pacer


def test_normal_path_decides_as_the_numpy_reference():
    compiled, reference = PredictivePacer(), _reference()
    compiled.exact_max = reference.exact_max = -1
    decided = []
    for s in _random_snapshots(11, 300, (1, 150)):
        want = reference.decide(s).dials
        assert compiled.decide(s).dials == want
        cap = dial_cap(s)
        if cap:
            assert compiled.normal_first_over(s, cap) == reference.parts(s).first_over(cap, s.allowance)
        decided.append(want)
    assert len(set(decided)) > 5  # the snapshots span many decisions, not one answer repeated


def test_exact_path_decides_as_the_numpy_reference():
    compiled, reference = PredictivePacer(), _reference()
    compiled.exact_max = reference.exact_max = 10_000
    decided = []
    for s in _random_snapshots(12, 300, (0, 14)):
        want = reference.decide(s).dials
        assert compiled.decide(s).dials == want
        cap = dial_cap(s)
        assert compiled.exact_first_over(s, cap) == reference.reference_exact_first_over(s, cap)
        decided.append(want)
    assert len(set(decided)) > 3


def test_many_candidates_and_extreme_allowances():
    # A large team's first decision (all ready: over a hundred candidates), and allowances at the ends.
    compiled, reference = PredictivePacer(), _reference()
    for s in _random_snapshots(13, 40, (50, 120)):
        for allowance in (0.0, 1e-9, 0.5, 1.0):
            s2 = replace(s, allowance=allowance, ready=int(s.ready + 60))
            assert compiled.decide(s2).dials == reference.decide(s2).dials
    first = snapshot(ready=100, answer_rate=0.3)
    assert compiled.decide(first).dials == reference.decide(first).dials > 100


@pytest.mark.parametrize("agents", [5, 30])  # the exact path, then the normal one
def test_a_simulated_shift_is_the_same_to_the_last_digit(agents, monkeypatch):
    cell = Cell(str(REFERENCE), "predictive", 3, agents, 0.3, 0.5)
    compiled = run_cell(cell).kpi
    monkeypatch.setattr(PredictivePacer, "compiled", False)
    reference = run_cell(cell).kpi
    keys = ("dials", "live", "abandoned", "occupancy", "abandon_rate")
    assert {k: compiled[k] for k in keys} == {k: reference[k] for k in keys}
    assert compiled["dials"] > 50 * agents * 0.5 / 5

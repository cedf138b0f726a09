"""The science behind pacing: estimators, the abandon controller, the baselines, the oracle on
hand-checked cases, the behaviour model, and reproducibility by seed."""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.config import AgentModel, CustomerModel, SimulationSection
from engine.models import Agent, AgentState, CallAttempt, Lead
from engine.pacing import AbandonController, Estimates, PredictivePacer, Snapshot, dial_cap
from engine.pacing.estimates import AnswerRate
from engine.pacing.predictive import fast_sf, normal_sf
from engine.pbx.sim import CallPlan, _Call
from engine.store.base import AbandonCounts
from engine.testing import snapshot
from simulations.agents import SimDesk
from simulations.baselines import ClassicForecastPacer, FixedRatioPacer, OraclePacer, VicidialPacer
from simulations.bench_pacing import closed_form_progressive
from simulations.model import CustomerBehaviour, Draw
from simulations.sweep import REFERENCE, Cell, aggregate, run_cell, windows_over

ROOT = Path(__file__).resolve().parent.parent


def snap(**kw) -> Snapshot:
    """The shipped snapshot builder, with nobody ready unless said and a prior answer rate of 0.3."""
    return snapshot(**{"ready": 0, "answer_rate": 0.3, **kw})


# -- estimators ---------------------------------------------------------------------------


def test_answer_rate_uncertainty_shrinks_with_data():
    a = AnswerRate(prior=0.25, prior_weight=30.0, memory=10_000.0)
    before = a.variance
    rng = np.random.default_rng(3)
    for _ in range(2000):
        a.add(bool(rng.random() < 0.3))
    assert a.variance < before / 20
    assert a.p == pytest.approx(0.3, abs=0.03)


def test_free_within_follows_the_learnt_wrap_and_talk():
    est = Estimates(answer_rate=0.3, talk_mean=120.0, wrap_mean=15.0)
    for _ in range(3000):
        est.observe_wrap(15.0)
    h = np.array([2.0])
    _, wq = est.free_within(np.zeros(0), np.array([0.5, 14.0]), h)
    assert wq[0, 0] < 0.05  # just started a 15 s wrap-up: not free within 2 s
    assert wq[1, 0] > 0.9  # 14 s into it: free within 2 s
    # Talk is exponential: memoryless, so 10 s or 300 s into a call makes little difference.
    rng = np.random.default_rng(1)
    for _ in range(4000):
        est.observe_talk(float(rng.exponential(120.0)))
    tq, _ = est.free_within(np.array([10.0, 300.0]), np.zeros(0), np.array([60.0]))
    assert tq[0, 0] == pytest.approx(tq[1, 0], abs=0.06)
    assert tq[0, 0] == pytest.approx(1 - math.exp(-(60.0 - 15.0) / 120.0), abs=0.06)


def test_learning_reaches_the_pacers_tables():
    est = Estimates(answer_rate=0.3, talk_mean=120.0)
    h = np.array([40.0])  # 40 s from now: the 15 s wrap-up leaves 25 s for the rest of the talk
    before = est.free_within(np.array([5.0]), np.zeros(0), h)[0][0, 0]
    for _ in range(2000):
        est.observe_talk(20.0)  # every call now lasts 20 s
    after = est.free_within(np.array([5.0]), np.zeros(0), h)[0][0, 0]
    assert after > before + 0.3


def test_answered_within_falls_as_a_call_rings_on():
    est = Estimates(answer_rate=0.3, ring_mean=8.0, ring_timeout=25.0)
    a = est.answered_within(np.array([0.0, 6.0, 12.0, 20.0]), np.array([25.0]))[:, 0]
    assert np.all(np.diff(a) < 0)
    assert a[0] == pytest.approx(0.3, abs=0.02)


def test_fast_sf_matches_the_exact_one():
    z = np.linspace(-8, 8, 2001)
    assert np.max(np.abs(fast_sf(z) - normal_sf(z))) < 5e-7


# -- the predictive pacer ------------------------------------------------------------------


def test_fast_decision_equals_the_full_marginal_risk_scan():
    # The normal-approximation path: candidates one by one in plain floats, then in vector blocks, must
    # give the very answer of the full marginal-risk vector.
    rng = np.random.default_rng(7)
    pacer = PredictivePacer()
    pacer.exact_max = -1  # every snapshot on the normal path
    for _ in range(60):
        n = int(rng.integers(1, 60))
        s = snap(ready=int(rng.integers(0, 4)), on_call=tuple(rng.exponential(100, n)),
                 wrap_up=tuple(rng.uniform(0, 15, int(rng.integers(0, 4)))),
                 ringing=tuple(rng.uniform(0, 25, int(rng.integers(0, n)))), allowance=float(rng.uniform(0.005, 0.2)))
        cap = dial_cap(s)
        if cap == 0:
            continue
        risk = pacer.marginal_risk(s, cap)
        over = np.flatnonzero(risk > s.allowance)
        expected = int(over[0]) if over.size else cap
        assert pacer.decide(s).dials == expected
        assert pacer.parts(s).first_over(cap, s.allowance) == expected


def test_scalar_interpolation_is_numpys():
    from engine.pacing.predictive import _Z, _sf_scalar

    z = np.concatenate([np.random.default_rng(2).normal(0.0, 4.0, 5000), _Z, _Z + 1e-12, _Z - 1e-12, [-30.0, 30.0]])
    assert np.array_equal(fast_sf(z), np.array([_sf_scalar(x) for x in z.tolist()]))


def _brute_marginal(pacer: PredictivePacer, s: Snapshot, n: int) -> float:
    """The exact marginal abandon risk of the (n+1)-th new dial, by enumerating every outcome."""
    est = s.estimates
    horizons, weight, ring_cdf, agent_horizons = pacer._grid(s)
    calls = est.answered_within(np.asarray(s.ringing, dtype=float), horizons)
    tq, wq = est.free_within(np.asarray(s.on_call, dtype=float), np.asarray(s.wrap_up, dtype=float), agent_horizons)
    risk = []
    for h in range(len(horizons)):
        answers = [*calls[:, h], *[est.answer.p * ring_cdf[h]] * n]
        frees = [*tq[:, h], *wq[:, h]]
        total = 0.0
        for outs in itertools.product((0, 1), repeat=len(answers) + len(frees)):
            pr = math.prod(q if o else 1 - q for o, q in zip(outs, answers + frees, strict=True))
            if s.waiting + sum(outs[:len(answers)]) >= s.ready + sum(outs[len(answers):]):
                total += pr
        risk.append(total)
    return float(np.maximum.accumulate(np.array(risk)[::-1])[::-1] @ weight)


def test_exact_path_matches_enumerating_every_outcome():
    pacer = PredictivePacer()
    cases = [snap(ready=1, on_call=(30.0, 200.0), wrap_up=(10.0,), ringing=(2.0, 9.0)),
             snap(ready=0, on_call=(5.0, 60.0, 400.0), wrap_up=(13.0,), ringing=(1.0,), waiting=0),
             snap(ready=2, on_call=(100.0,), ringing=(0.5, 3.0, 20.0))]
    for s in cases:
        risks = [_brute_marginal(pacer, s, n) for n in range(4)]
        assert all(b >= a - 1e-12 for a, b in itertools.pairwise(risks))
        assert pacer.marginal_risk(s, 4) == pytest.approx(risks, abs=1e-12)  # the path decide takes
        for allowance in (0.01, 0.05, 0.1, 0.2, 0.3):
            expected = next((n for n, r in enumerate(risks) if r > allowance), None)
            if expected is None:
                continue  # beyond the candidates enumerated
            s2 = replace(s, allowance=allowance)
            assert pacer.exact_first_over(s2, dial_cap(s2)) == expected
            assert pacer.decide(s2).dials == expected  # few calls and agents: decided on the exact path


def test_exact_path_for_small_teams_normal_for_large():
    from engine.pacing.predictive import EXACT_TERMS

    pacer = PredictivePacer()
    calls = []
    pacer.exact_first_over = lambda s, cap: calls.append("exact") or 0  # type: ignore[method-assign]
    pacer.decide(snap(ready=1, on_call=(30.0,) * 4, ringing=(1.0,)))
    pacer.decide(snap(ready=1, on_call=(30.0,) * EXACT_TERMS, ringing=(1.0,)))
    pacer.decide(snap(ready=EXACT_TERMS + 1))  # a large team's first decision: all ready, nothing ringing
    assert calls == ["exact"]


def test_predictive_dials_nothing_without_agents():
    assert PredictivePacer().decide(snap()).dials == 0


# -- the controller -----------------------------------------------------------------------


def test_controller_allowance_rises_under_target_and_falls_over_it():
    under = AbandonController(0.03, [30 * 86400.0])
    start = under.allowance
    for i in range(1, 201):
        under.observe(10, 0, [AbandonCounts(0, 10 * i)])
    assert under.allowance > 2 * start
    over = AbandonController(0.03, [30 * 86400.0])
    for i in range(1, 201):
        over.observe(10, 1, [AbandonCounts(i, 10 * i)])  # 10 % abandons
    assert over.over
    assert over.allowance < start / 10


def test_controller_settles_where_abandons_run_at_the_working_target():
    c = AbandonController(0.03, [30 * 86400.0])
    live = abandoned = 0
    for _ in range(300):
        live += 10
        abandoned_now = round(0.03 * live) - abandoned  # exactly on the cap
        abandoned += abandoned_now
        c.observe(10, abandoned_now, [AbandonCounts(abandoned, live)])
    level_at_cap = c.level
    for _ in range(100):
        live += 10
        c.observe(10, 0, [AbandonCounts(abandoned, live)])
    assert c.level > level_at_cap  # under target: more allowance
    assert c.working_target(live) < 0.03  # on the cap is over the working target


def test_controller_small_counts_one_early_abandon_is_not_a_trend():
    c = AbandonController(0.03, [30 * 86400.0])
    c.observe(5, 1, [AbandonCounts(1, 5)])  # 20 % of five answers
    assert not c.over
    assert c.allowance > 0.01
    c.observe(15, 4, [AbandonCounts(5, 20)])  # five among twenty: that is a trend
    assert c.over


def test_controller_24h_window_keeps_a_wider_margin_than_30_days():
    day = AbandonController(0.03, [86400.0])
    month = AbandonController(0.03, [30 * 86400.0])
    for live in (0, 500, 5000):
        assert day.working_target(live) < month.working_target(live) < 0.03
    assert day.working_target(100_000) > 0.029


# -- baselines ----------------------------------------------------------------------------


def test_fixed_ratio_keeps_ratio_times_free_agents_in_flight():
    p = FixedRatioPacer(ratio=2.0)
    assert p.decide(snap(ready=3, wrap_up=(5.0,))).dials == 8
    assert p.decide(snap(ready=3, wrap_up=(5.0,), ringing=(1.0,) * 6)).dials == 2
    assert p.decide(snap(ready=0, on_call=(1.0,) * 5)).dials == 0


def test_vicidial_level_rises_on_idle_agents_and_is_cut_over_the_drop_target():
    v = VicidialPacer(target=0.03)
    for t in range(0, 61):  # a minute of every agent idle
        v.decide(snap(now=float(t), ready=10))
    assert v.level > 1.5
    v.decide(snap(now=100.0, ready=10, live=100, abandoned=10))
    assert v.level == 1.0
    # lines = level x staffed, counting calls already with agents
    v.level = 2.0
    assert v.decide(snap(now=101.0, ready=2, on_call=(5.0,) * 8, ringing=(1.0,) * 4)).dials == 8


def test_classic_window_shrinks_over_target_and_grows_under_it():
    c = ClassicForecastPacer(target=0.03)
    w0 = c.window
    c.decide(snap(now=0.0, ready=1))
    c.decide(snap(now=31.0, ready=1, live=100, abandoned=10))
    assert c.window < w0
    c2 = ClassicForecastPacer(target=0.03)
    c2.decide(snap(now=0.0, ready=1))
    c2.decide(snap(now=31.0, ready=1, live=100, abandoned=0))
    assert c2.window > w0
    # a discounted (negative) window dials fewer calls for the same agents
    assert c.decide(snap(now=32.0, ready=4)).dials < c2.decide(snap(now=32.0, ready=4)).dials


# -- the oracle, by hand ------------------------------------------------------------------


class _Timer:
    def __init__(self, when: float) -> None:
        self._when = when

    def when(self) -> float:
        return self._when


def _world(agents: list[Agent], draws: list[Draw], calls: dict[str, _Call] | None = None, wrap: float = 15.0):
    model = CustomerModel(answer_rate=0.3, machine_rate=0.0, busy_rate=0.0, failed_rate=0.0, invalid_rate=0.0)
    behaviour = CustomerBehaviour(model, np.random.default_rng(0))
    behaviour._draws = deque(draws)
    backend = SimpleNamespace(_calls=calls or {}, behaviour=behaviour)
    desk = SimDesk(AgentModel(wrap_mean=wrap, wrap_fixed=True), model, backend, np.random.default_rng(0))
    cfg = SimpleNamespace(amd=SimpleNamespace(enabled=False, machine_action="hangup"))
    dialer = SimpleNamespace(pool=SimpleNamespace(agents={a.agent_id: a for a in agents}), pbx=backend, desk=desk,
                             cfg=cfg)
    oracle = OraclePacer()
    oracle.attach(dialer)
    return oracle


NO_ANSWER = Draw(0.9, 5.0, 0.5, 100.0, 0.5)


def live(ring: float, talk: float = 100.0) -> Draw:
    return Draw(0.1, ring, 0.5, talk, 0.5)


def test_oracle_dials_free_no_answers_and_times_live_answers_to_free_agents():
    # One ready agent: two no-answers cost nothing, the first live answer takes the agent, the second
    # live answer (3 s later) would find nobody, so the oracle stops there.
    oracle = _world([Agent("A1", AgentState.READY)], [NO_ANSWER, NO_ANSWER, live(5.0), live(3.0), NO_ANSWER])
    assert oracle.decide(snap(ready=1)).dials == 3


def test_oracle_waits_until_the_answer_meets_the_agent():
    # The only agent is on a call that ends at t=10, then 15 s of wrap-up: free at t=25.
    call = CallAttempt("c1", Lead("L1", "x", "+12125550000"), "x", 1, dialed_at=-50.0)
    talking = _Call(call, CallPlan(5.0, talk=55.0), state="connected", timer=_Timer(10.0), agent_id="A1")
    agent = Agent("A1", AgentState.ON_CALL, call_id="c1")
    early = _world([agent], [live(8.0)], {"c1": talking})
    assert early.decide(snap(now=0.0, on_call=(5.0,))).dials == 0  # answered at 8: nobody until 25
    late = _world([agent], [live(24.0), live(1.0)], {"c1": talking})
    assert late.decide(snap(now=0.0, on_call=(5.0,))).dials == 1  # answered at 24: agent free by 26
    # ... and a call already ringing towards that agent's free moment takes it first.
    call2 = CallAttempt("c2", Lead("L2", "x", "+12125550001"), "x", 1, dialed_at=-1.0)
    ringing = _Call(call2, CallPlan(24.0, talk=60.0), state="ringing")
    taken = _world([agent], [live(24.0), live(1.0)], {"c1": talking, "c2": ringing})
    assert taken.decide(snap(now=0.0, on_call=(5.0,), ringing=(1.0,))).dials == 0


# -- behaviour model ----------------------------------------------------------------------


def test_peeking_does_not_change_the_calls():
    model = CustomerModel(answer_rate=0.3)
    call = CallAttempt("c", Lead("L", "x", "+12125550000"), "x", 1, dialed_at=0.0)
    plain = CustomerBehaviour(model, np.random.default_rng(5))
    peeked = CustomerBehaviour(model, np.random.default_rng(5))
    a = [plain.plan(call, 25.0) for _ in range(300)]
    b = []
    for _ in range(300):
        peeked.peek(7)
        b.append(peeked.plan(call, 25.0))
    assert a == b


def test_answer_rate_by_hour_and_drift():
    model = CustomerModel(answer_rate=0.3, busy_rate=0.0, failed_rate=0.0, invalid_rate=0.0,
                          hourly_answer_rate=[0.1, 0.4])
    b = CustomerBehaviour(model, np.random.default_rng(2))
    assert b.answer_rate(100.0) == 0.1 and b.answer_rate(3700.0) == 0.4 and b.answer_rate(99_000.0) == 0.4

    def live_share(t: float) -> float:
        call = CallAttempt("c", Lead("L", "x", "+12125550000"), "x", 1, dialed_at=t)
        plans = [b.plan(call, 25.0) for _ in range(6000)]
        return sum(p.answer_after is not None and not p.machine for p in plans) / len(plans)

    assert live_share(10.0) == pytest.approx(0.1, abs=0.02)
    assert live_share(4000.0) == pytest.approx(0.4, abs=0.02)
    drift = CustomerBehaviour(CustomerModel(answer_rate=0.3, drift_to=0.1, drift_over=3600.0),
                              np.random.default_rng(2))
    assert drift.answer_rate(1800.0) == pytest.approx(0.2)
    assert drift.answer_rate(7200.0) == pytest.approx(0.1)


def test_new_model_fields_keep_their_defaults():
    sim = SimulationSection()
    assert sim.customers.hourly_answer_rate == [] and sim.customers.drift_to is None
    assert sim.agent.breaks == 0 and sim.agent.login_spread == 0.0


# -- whole shifts -------------------------------------------------------------------------


def _short(pacer: str, seed: int = 1, **kw) -> dict:
    return run_cell(Cell(str(REFERENCE), pacer, seed, kw.pop("agents", 5), 0.3, kw.pop("hours", 0.5), **kw)).kpi


def test_reproducible_by_seed():
    a, b, c = _short("predictive", 3), _short("predictive", 3), _short("predictive", 4)
    keys = ("dials", "live", "abandoned", "talk_s", "occupancy")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["seed"] == 3
    assert {k: a[k] for k in keys} != {k: c[k] for k in keys}


def test_oracle_is_the_upper_bound_in_a_whole_shift():
    oracle, prog = _short("oracle", agents=5, hours=1.0), _short("progressive", agents=5, hours=1.0)
    assert oracle["abandoned"] == 0
    assert oracle["occupancy"] > 0.95
    assert prog["occupancy"] < oracle["occupancy"] - 0.2
    assert prog["occupancy"] == pytest.approx(closed_form_progressive(0.3), abs=0.06)


def test_agents_log_in_spread_and_take_breaks():
    kpi = _short("progressive", agents=5, hours=2.0,
                 overrides=(("simulation.agent.breaks", 2), ("simulation.agent.break_mean", 300.0),
                            ("simulation.agent.login_spread", 600.0)))
    base = _short("progressive", agents=5, hours=2.0)
    assert kpi["errors"] == 0
    assert kpi["logged_in_h"] < base["logged_in_h"]  # logged in over the first 10 minutes
    assert kpi["dials"] < base["dials"]


def test_windows_over_the_cap():
    assert windows_over([(40, 1000)] * 5, span=1) == 1.0
    assert windows_over([(20, 1000)] * 5, span=30) == 0.0
    mixed = [(40, 1000), (20, 1000)]
    assert 0.0 < windows_over(mixed, span=30, n=500) < 1.0
    assert windows_over(mixed, span=1) == 0.5


def test_trailing_30_day_windows_over_consecutive_days():
    from simulations.sweep import rolling_windows

    days = [{"abandoned": 25, "live": 1000}] * 40
    assert rolling_windows(days) == {"windows": 40, "over": 0.0, "max_rate": 0.025, "mean_rate": 0.025}
    spike = [*days[:35], {"abandoned": 400, "live": 1000}, *days[36:]]
    w = rolling_windows(spike)
    assert w["over"] == pytest.approx(5 / 40)  # the windows ending on days 35..39 hold the spike
    assert w["max_rate"] == pytest.approx((29 * 25 + 400) / 30000)
    early = [{"abandoned": 40, "live": 1000}, *days[1:]]  # day 0 over: its window, and day 1's (3.25 %)
    assert rolling_windows(early)["over"] == pytest.approx(2 / 40)


def test_aggregate_states_each_pacer_against_the_oracle():
    from simulations.sweep import Result

    cell = Cell("x.toml", "oracle")
    kpi = dict(agents=5, answer_rate=0.3, occupancy=0.9, talk_min_per_agent_hour=40.0, live=100, abandoned=0,
               dials=300, wall_s=1.0)
    rows = aggregate([Result(cell, kpi), Result(Cell("x.toml", "predictive"), {**kpi, "occupancy": 0.72,
                                                                               "abandoned": 3})])
    by = {r["pacer"]: r for r in rows}
    assert by["predictive"]["of_oracle"] == pytest.approx(0.8)
    assert by["predictive"]["abandon_rate"] == pytest.approx(0.03)

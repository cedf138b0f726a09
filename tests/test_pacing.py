"""Pacers on hand-made snapshots, the estimators, and the abandon controller."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.pacing import (
    AbandonController,
    Decision,
    Estimates,
    PredictivePacer,
    PreviewPacer,
    ProgressivePacer,
    Snapshot,
    available_pacers,
    dial_cap,
    make_pacer,
)
from engine.pacing.estimates import AnswerRate, Histogram, exponential_prior
from engine.pacing.predictive import normal_sf
from engine.store.base import AbandonCounts
from engine.testing import snapshot


def snap(**kw) -> Snapshot:
    """The shipped snapshot builder, with nobody ready unless said and a prior answer rate of 0.25."""
    return snapshot(**{"ready": 0, "answer_rate": 0.25, **kw})


def test_progressive_one_call_per_ready_agent():
    p = ProgressivePacer()
    assert p.decide(snap(ready=5)) == Decision(dials=5)
    assert p.decide(snap(ready=5, ringing=(1.0, 3.0))) == Decision(dials=3)
    assert p.decide(snap(ready=1, ringing=(1.0,), waiting=1)) == Decision(dials=0)
    assert p.decide(snap(ready=0, on_call=(10.0,) * 4)) == Decision(dials=0)


def test_preview_hands_each_ready_agent_a_lead():
    assert PreviewPacer().decide(snap(ready=3, on_call=(5.0,))) == Decision(previews=3)
    assert PreviewPacer().decide(snap(ready=0)) == Decision(previews=0)


def test_dial_cap_limits_calls_in_flight():
    assert dial_cap(snap(ready=2, max_dial_ratio=3.0)) == 6
    assert dial_cap(snap(ready=2, max_dial_ratio=3.0, ringing=(1.0,) * 5)) == 1
    assert dial_cap(snap(ready=0)) == 0


def test_predictive_dials_ahead_of_ready_agents():
    p = PredictivePacer()
    d = p.decide(snap(ready=10))
    # With a 25 % answer rate the pacer must dial well beyond one call per agent ...
    assert d.dials > 10
    # ... but not so far that the expected answers exceed the agents.
    assert d.dials * 0.25 < 10 * 1.5


def test_predictive_stops_when_in_flight_calls_cover_the_agents():
    p = PredictivePacer()
    assert p.decide(snap(ready=2, ringing=(1.0,) * 8)).dials == 0
    assert p.decide(snap(ready=0, waiting=1, on_call=(5.0,))).dials == 0


def test_predictive_counts_agents_about_to_be_free():
    p = PredictivePacer()
    est = Estimates(answer_rate=0.25, talk_mean=120.0, wrap_mean=15.0)
    nearly_done = p.decide(snap(on_call=(600.0,) * 10, estimates=est)).dials  # long calls: hazard of ending
    wrapping = p.decide(snap(wrap_up=(14.0,) * 10, estimates=est)).dials  # wrap-up about to end
    fresh = p.decide(snap(on_call=(0.0,) * 10, estimates=est)).dials
    assert wrapping > fresh
    assert nearly_done >= fresh


def test_predictive_risk_grows_with_each_dial_and_allowance_moves_the_answer():
    p = PredictivePacer()
    s = snap(ready=5, on_call=(60.0,) * 5)
    risk = p.marginal_risk(s, 20)
    assert np.all(np.diff(risk) >= -1e-12)
    low = p.decide(snap(ready=5, on_call=(60.0,) * 5, allowance=0.005)).dials
    high = p.decide(snap(ready=5, on_call=(60.0,) * 5, allowance=0.2)).dials
    assert high > low


def test_normal_sf_matches_erfc():
    for z in (-3.0, -1.0, 0.0, 0.5, 2.0, 4.0):
        assert normal_sf(np.array([z]))[0] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), abs=2e-7)


def test_histogram_learns_and_forgets():
    edges = np.arange(0.0, 602.0, 2.0)
    h = Histogram(2.0, 600.0, exponential_prior(edges, 120.0), prior_weight=20.0, memory=200.0)
    assert h.mean() == pytest.approx(120.0, rel=0.1)
    for _ in range(2000):
        h.add(30.0)
    assert h.mean() == pytest.approx(31.0, abs=2.0)
    assert h.cdf(29.0) < 0.05 and h.cdf(33.0) > 0.95


def test_answer_rate_follows_a_drift():
    a = AnswerRate(prior=0.25, memory=300.0)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        a.add(rng.random() < 0.4)
    assert a.p == pytest.approx(0.4, abs=0.05)
    for _ in range(3000):
        a.add(rng.random() < 0.1)
    assert a.p == pytest.approx(0.1, abs=0.04)


def test_estimates_conditional_answer_probability():
    est = Estimates(answer_rate=0.5, ring_mean=8.0, ring_timeout=25.0)
    h = np.array([5.0])
    fresh, late = est.answered_within(np.array([0.0, 20.0]), h)[:, 0]
    assert 0 < late < fresh < 0.5


def test_controller_raises_allowance_under_target_and_cuts_it_over_target():
    c = AbandonController(0.03, [30 * 86400])
    start = c.allowance
    for i in range(1, 101):
        c.observe(10, 0, [AbandonCounts(0, 10 * i)])
    assert c.allowance > start
    c2 = AbandonController(0.03, [30 * 86400])
    for i in range(1, 101):
        c2.observe(10, 1, [AbandonCounts(i, 10 * i)])  # 10 % abandons
    assert c2.over
    assert c2.allowance < start / 4


def test_cap_guard_holds_a_young_window_under_the_target_at_every_moment():
    # A new campaign's 30-day window: 7 abandons in 240 live answers is 2.9 %, under the cap, but the
    # forecast (pseudo-answers) would still let it dial hard; one more abandon would put it over.
    guarded = AbandonController(0.03, [30 * 86400])
    guarded.observe(240, 7, [AbandonCounts(7, 240)])
    assert guarded.at_cap and guarded.allowance == guarded.floor
    free = AbandonController(0.03, [30 * 86400], cap_guard_live=None)
    free.observe(240, 7, [AbandonCounts(7, 240)])
    assert not free.at_cap and free.allowance > 10 * free.floor
    # With room for more than one abandon, or too few answers to mean anything, it does not bind.
    for counts in (AbandonCounts(5, 240), AbandonCounts(2, 40)):
        c = AbandonController(0.03, [30 * 86400])
        c.observe(counts.live, counts.abandoned, [counts])
        assert not c.at_cap


def test_cap_guard_eases_in_over_the_last_abandons_of_room():
    # 30-day window of a new campaign, 1000 live answers: the cap allows 30 abandons. With 20 the guard
    # is off; with room for 2 more (27 abandoned: 30 - 27 - 1 = 2 of the 4 abandons of room) it halves
    # the allowance; one short of the cap it is the floor.
    def allowance_at(abandoned: int, **kw) -> tuple[float, float]:
        c = AbandonController(0.03, [30 * 86400], **kw)
        c.level = 0.0
        c.observe(0, 0, [AbandonCounts(abandoned, 1000)])
        return c.guard, c.allowance

    assert allowance_at(20)[0] == 1.0
    guard, half = allowance_at(27)
    assert guard == pytest.approx(0.5)
    free = allowance_at(27, guard_room=0.0)[1]  # the all-or-nothing guard does not bind yet
    assert half == pytest.approx(free * 0.5)
    assert allowance_at(29)[1] == AbandonController(0.03, [30 * 86400]).floor
    # Not before the window holds enough answers for its rate to mean anything.
    c = AbandonController(0.03, [30 * 86400])
    c.observe(0, 0, [AbandonCounts(2, 60)])
    assert c.guard == 1.0 and not c.at_cap


def test_controller_gain_falls_as_answers_are_counted():
    c = AbandonController(0.03, [30 * 86400])
    early = c.current_gain()
    c.observe(1000, 30, [AbandonCounts(30, 1000)])
    assert c.current_gain() < early / 3
    assert c.current_gain() == c.gain_min
    # So one abandon moves the allowance less later in the day than in its first minutes.
    fresh = AbandonController(0.03, [30 * 86400], cap_guard_live=None)
    seasoned = AbandonController(0.03, [30 * 86400], cap_guard_live=None)
    seasoned.live_seen = 5000
    for ctl in (fresh, seasoned):
        ctl.observe(0, 1, [AbandonCounts(0, 0)])
    assert fresh.level < seasoned.level < 0.5


def test_cap_guard_follows_the_campaign(vrun):
    from helpers import campaign, run_script

    cfg = campaign(abandon={"cap_guard": False})
    dialer, _, _ = vrun(run_script(cfg, {}))
    assert dialer.controller.cap_guard_live is None
    dialer, _, _ = vrun(run_script(campaign(abandon={"cap_guard_live": 250}), {}))
    assert dialer.controller.cap_guard_live == 250


def test_controller_settings_follow_the_campaign(vrun):
    from helpers import campaign, run_script

    dialer, _, _ = vrun(run_script(campaign(), {}))
    ctl = dialer.controller
    assert (ctl.guard_room, ctl.gain, ctl.gain_min, ctl.gain_live) == (4.0, 0.1, 0.02, 200.0)
    assert (ctl.safety_z, ctl.prior_live) == (0.7, 1000.0)  # the 30-day window's built-in margin
    cfg = campaign(abandon={"cap_guard_room": 0, "gain": 0.2, "gain_min": 0.05, "gain_live": 500,
                            "margin_z": 0.4, "margin_prior_live": 300})
    dialer, _, _ = vrun(run_script(cfg, {}))
    ctl = dialer.controller
    assert (ctl.guard_room, ctl.gain, ctl.gain_min, ctl.gain_live) == (0.0, 0.2, 0.05, 500.0)
    assert ctl.current_gain() == pytest.approx(0.2)
    assert (ctl.safety_z, ctl.prior_live) == (0.4, 300.0)
    assert ctl.working_target(0) == pytest.approx(0.03 - 0.4 * (0.03 * 0.97 / 300) ** 0.5)


def test_controller_refuses_settings_that_cannot_work():
    with pytest.raises(ValueError, match="gain_live"):
        AbandonController(0.03, [86400], gain_live=0)
    with pytest.raises(ValueError, match="guard_room"):
        AbandonController(0.03, [86400], guard_room=-1)


def test_controller_margin_is_wider_with_few_calls():
    c = AbandonController(0.03, [86400], safety_z=1.65)
    assert c.working_target(0) < c.working_target(1000) < c.working_target(100000) < 0.03
    assert c.working_target(100000) == pytest.approx(0.03, abs=0.001)


def test_controller_binding_window_is_the_tightest():
    c = AbandonController(0.03, [30 * 86400, 86400])
    c.observe(0, 0, [AbandonCounts(0, 5000), AbandonCounts(20, 300)])  # the 24 h window is over
    assert c.over
    assert c.slack < 0


def test_pacers_are_registered_and_selectable():
    names = set(available_pacers())
    assert {"preview", "progressive", "predictive"} <= names
    assert make_pacer("progressive").name == "progressive"
    with pytest.raises(KeyError, match="unknown pacer"):
        make_pacer("nope")


def test_answer_rate_is_learnt_in_dial_order():
    # Answers are known in seconds, no-answers only at the ring timeout: a wave of dials must not
    # look like a wave of answers to the estimator.
    est = Estimates(answer_rate=0.3)
    for i in range(100):
        est.dialled(f"c{i}")
    for i in range(0, 100, 4):  # a quarter answer first
        est.observe_answer(True, 5.0, f"c{i}")
    assert est.answer.n == 1  # only c0: c1 is unresolved, so c4, c8, ... wait for it
    for i in range(100):
        if i % 4:
            est.observe_answer(False, None, f"c{i}")
    assert est.answer.n == 100
    assert est.answer.p < 0.3


def test_lost_dial_does_not_block_learning():
    est = Estimates(answer_rate=0.3)
    est.dialled("a")
    est.dialled("b")
    est.observe_answer(True, 4.0, "b")
    assert est.answer.n == 0
    est.forget("a")
    assert est.answer.n == 1


def test_large_team_is_not_flooded_on_an_uncertain_answer_rate():
    fresh = Estimates(answer_rate=0.25)  # prior only: p is uncertain
    d = PredictivePacer().decide(snap(ready=1000, estimates=fresh))
    assert d.dials * 0.25 < 1000  # expected answers stay below the agents waiting for them

"""The fixed-ratio pacer, tested with the fixtures the engine ships (``engine.testing``): no conftest needed."""

import pytest
from dialer_fixed_ratio import FixedRatioPacer

# -- decisions on hand-made snapshots ---------------------------------------------------------------


def test_keeps_ratio_calls_in_flight_per_ready_agent(make_snapshot):
    pacer = FixedRatioPacer(ratio=2.0, max_in_flight=50)
    assert pacer.decide(make_snapshot(ready=3)).dials == 6
    assert pacer.decide(make_snapshot(ready=3, ringing=[4.0, 11.5])).dials == 4
    assert pacer.decide(make_snapshot(ready=3, ringing=2, waiting=1)).dials == 3


def test_fractional_ratios_round_down(make_snapshot):
    assert FixedRatioPacer(ratio=1.5).decide(make_snapshot(ready=3)).dials == 4
    assert FixedRatioPacer(ratio=1.5).decide(make_snapshot(ready=1)).dials == 1


def test_no_ready_agent_no_dial(make_snapshot):
    pacer = FixedRatioPacer(ratio=3.0)
    assert pacer.decide(make_snapshot(ready=0, on_call=[30, 95], wrap_up=[4])).dials == 0


def test_never_more_than_the_cap_in_flight(make_snapshot):
    pacer = FixedRatioPacer(ratio=3.0, max_in_flight=5)
    assert pacer.decide(make_snapshot(ready=4)).dials == 5
    assert pacer.decide(make_snapshot(ready=4, ringing=4)).dials == 1
    assert pacer.decide(make_snapshot(ready=4, ringing=6)).dials == 0  # over the cap: no negative dials


def test_the_engines_dial_ratio_cap_wins(make_snapshot):
    # max_dial_ratio 1.5 over 2 staffed agents: at most 3 calls in flight, whatever the plugin's ratio
    assert FixedRatioPacer(ratio=4.0).decide(make_snapshot(ready=2, max_dial_ratio=1.5)).dials == 3


def test_settings_come_from_the_environment(monkeypatch, make_snapshot):
    monkeypatch.setenv("DIALER_FIXED_RATIO", "2.5")
    monkeypatch.setenv("DIALER_FIXED_RATIO_CAP", "7")
    pacer = FixedRatioPacer()
    assert (pacer.ratio, pacer.max_in_flight) == (2.5, 7)
    assert pacer.decide(make_snapshot(ready=4)).dials == 7


@pytest.mark.parametrize(("var", "value"), [("DIALER_FIXED_RATIO", "two"), ("DIALER_FIXED_RATIO", "0.5"),
                                            ("DIALER_FIXED_RATIO_CAP", "0")])
def test_bad_settings_are_refused_by_name(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        FixedRatioPacer()


# -- a short campaign through the real engine, in virtual time --------------------------------------


def test_ratio_one_never_abandons(simulate_pacer):
    kpis = simulate_pacer(FixedRatioPacer(ratio=1.0), agents=5, duration="30m")
    assert kpis["mode"] == "fixed-ratio"
    assert kpis["dials"] > 50 and kpis["connected"] > 5
    assert kpis["abandoned"] == 0 and kpis["max_in_flight"] <= 5


def test_a_higher_ratio_buys_talk_time_with_abandons(simulate_pacer):
    one = simulate_pacer(FixedRatioPacer(ratio=1.0), agents=5, duration="30m")
    two = simulate_pacer(FixedRatioPacer(ratio=2.0), agents=5, duration="30m")
    assert two["dials"] > one["dials"]
    assert two["talk_min_per_agent_hour"] > one["talk_min_per_agent_hour"]
    assert two["abandoned"] > 0


def test_the_cap_holds_in_a_whole_campaign(simulate_pacer):
    kpis = simulate_pacer(FixedRatioPacer(ratio=3.0, max_in_flight=4), agents=5, duration="30m")
    assert kpis["max_in_flight"] == 4  # reached, never exceeded

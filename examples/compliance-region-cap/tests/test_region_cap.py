"""The region cap, tested with the fixtures the engine ships (``engine.testing``): no conftest needed."""

from datetime import datetime
from zoneinfo import ZoneInfo

import dialer_region_cap as region_cap
import pytest

MIAMI = "+13055550100"  # Florida, Eastern time
PENSACOLA = "+18505550100"  # Florida panhandle, Central time
NEW_YORK = "+12125550100"  # not in the region


# -- one call through the real engine --------------------------------------------------------


def test_fourth_call_in_24_hours_is_vetoed_and_never_dialled(dial_once, make_lead):
    lead = make_lead(MIAMI, timezone="America/New_York")
    out = dial_once(region_cap, lead=lead, at="2026-01-05 10:00", earlier_calls=["1h", "5h", "20h"])
    assert out.context.attempts_24h == 3
    assert out.vetoed and out.veto.rule == region_cap.RULE_24H
    assert not out.dialled and out.result is None
    assert [b["rule"] for b in out.blocks] == [region_cap.RULE_24H]


def test_third_call_in_24_hours_goes_out(dial_once, make_lead):
    lead = make_lead(MIAMI, timezone="America/New_York")
    # two calls yesterday evening: inside the last 24 h, but not today (the engine's own per-day cap stays clear)
    out = dial_once(region_cap, lead=lead, at="2026-01-05 10:00", earlier_calls=["14h", "15h"])
    assert out.context.attempts_24h == 2
    assert out.allowed and out.dialled
    assert out.result["outcome"] == "connected"


def test_calls_after_20_00_local_are_vetoed_until_08_00(dial_once, make_lead):
    lead = make_lead(MIAMI, timezone="America/New_York")
    out = dial_once(region_cap, lead=lead, at="2026-01-05 20:00")
    assert out.vetoed and out.veto.rule == region_cap.RULE_HOURS and not out.dialled
    retry = datetime.fromtimestamp(out.veto.retry_at, ZoneInfo("America/New_York"))
    assert (retry.date().isoformat(), retry.hour, retry.minute) == ("2026-01-06", 8, 0)


def test_before_08_00_local_is_vetoed_until_08_00_the_same_day(dial_once, make_lead):
    lead = make_lead(MIAMI, timezone="America/New_York")
    out = dial_once(region_cap, lead=lead, at="2026-01-05 07:59")
    assert out.veto.rule == region_cap.RULE_HOURS
    retry = datetime.fromtimestamp(out.veto.retry_at, ZoneInfo("America/New_York"))
    assert (retry.date().isoformat(), retry.hour) == ("2026-01-05", 8)


def test_the_window_is_the_called_partys_local_time(dial_once, make_lead):
    # 20:30 in Miami is 19:30 in Pensacola: the same instant, one call allowed and one not
    at = datetime(2026, 1, 5, 20, 30, tzinfo=ZoneInfo("America/New_York"))
    miami = dial_once(region_cap, lead=make_lead(MIAMI, timezone="America/New_York"), at=at)
    pensacola = dial_once(region_cap, lead=make_lead(PENSACOLA, timezone="America/Chicago"), at=at)
    assert miami.vetoed and pensacola.allowed and pensacola.dialled


def test_numbers_outside_the_region_are_not_its_business(dial_once, make_lead):
    out = dial_once(region_cap, lead=make_lead(NEW_YORK, timezone="America/New_York"), at="2026-01-05 22:30")
    assert out.allowed and out.dialled


# -- the hook alone, on hand-made contexts ---------------------------------------------------------


def test_without_a_lead_time_zone_every_zone_of_the_number_must_be_open(check_dial, make_dial_context,
                                                                        make_lead, make_campaign):
    lead = make_lead(MIAMI)  # no timezone: the number's zones (America/New_York) decide
    utc = make_campaign(campaign={"id": "t", "timezone": "UTC"})
    late = make_dial_context(lead, at=datetime(2026, 1, 6, 1, 30, tzinfo=ZoneInfo("UTC")), campaign=utc)  # 20:30 ET
    assert check_dial(region_cap, ctx=late, campaign=utc).rule == region_cap.RULE_HOURS
    noon = make_dial_context(lead, at=datetime(2026, 1, 5, 17, 0, tzinfo=ZoneInfo("UTC")), campaign=utc)
    assert check_dial(region_cap, ctx=noon, campaign=utc) is None


def test_regions_hours_and_cap_come_from_the_environment(monkeypatch, check_dial, make_dial_context, make_lead):
    monkeypatch.setenv("DIALER_REGION_CAP_REGIONS", "GB")
    monkeypatch.setenv("DIALER_REGION_CAP_MAX_24H", "1")
    monkeypatch.setenv("DIALER_REGION_CAP_HOURS", "09:00-17:00")
    london = make_lead("+442079460000", timezone="Europe/London")
    assert check_dial(region_cap, ctx=make_dial_context(london, at="2026-01-05 12:00")) is None
    assert check_dial(region_cap, ctx=make_dial_context(london, at="2026-01-05 12:00",
                                                        attempts_24h=1)).rule == region_cap.RULE_24H
    assert check_dial(region_cap, ctx=make_dial_context(london, at="2026-01-05 17:00")).rule == region_cap.RULE_HOURS
    miami = make_lead(MIAMI, timezone="America/New_York")
    assert check_dial(region_cap, ctx=make_dial_context(miami, at="2026-01-05 23:00")) is None  # Florida not set


@pytest.mark.parametrize(("var", "value"), [("DIALER_REGION_CAP_MAX_24H", "three"),
                                            ("DIALER_REGION_CAP_HOURS", "20:00-08:00"),
                                            ("DIALER_REGION_CAP_REGIONS", "Florida")])
def test_bad_settings_stop_the_campaign_before_any_dial(monkeypatch, dial_once, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        dial_once(region_cap)


def test_bad_settings_fail_closed_at_the_gate_too(monkeypatch, check_dial, make_dial_context):
    monkeypatch.setenv("DIALER_REGION_CAP_MAX_24H", "-1")
    veto = check_dial(region_cap, ctx=make_dial_context())
    assert veto.rule == "plugin_error" and "DIALER_REGION_CAP_MAX_24H" in veto.reason


# -- settings in the campaign file ------------------------------------------------------------------


def test_the_campaign_table_sets_the_rule_and_wins_over_the_environment(monkeypatch, check_dial, make_campaign,
                                                                         make_dial_context, make_lead):
    monkeypatch.setenv("DIALER_REGION_CAP_HOURS", "06:00-23:00")
    cfg = make_campaign(plugin={"region_cap": {"regions": ["GB"], "max_24h": 1, "hours": "09:00-17:00"}})
    london = make_lead("+442079460000", timezone="Europe/London")
    assert check_dial(region_cap, ctx=make_dial_context(london, at="2026-01-05 12:00", campaign=cfg),
                      campaign=cfg) is None
    late = make_dial_context(london, at="2026-01-05 17:30", campaign=cfg)
    assert check_dial(region_cap, ctx=late, campaign=cfg).rule == region_cap.RULE_HOURS
    capped = make_dial_context(london, at="2026-01-05 12:00", attempts_24h=1, campaign=cfg)
    assert check_dial(region_cap, ctx=capped, campaign=cfg).rule == region_cap.RULE_24H


@pytest.mark.parametrize(("table", "problem"), [({"max_24h": "three"}, "max_24h: 'three' is not a whole number"),
                                                ({"hours": "20:00-08:00"}, "hours: '20:00-08:00' ends before"),
                                                ({"maxx_24h": 2}, "maxx_24h: unknown key")])
def test_a_bad_setting_is_reported_by_its_key(make_campaign, table, problem):
    cfg = make_campaign(plugin={"region_cap": table})
    [reported] = region_cap.dialer_check_settings(campaign=cfg)
    assert reported.startswith(problem)

"""The built-in compliance rules (plugins.compliance), each at its edges, through the engine's
real gate; and the after-call path that makes a refusal or an invalid number final everywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from helpers import campaign, human, run_script, unanswered

import plugins.compliance as compliance
from engine.config import ConfigError
from engine.models import Q850, CallAttempt, Lead
from engine.store.base import Caps, DialContext
from engine.store.memory import MemoryStore
from engine.store.redis import RedisStore
from engine.testing import check_dial, dial_context, dial_once, lead, wall_time

NY = "America/New_York"


def veto_at(at: str, *, the_lead: Lead | None = None, cfg=None, **ctx):
    cfg = cfg or campaign()
    the_lead = the_lead or lead(timezone=NY)
    return check_dial(compliance, ctx=dial_context(the_lead, at=at, campaign=cfg, **ctx), campaign=cfg)


def local_ts(text: str, zone: str = NY) -> float:
    return wall_time(text, ZoneInfo(zone))


# -- calling window ----------------------------------------------------------------------------


def test_default_window_is_0800_to_2100_local_end_excluded():
    assert veto_at("2026-01-05 08:00") is None
    assert veto_at("2026-01-05 20:59") is None
    early = veto_at("2026-01-05 07:59")
    assert early.rule == "compliance.hours" and early.retry_at == local_ts("2026-01-05 08:00")
    late = veto_at("2026-01-05 21:00")
    assert late.rule == "compliance.hours" and late.retry_at == local_ts("2026-01-06 08:00")
    assert "America/New_York" in late.reason and "08:00-21:00" in late.reason


def test_window_follows_the_called_party_not_the_campaign():
    cfg = campaign(campaign={"timezone": "Europe/London"})
    la = lead("+13105550100", timezone="America/Los_Angeles")
    # 17:00 in London is 09:00 in Los Angeles: open for the called party.
    assert check_dial(compliance, ctx=dial_context(la, at=local_ts("2026-01-05 09:00", "America/Los_Angeles"),
                                                   campaign=cfg), campaign=cfg) is None
    v = check_dial(compliance, ctx=dial_context(la, at=local_ts("2026-01-05 07:30", "America/Los_Angeles"),
                                                campaign=cfg), campaign=cfg)
    assert v.rule == "compliance.hours"


def test_zone_from_the_number_when_the_lead_has_none():
    ny_number = lead("+12125550100")  # New York, no timezone on the lead
    assert veto_at("2026-01-05 07:59", the_lead=ny_number, cfg=campaign(campaign={"timezone": "UTC"})) is not None
    at = local_ts("2026-01-05 07:59", NY)  # 12:59 UTC: the campaign's zone would have allowed it
    cfg = campaign(campaign={"timezone": "UTC"})
    assert check_dial(compliance, ctx=dial_context(ny_number, at=at, campaign=cfg), campaign=cfg).rule == \
        "compliance.hours"
    off = campaign(campaign={"timezone": "UTC"}, compliance={"zones_from_number": False})
    assert check_dial(compliance, ctx=dial_context(ny_number, at=at, campaign=off), campaign=off) is None


def test_a_number_spanning_zones_needs_the_window_open_in_every_one():
    sd = lead("+16055550100")  # South Dakota: Mountain and Central time
    cfg = campaign(campaign={"timezone": "UTC"})
    central_0830 = local_ts("2026-01-05 08:30", "America/Chicago")  # 07:30 in Denver
    v = check_dial(compliance, ctx=dial_context(sd, at=central_0830, campaign=cfg), campaign=cfg)
    assert v.rule == "compliance.hours" and "America/Denver" in v.reason
    assert v.retry_at == local_ts("2026-01-05 08:00", "America/Denver")
    assert check_dial(compliance, ctx=dial_context(sd, at=v.retry_at, campaign=cfg), campaign=cfg) is None
    mountain_2030 = local_ts("2026-01-05 20:30", "America/Denver")  # 21:30 in Central: closed there
    late = check_dial(compliance, ctx=dial_context(sd, at=mountain_2030, campaign=cfg), campaign=cfg)
    assert late.rule == "compliance.hours" and late.retry_at == local_ts("2026-01-06 08:00", "America/Denver")


def test_unknown_zone_falls_back_to_the_campaign_zone():
    cfg = campaign(campaign={"timezone": "Asia/Tokyo"})
    freephone = lead("+80012345678")  # international freephone: no geographic zone
    assert compliance.zones_for(freephone, cfg) == [ZoneInfo("Asia/Tokyo")]
    assert check_dial(compliance, ctx=dial_context(freephone, at=local_ts("2026-01-05 03:00", "Asia/Tokyo"),
                                                   campaign=cfg), campaign=cfg).rule == "compliance.hours"


def test_a_bad_lead_zone_falls_back_to_the_number():
    typo = lead("+12125550100", timezone="America/New_Yrok")
    assert compliance.zones_for(typo, campaign()) == [ZoneInfo(NY)]
    ctx = DialContext(lead=typo, now=local_ts("2026-01-05 07:59"), day_key="2026-01-05", attempts_today=0,
                      attempts_24h=0, dnc=False, invalid_number=False, last_abandoned_at=None, in_flight=False)
    v = check_dial(compliance, ctx=ctx, campaign=campaign())
    assert v.rule == "compliance.hours" and v.retry_at == local_ts("2026-01-05 08:00")


def test_common_opening_across_many_zones():
    zones = compliance.zones_for(lead("+79161234567"), campaign())  # Russian mobile: 16 zones, UTC+2..+12
    assert len(zones) > 5
    hours = campaign().hours
    t = compliance.next_common_opening(hours, local_ts("2026-01-05 00:00", "UTC"), zones)
    assert t is not None and all(compliance._open_at(hours, t, z) for z in zones)
    assert not all(compliance._open_at(hours, t - 1, z) for z in zones)


def test_per_weekday_hours_and_closed_days():
    cfg = campaign(hours={"days": {"sat": {"start": "10:00", "end": "17:00"}, "sun": "closed"}})
    sat, sun = "2026-01-10", "2026-01-11"
    assert veto_at(f"{sat} 09:59", cfg=cfg).retry_at == local_ts(f"{sat} 10:00")
    assert veto_at(f"{sat} 10:00", cfg=cfg) is None
    assert veto_at(f"{sat} 16:59", cfg=cfg) is None
    after = veto_at(f"{sat} 17:00", cfg=cfg)
    assert after.rule == "compliance.hours" and after.retry_at == local_ts("2026-01-12 08:00")  # Monday
    assert veto_at(f"{sun} 12:00", cfg=cfg).retry_at == local_ts("2026-01-12 08:00")
    assert veto_at("2026-01-12 08:00", cfg=cfg) is None


def test_holidays_close_the_whole_local_day():
    cfg = campaign(hours={"holidays": ["2026-12-25", "2026-12-26"]})
    v = veto_at("2026-12-25 12:00", cfg=cfg)
    assert v.rule == "compliance.holiday" and "2026-12-25" in v.reason
    assert v.retry_at == local_ts("2026-12-27 08:00")
    assert veto_at("2026-12-24 20:59", cfg=cfg) is None


def test_bad_hours_are_refused_at_load():
    with pytest.raises(ConfigError, match="not after start"):
        campaign(hours={"days": {"sat": {"start": "17:00", "end": "10:00"}}})
    with pytest.raises(ConfigError, match=r"hours\.days"):
        campaign(hours={"days": {"saturday": "closed"}})
    with pytest.raises(ConfigError, match="holidays"):
        campaign(hours={"holidays": ["Christmas"]})
    with pytest.raises(ConfigError, match="abandon_no_repeat"):
        campaign(compliance={"abandon_no_repeat": "-1h"})
    with pytest.raises(ConfigError, match="abandon_no_repeat"):
        campaign(compliance={"abandon_no_repeat": "8d"})
    with pytest.raises(ConfigError, match="unknown key"):
        campaign(compliance={"consent": True})


# -- DNC, invalid, consent -----------------------------------------------------------------------


def test_dnc_and_invalid_numbers_are_final():
    v = veto_at("2026-01-05 12:00", dnc=True)
    assert v.rule == "compliance.dnc" and v.retry_at is None
    v = veto_at("2026-01-05 12:00", invalid_number=True)
    assert v.rule == "compliance.invalid_number" and v.retry_at is None
    # A final veto wins over one that only defers (here: outside the window too).
    assert veto_at("2026-01-05 23:00", dnc=True).rule == "compliance.dnc"


def test_consent_when_the_campaign_requires_it():
    cfg = campaign(compliance={"require_consent": True, "consent_sources": ["web_form", "paper"]})
    at = local_ts("2026-01-05 12:00")
    assert veto_at("2026-01-05 12:00", cfg=campaign(), the_lead=lead(timezone=NY)) is None  # not required
    missing = veto_at("2026-01-05 12:00", cfg=cfg, the_lead=lead(timezone=NY))
    assert missing.rule == "compliance.consent" and missing.retry_at is None
    wrong = veto_at("2026-01-05 12:00", cfg=cfg, the_lead=lead(timezone=NY, consent_source="bought_list"))
    assert wrong.rule == "compliance.consent" and "bought_list" in wrong.reason
    expires = datetime.fromtimestamp(at, UTC)
    expired = veto_at("2026-01-05 12:00", cfg=cfg,
                      the_lead=lead(timezone=NY, consent_source="web_form", consent_expires=expires))
    assert expired.rule == "compliance.consent" and "expired" in expired.reason
    valid = lead(timezone=NY, consent_source="web_form", consent_expires=expires + timedelta(seconds=1))
    assert veto_at("2026-01-05 12:00", cfg=cfg, the_lead=valid) is None
    naive = lead(timezone=NY, consent_source="paper", consent_expires=datetime(2027, 1, 1))
    assert veto_at("2026-01-05 12:00", cfg=cfg, the_lead=naive) is None


# -- caps, abandons ----------------------------------------------------------------------------


def test_per_contact_caps_at_their_edges():
    cfg = campaign(caps={"per_day": 2, "per_24h": 3, "lifetime": 5})
    assert veto_at("2026-01-05 12:00", cfg=cfg, attempts_today=1, attempts_24h=2) is None
    day = veto_at("2026-01-05 12:00", cfg=cfg, attempts_today=2, attempts_24h=2)
    assert day.rule == "compliance.cap_per_day" and "2026-01-05" in day.reason
    # Next local day at midnight is closed: the lead comes back at the next opening instead.
    assert day.retry_at == local_ts("2026-01-06 08:00")
    rolling = veto_at("2026-01-05 12:00", cfg=cfg, attempts_today=0, attempts_24h=3)
    assert rolling.rule == "compliance.cap_24h" and rolling.retry_at == local_ts("2026-01-05 13:00")
    spent = veto_at("2026-01-05 12:00", cfg=cfg, the_lead=lead(timezone=NY, attempts=5))
    assert spent.rule == "compliance.cap_lifetime" and spent.retry_at is None
    assert veto_at("2026-01-05 12:00", cfg=cfg, the_lead=lead(timezone=NY, attempts=4)) is None
    off = campaign(caps={"per_day": 2}, compliance={"caps": False})
    assert veto_at("2026-01-05 12:00", cfg=off, attempts_today=9) is None


def test_no_call_within_72h_of_an_abandoned_one():
    at = local_ts("2026-01-08 12:00")
    v = veto_at("2026-01-08 12:00", last_abandoned_at=at - 72 * 3600 + 1)
    assert v.rule == "compliance.after_abandon" and v.retry_at == at + 1
    assert veto_at("2026-01-08 12:00", last_abandoned_at=at - 72 * 3600) is None
    off = campaign(compliance={"abandon_no_repeat": 0})
    assert veto_at("2026-01-08 12:00", cfg=off, last_abandoned_at=at - 60) is None
    short = campaign(compliance={"abandon_no_repeat": "24h"})
    assert veto_at("2026-01-08 12:00", cfg=short, last_abandoned_at=at - 86_400) is None


def test_the_latest_retry_wins_when_several_rules_defer():
    # Abandoned 71 h before 20:30: the 72 h mark (21:30) falls outside the window, so the lead
    # comes back at the next opening, not at the first rule's time.
    at = local_ts("2026-01-05 20:30")
    v = veto_at("2026-01-05 20:30", last_abandoned_at=at - 71 * 3600)
    assert v.rule == "compliance.after_abandon" and v.retry_at == local_ts("2026-01-06 08:00")
    early = veto_at("2026-01-05 10:00", last_abandoned_at=local_ts("2026-01-05 10:00") - 71 * 3600)
    assert early.retry_at == local_ts("2026-01-05 11:00")  # inside the window: kept as is
    vetoes = compliance.evaluate(dial_context(lead(timezone=NY), at=at + 3600 + 1, campaign=campaign(),
                                              last_abandoned_at=at - 71 * 3600), campaign())
    assert [x.rule for x in vetoes] == ["compliance.hours"]


# -- through the engine --------------------------------------------------------------------------


def test_a_veto_reschedules_the_lead_through_the_engine():
    out = dial_once(compliance, lead=lead(timezone=NY), at="2026-01-05 07:00")
    assert out.vetoed and not out.dialled and out.veto.rule == "compliance.hours"
    assert out.blocks[0]["rule"] == "compliance.hours"
    assert out.veto.retry_at == local_ts("2026-01-05 08:00")
    ok = dial_once(compliance, lead=lead(timezone=NY), at="2026-01-05 10:00")
    assert ok.allowed and ok.dialled


def test_engine_counts_feed_the_caps_rule():
    out = dial_once(compliance, lead=lead(timezone=NY), at="2026-01-05 12:00", earlier_calls=["1h", "2h"])
    assert out.vetoed and out.veto.rule == "compliance.cap_per_day" and out.context.attempts_today == 2


def _refusing_campaign(**extra):
    return campaign(simulation={"customers": {"sale_rate": 0.0, "refusal_rate": 1.0, "callback_rate": 0.0},
                                "agent": {"wrap_mean": 5.0, "think_mean": 1.0, "skip_rate": 0.0}},
                    retry={"max_attempts": 1}, **extra)


async def _blocked_elsewhere(store, phone: str) -> tuple[bool, str]:
    """The same number as a lead of another campaign: what the gate sees and what the reservation says."""
    other = Lead(lead_id="other-1", campaign_id="other", phone=phone)
    await store.add_leads([other])
    [claimed] = await store.claim_leads("other", 1, now=wall_time("2026-01-06 15:00"), node_id="n2", lease_s=60)
    now = wall_time("2026-01-06 15:00")
    ctx = await store.dial_context(claimed, now=now, day_key="2026-01-06")
    call = CallAttempt(call_id="x-1", lead=claimed, campaign_id="other", attempt_no=1)
    res = await store.reserve_attempt(call, now=now, day_key="2026-01-06", caps=Caps(), node_id="n2")
    return ctx.dnc or ctx.invalid_number, res.rule


@pytest.mark.parametrize("dnc_flag", [True, False])
def test_a_refusal_blocks_the_number_in_every_campaign(vrun, dnc_flag):
    # With dnc = false on the disposition (an operator's slip), the plugin still lists the number.
    cfg = _refusing_campaign(dispositions={"refused": {"final": True, "dnc": dnc_flag}})
    store = MemoryStore()

    async def main():
        return await run_script(cfg, {"L1": human(after=2, talk=20)}, store=store, plugins=[compliance])

    _, summary, _ = vrun(main())
    [row] = vrun(store.results("t"))
    assert (row["outcome"], row["disposition"]) == ("connected", "refused")
    blocked, rule = vrun(_blocked_elsewhere(store, "+12125550001"))
    assert blocked and rule == "dnc"


def test_without_the_plugin_a_refusal_without_dnc_flag_is_not_listed(vrun):
    """The control for the test above: it is the plugin that closes the gap."""
    cfg = _refusing_campaign(dispositions={"refused": {"final": True, "dnc": False}})
    store = MemoryStore()
    vrun(run_script(cfg, {"L1": human(after=2, talk=20)}, store=store))
    assert vrun(_blocked_elsewhere(store, "+12125550001")) == (False, "")


def test_an_invalid_number_is_never_dialled_again_anywhere(vrun):
    store = MemoryStore()
    cfg = campaign(retry={"max_attempts": 3})
    vrun(run_script(cfg, {"L1": unanswered(Q850.UNALLOCATED)}, store=store, plugins=[compliance]))
    rows = vrun(store.results("t"))
    assert [r["outcome"] for r in rows] == ["invalid_number"]  # not retried
    blocked, rule = vrun(_blocked_elsewhere(store, "+12125550001"))
    assert blocked and rule == "invalid_number"


async def test_refusal_on_one_redis_node_blocks_every_node(redis_url):
    """Two engine nodes on one Redis: the after-call hook on node A, the next dial on node B."""
    node_a, node_b = RedisStore(redis_url, prefix="c"), RedisStore(redis_url, prefix="c")
    cfg = campaign()
    try:
        mine = Lead(lead_id="L1", campaign_id="t", phone="+12125550001")
        await node_a.add_leads([mine])
        [claimed] = await node_a.claim_leads("t", 1, now=wall_time("2026-01-06 14:00"), node_id="a", lease_s=60)
        call = CallAttempt(call_id="a-1", lead=claimed, campaign_id="t", attempt_no=1, disposition="refused")
        await compliance.dialer_after_call(call=call, result=None, campaign=cfg, store=node_a)
        blocked, rule = await _blocked_elsewhere(node_b, "+12125550001")
        assert blocked and rule == "dnc"
        ctx = await node_b.dial_context(Lead(lead_id="other-1", campaign_id="other", phone="+12125550001"),
                                        now=wall_time("2026-01-06 15:00"), day_key="2026-01-06")
        assert compliance.dialer_check_dial(ctx=ctx, campaign=cfg).rule == "compliance.dnc"
        # A disposition that is not a refusal lists nothing.
        call2 = CallAttempt(call_id="a-2", lead=Lead(lead_id="L2", campaign_id="t", phone="+12125550002"),
                            campaign_id="t", attempt_no=1, disposition="callback")
        assert compliance.dialer_after_call(call=call2, result=None, campaign=cfg, store=node_a) is None
        assert await node_b.dnc_contains(["+12125550001", "+12125550002"]) == [True, False]
    finally:
        await node_a.close()
        await node_b.close()

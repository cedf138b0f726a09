"""Built-in ranking (tiers, score, offer) and risk alerts (flags, complaints) plugins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpers import campaign, human, run_script

import plugins.ranking as ranking
import plugins.risk as risk
from engine.models import Lead
from engine.plugins import Gate, make_plugin_manager, rank_leads
from engine.store.base import DialContext
from engine.store.memory import MemoryStore

RULES = {
    "tiers": [
        {"tier": 0, "name": "high", "tags_any": ["asked_price", "downloaded"]},
        {"tier": 1, "name": "medium", "tags_any": ["basic_material"]},
        {"tier": 9, "name": "low", "tags_any": ["refused"], "skip": True},
        {"tier": 9, "name": "inactive", "inactive_days": 180, "skip": True},
    ],
    "default_tier": 2,
    "tag_scores": {"asked_price": 5.0},
    "products": {"premium": ["asked_price", "vip"], "starter": ["basic_material"]},
}


def lead(lead_id: str, *tags: str, **attrs: str) -> Lead:
    return Lead(lead_id, "t", f"+1212555{int(lead_id[1:]):04d}", tags=tags, attributes=attrs)


def ctx(ld: Lead, attempts_24h: int = 0) -> DialContext:
    return DialContext(lead=ld, now=0.0, day_key="d", attempts_today=0, attempts_24h=attempts_24h, dnc=False,
                       invalid_number=False, last_abandoned_at=None, in_flight=False)


async def test_tiers_scores_and_dial_order():
    cfg = campaign(ranking=RULES)
    old = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    recent = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    leads = [lead("L1", "basic_material"), lead("L2", "asked_price", last_activity=recent),
             lead("L3", "refused"), lead("L4", last_activity=old), lead("L5"), lead("L6", "downloaded")]
    pm = make_plugin_manager(entry_points_too=False, extra=[ranking])
    await rank_leads(pm, cfg, leads)
    assert [x.tier for x in leads] == [1, 0, 9, 9, 2, 0]
    assert leads[1].score > 10  # tag score + recency bonus
    store = MemoryStore()
    await store.add_leads(leads)
    order = [x.lead_id for x in await store.claim_leads("t", 10, now=1e12, node_id="n", lease_s=60)]
    assert order[:2] == ["L2", "L6"] and order.index("L1") < order.index("L5")


async def test_nurture_tier_is_not_dialled_and_offer_is_recommended():
    cfg = campaign(ranking=RULES)
    gate = Gate(make_plugin_manager(entry_points_too=False, extra=[ranking]), cfg)
    v = await gate.check(ctx(lead("L3", "refused")))
    assert v is not None and v.rule == "nurture_tier"
    assert await gate.check(ctx(lead("L1", "basic_material"))) is None
    alerts = await gate.alerts(ctx(lead("L2", "asked_price", "vip")))
    assert [a.message for a in alerts] == ["recommended offer: premium"]


async def test_no_rules_no_opinion():
    cfg = campaign()
    leads = [lead("L1", "asked_price")]
    await rank_leads(make_plugin_manager(entry_points_too=False, extra=[ranking]), cfg, leads)
    assert leads[0].tier == 1


async def test_risk_alerts_from_flags():
    cfg = campaign()
    gate = Gate(make_plugin_manager(entry_points_too=False, extra=[risk]), cfg)
    alerts = await gate.alerts(ctx(lead("L1", complained="yes", sensitive_words="cancel; refund"), 2))
    assert alerts[0].code == "complained_before" and alerts[0].severity == "high"
    assert alerts[0].avoid_phrases == ("cancel", "refund")
    rare = await gate.alerts(ctx(lead("L2", contact_rarely="true"), 1))
    assert rare[0].code == "contact_rarely" and "1 call" in rare[0].message
    assert await gate.alerts(ctx(lead("L3"))) == ()


def test_complaint_disposition_marks_the_lead_high_sensitivity(vrun, monkeypatch):
    import simulations.agents as sim_agents

    async def complain(self, agent, call):
        return "complaint"

    monkeypatch.setattr(sim_agents.SimDesk, "wrap_up", complain)
    cfg = campaign(retry={"max_attempts": 2}, dispositions={"complaint": {"retry_after": "1m"}})
    store = MemoryStore()
    vrun(run_script(cfg, {"L1": human()}, plugins=[risk], store=store, until=30))
    ld = vrun(store.dial_context(Lead("L1", "t", "+12125550001"), now=0.0, day_key="d")).lead
    stored = store._leads[("t", "L1")]
    assert stored.attributes["sensitivity"] == "high" and stored.attributes["complained"] == "true"
    assert ld.lead_id == "L1"

"""Dispositions and follow-up tasks: timing, priority, completion, customer types, the report."""

from __future__ import annotations

from datetime import datetime

from helpers import campaign, human, run_script

import plugins.followups as followups
from engine.models import Lead, Outcome
from engine.results_report import format_results_report, summarize_results
from engine.retry import agreed_time, follow_up_delay, next_attempt_at

DAY = 86400.0


def test_disposition_follow_up_and_customer_type_schedule():
    cfg = campaign(dispositions={"think_about_it": {"follow_up": "2d"}})
    assert set(cfg.dispositions) >= {"sale", "callback", "think_about_it"}  # added to the defaults
    hesitant = Lead("L1", "t", "+12125550001", attributes={"customer_type": "hesitant"})
    assert follow_up_delay(cfg, "think_about_it", hesitant) == 2 * DAY
    assert follow_up_delay(cfg, "undecided", hesitant) == 3 * DAY
    hesitant.attributes["follow_ups_done"] = 1
    assert follow_up_delay(cfg, "undecided", hesitant) == 7 * DAY
    hesitant.attributes["follow_ups_done"] = 2
    assert follow_up_delay(cfg, "undecided", hesitant) is None  # schedule exhausted
    assert follow_up_delay(cfg, "sale", hesitant) is None
    # An agreed follow-up is kept past max_attempts; a plain retry is not.
    assert next_attempt_at(cfg, Outcome.CONNECTED, "think_about_it", 99, 1000.0) == 1000.0 + 2 * DAY
    assert next_attempt_at(cfg, Outcome.BUSY, None, 99, 1000.0) is None
    assert next_attempt_at(cfg, Outcome.CONNECTED, "sale", 1, 1000.0) is None


def test_the_time_agreed_with_the_person_beats_the_dispositions_delay():
    cfg = campaign(dispositions={"think_about_it": {"follow_up": "2d"}})
    now = 1_800_000_000.0
    lead = Lead("L1", "t", "+12125550001", attributes={"callback_requested_at": "2027-01-15T10:30:00+01:00"})
    agreed = datetime.fromisoformat("2027-01-15T10:30:00+01:00").timestamp()
    assert agreed > now
    assert agreed_time(lead, now) == agreed
    assert next_attempt_at(cfg, Outcome.CONNECTED, "think_about_it", 1, now, lead) == agreed
    # Only for dispositions that create a follow-up: a sale stays final, a busy line keeps its retry.
    assert next_attempt_at(cfg, Outcome.CONNECTED, "sale", 1, now, lead) is None
    assert next_attempt_at(cfg, Outcome.BUSY, None, 1, now, lead) == now + cfg.retry.busy
    # Once past (the follow-up was made), the disposition's own delay applies again.
    assert next_attempt_at(cfg, Outcome.CONNECTED, "think_about_it", 2, agreed + 60, lead) == agreed + 60 + 2 * DAY
    # A time without a zone, or not a time, is ignored rather than trusted.
    for bad in ("2027-01-15T10:30:00", "next tuesday", ""):
        lead.attributes["callback_requested_at"] = bad
        assert agreed_time(lead, now) is None
        assert next_attempt_at(cfg, Outcome.CONNECTED, "think_about_it", 1, now, lead) == now + 2 * DAY


def test_follow_up_is_created_dialled_first_when_due_and_completed(vrun, monkeypatch):
    import simulations.agents as sim_agents

    dispositions = iter(["callback", "sale"])

    async def wrap(self, agent, call):
        return next(dispositions)

    monkeypatch.setattr(sim_agents.SimDesk, "wrap_up", wrap)
    cfg = campaign(dispositions={"callback": {"follow_up": "1h", "same_agent": True}})
    leads = [Lead("L1", "t", "+12125550001", tier=5)]
    dialer, summary, store = vrun(run_script(cfg, {"L1": human(talk=30)}, leads=leads, plugins=[followups],
                                             until=3 * 3600))
    rows = vrun(store.results("t"))
    assert [(r["disposition"], r["follow_up"]) for r in rows] == [("callback", False), ("sale", True)]
    assert store._leads[("t", "L1")].attributes["follow_ups_done"] == 1
    assert store._leads[("t", "L1")].score == 0.0  # priority handed back once completed


def test_a_same_agent_follow_up_reaches_the_agent_who_agreed_it(vrun, monkeypatch):
    import simulations.agents as sim_agents

    dispositions = iter(["callback", "sale"])

    async def wrap(self, agent, call):
        return next(dispositions)

    monkeypatch.setattr(sim_agents.SimDesk, "wrap_up", wrap)
    cfg = campaign(dispositions={"callback": {"follow_up": "1h", "same_agent": True}})
    leads = [Lead("L1", "t", "+12125550001")]
    _, _, store = vrun(run_script(cfg, {"L1": human(talk=30)}, leads=leads, plugins=[followups], agents=3,
                                  until=3 * 3600))
    rows = vrun(store.results("t"))
    # A1 took the first call; an hour later A2 and A3 have been idle longer, yet the follow-up goes to A1
    assert [(r["agent_id"], r["follow_up"]) for r in rows] == [("A1", False), ("A1", True)]


def test_a_follow_up_due_before_the_window_opens_is_dialled_when_it_opens_in_the_persons_zone(vrun, monkeypatch):
    # The run starts at 09:00 in New York; the lead lives in Los Angeles (06:00 there), so the first call
    # waits for 08:00 Pacific. The callback asked for 23 h later falls at 07:00 Pacific: the gate holds
    # it until the window opens there, not in the campaign's zone.
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import plugins.compliance as compliance
    import simulations.agents as sim_agents

    dispositions = iter(["callback", "sale"])

    async def wrap(self, agent, call):
        return next(dispositions)

    monkeypatch.setattr(sim_agents.SimDesk, "wrap_up", wrap)
    cfg = campaign(campaign={"id": "t", "mode": "progressive", "timezone": "America/New_York"},
                   dispositions={"callback": {"follow_up": "23h"}})
    leads = [Lead("L1", "t", "+13105550001", timezone="America/Los_Angeles")]
    _, _, store = vrun(run_script(cfg, {"L1": human(after=3, talk=30)}, leads=leads,
                                  plugins=[followups, compliance], until=2 * DAY))
    rows = vrun(store.results("t"))
    la = ZoneInfo("America/Los_Angeles")
    local = [datetime.fromisoformat(r["started"]).astimezone(la) for r in rows]
    assert [(r["disposition"], r["follow_up"]) for r in rows] == [("callback", False), ("sale", True)]
    assert (local[0].day, local[0].hour) == (5, 8)  # first call: when the window opened in LA
    assert (local[1].day, local[1].hour) == (6, 8) and local[1].minute < 5  # due 07:00 LA, dialled at 08:00 LA


def test_the_preferred_agent_only_when_ready():
    from engine.agents import AgentPool
    from engine.models import Agent

    pool = AgentPool([Agent("A1"), Agent("A2"), Agent("A3")], clock=lambda: 0.0)
    for a in ("A1", "A2", "A3"):
        pool.login(a)
    assert pool.take_ready(prefer="A3").agent_id == "A3"
    assert pool.take_ready(prefer="A3").agent_id == "A1"  # A3 is on a call: the longest idle instead
    assert pool.start_preview(prefer="nobody").agent_id == "A2"


async def test_a_due_follow_up_is_dialled_before_fresh_leads_of_its_tier():
    from engine.store.memory import MemoryStore

    class Call:
        disposition = "callback"
        agent_id = "A1"
        wall_started = None
        outcome = Outcome.CONNECTED

    class Result:
        outcome = Outcome.CONNECTED

    cfg = campaign()
    store = MemoryStore()
    fresh = [Lead(f"L{i}", "t", f"+1212555000{i}", score=50.0) for i in range(1, 4)]
    called = Lead("L9", "t", "+12125550009")
    await store.add_leads([*fresh, called])
    call = Call()
    call.lead = called
    await followups.dialer_after_call(call=call, result=Result(), campaign=cfg, store=store)
    claimed = await store.claim_leads("t", 4, now=1e12, node_id="n", lease_s=60)
    assert claimed[0].lead_id == "L9" and claimed[0].tier == 1


def test_results_report_by_tier_and_type():
    cfg = campaign()
    rows = [
        {"tier": 0, "customer_type": "hesitant", "outcome": "connected", "disposition": "callback",
         "follow_up": False},
        {"tier": 0, "customer_type": "hesitant", "outcome": "connected", "disposition": "sale", "follow_up": True},
        {"tier": 1, "customer_type": None, "outcome": "no_answer", "disposition": None, "follow_up": False},
        {"tier": 1, "customer_type": None, "outcome": "abandoned", "disposition": None, "follow_up": "False"},
    ]
    r = summarize_results(rows, cfg)
    assert r["total"] == {"dials": 4, "contacts": 2, "conversions": 1, "abandoned": 1, "conversion_rate": 0.5}
    assert r["by_tier"]["0"]["conversions"] == 1 and r["by_tier"]["1"]["contacts"] == 0
    assert r["by_customer_type"]["unknown"]["dials"] == 2
    assert r["follow_ups"] == {"created": 1, "completed": 1, "attempted": 1}
    text = format_results_report(r)
    assert "type hesitant" in text and "1 created" in text


def test_one_campaign_mixes_preview_for_high_intent_and_predictive_for_the_rest(vrun):
    from engine.config import campaign_from_dict
    from simulations.runner import generate_leads, run_sim_campaign

    cfg = campaign_from_dict({
        "campaign": {"id": "mix", "mode": "predictive"},
        "ranking": {"tiers": [{"tier": 0, "tags_any": ["asked_price"]}], "modes": {"0": "preview"},
                    "mode_skills": {"preview": "senior"}},
        "agents": {"simulated_skills": {"senior": 2}},
        "simulation": {"agents": 6, "leads": 600, "duration": "1h", "seed": 3},
    })
    leads = generate_leads(cfg, 600, 3)
    assert any(lead.tags for lead in leads)

    async def main():
        from engine.store.memory import MemoryStore

        store = MemoryStore()
        summary = await run_sim_campaign(cfg, leads=leads, store=store)
        return summary, await store.results("mix")

    summary, rows = vrun(main())
    assert summary["mode"] == "predictive+preview"
    seniors = {"A001", "A002"}
    talked = [r for r in rows if r["agent_id"]]
    high = [r for r in talked if int(r["tier"]) == 0]
    rest = [r for r in talked if int(r["tier"]) != 0]
    assert high and rest
    assert {r["agent_id"] for r in high} <= seniors
    assert not {r["agent_id"] for r in rest} & seniors
    assert all(r["outcome"] != "abandoned" for r in high)  # preview never abandons
    assert summary["previews"] >= len(high)


def test_a_dispositions_tags_re_tier_the_lead_and_a_tier_rule_on_them_routes_it(vrun, monkeypatch, tmp_path):
    """``[dispositions.X] tags``: the lead gets the tags, is re-tiered by the campaign's tier rules
    (here: "not_now" -> tier 7, kept for nurture: never dialled again), stored, and the change audited."""
    import plugins.ranking as ranking
    import simulations.agents as sim_agents
    from engine.audit import AuditLog

    async def wrap(self, agent, call):
        return "not_now"

    monkeypatch.setattr(sim_agents.SimDesk, "wrap_up", wrap)
    cfg = campaign(retry={"max_attempts": 3},
                   dispositions={"not_now": {"retry_after": "10m", "tags": ["not_now"]}},
                   ranking={"tiers": [{"tier": 7, "name": "nurture", "tags_any": ["not_now"], "skip": True}],
                            "default_tier": 1})
    audit = AuditLog(tmp_path / "audit.jsonl", clock=lambda: 0.0)
    leads = [Lead("L1", "t", "+12125550001", tier=1)]
    dialer, summary, store = vrun(run_script(cfg, {"L1": human(talk=30)}, leads=leads, plugins=[ranking],
                                             until=3 * 3600, audit=audit))
    rows = vrun(store.results("t"))
    assert [r["disposition"] for r in rows] == ["not_now"]  # once: the retry in 10 min is refused (nurture)
    stored = store._leads[("t", "L1")]
    assert "not_now" in stored.tags and stored.tier == 7 and stored.attempts == 1
    assert {b["rule"] for b in vrun(store.blocks("t"))} == {"nurture_tier"}  # the retry, refused by the gate
    changes = [e for e in audit.entries() if e["actor"] == "engine" and e["action"] == "update"]
    assert [(e["fields"], e["reason"]) for e in changes] == [(["tags", "tier"], "disposition not_now")]

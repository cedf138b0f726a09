"""Hook pipeline: veto, fail closed, awaitables, ordering, alerts, plugin loading errors."""

from __future__ import annotations

import asyncio

import pytest
from helpers import campaign, human, run_script

from engine.hooks import hookimpl
from engine.models import Alert, Lead, Veto
from engine.plugins import Gate, PluginError, make_plugin_manager
from engine.store.base import DialContext


def ctx(lead_id: str = "L1") -> DialContext:
    return DialContext(lead=Lead(lead_id, "t", "+12125550001"), now=0.0, day_key="2026-01-05", attempts_today=0,
                       attempts_24h=0, dnc=False, invalid_number=False, last_abandoned_at=None, in_flight=False)


def gate(*plugins: object) -> Gate:
    return Gate(make_plugin_manager(entry_points_too=False, extra=plugins), campaign())


class Allow:
    @hookimpl
    def dialer_check_dial(self, ctx):
        return None


class Deny:
    def __init__(self, rule="deny"):
        self.rule = rule

    @hookimpl
    def dialer_check_dial(self, ctx):
        return Veto(self.rule, "because")


class Boom:
    @hookimpl
    def dialer_check_dial(self, ctx):
        raise RuntimeError("bug in plugin")


class AsyncDeny:
    @hookimpl
    def dialer_check_dial(self, ctx):
        async def later():
            await asyncio.sleep(0)
            return Veto("async", "decided after I/O")

        return later()


class AsyncBoom:
    @hookimpl
    def dialer_check_dial(self, ctx):
        async def later():
            raise ConnectionError("lookup service down")

        return later()


class Slow:
    @hookimpl
    def dialer_check_dial(self, ctx):
        return asyncio.sleep(60)


class WrongType:
    @hookimpl
    def dialer_check_dial(self, ctx):
        return "no"


async def test_no_plugins_allow():
    assert await gate().check(ctx()) is None
    assert await gate(Allow()).check(ctx()) is None


async def test_any_veto_blocks():
    v = await gate(Allow(), Deny(), Allow()).check(ctx())
    assert v == Veto("deny", "because")


async def test_exception_fails_closed():
    v = await gate(Allow(), Boom()).check(ctx())
    assert v is not None and v.rule == "plugin_error" and "bug in plugin" in v.reason


async def test_awaitable_results_are_awaited():
    assert (await gate(AsyncDeny()).check(ctx())).rule == "async"


async def test_failing_awaitable_fails_closed():
    v = await gate(AsyncBoom()).check(ctx())
    assert v.rule == "plugin_error" and "lookup service down" in v.reason


async def test_slow_plugin_times_out_closed():
    g = gate(Slow())
    g._timeout = 0.05
    v = await g.check(ctx())
    assert v.rule == "plugin_error"


async def test_wrong_return_type_fails_closed():
    assert (await gate(WrongType()).check(ctx())).rule == "plugin_error"


async def test_ordering_tryfirst_decides_which_veto_is_reported():
    class First:
        @hookimpl(tryfirst=True)
        def dialer_check_dial(self, ctx):
            return Veto("first", "x")

    class Last:
        @hookimpl(trylast=True)
        def dialer_check_dial(self, ctx):
            return Veto("last", "x")

    assert (await gate(First(), Last()).check(ctx())).rule == "first"
    assert (await gate(Last(), First()).check(ctx())).rule == "first"


async def test_alerts_are_collected_and_a_failing_risk_plugin_is_ignored():
    class A:
        @hookimpl
        def dialer_risk_alerts(self, ctx):
            return [Alert("complained", "complained before", "high", ("cancel",))]

    class B:
        @hookimpl
        def dialer_risk_alerts(self, ctx):
            async def later():
                return [Alert("vip", "VIP customer")]

            return later()

    class C:
        @hookimpl
        def dialer_risk_alerts(self, ctx):
            async def later():
                raise RuntimeError("x")

            return later()

    alerts = await gate(A(), B(), C()).alerts(ctx())
    assert {a.code for a in alerts} == {"complained", "vip"}


def test_vetoed_lead_is_never_dialled_and_the_block_is_recorded(vrun):
    class DenyL2:
        @hookimpl
        def dialer_check_dial(self, ctx):
            return Veto("test_rule", "not this one") if ctx.lead.lead_id == "L2" else None

    cfg = campaign(retry={"max_attempts": 1})
    dialer, summary, store = vrun(run_script(cfg, {"L1": human(), "L2": human()}, plugins=[DenyL2()]))
    rows = vrun(store.results("t"))
    assert [r["lead_id"] for r in rows] == ["L1"]
    blocks = vrun(store.blocks("t"))
    assert [(b["lead_id"], b["rule"]) for b in blocks] == [("L2", "test_rule")]
    assert dialer.pbx.originated == 1


def test_crashing_gate_plugin_blocks_every_dial(vrun):
    cfg = campaign(retry={"max_attempts": 1})
    dialer, summary, store = vrun(run_script(cfg, {"L1": human(), "L2": human()}, plugins=[Boom()]))
    assert dialer.pbx.originated == 0
    assert summary["blocked"] == 2


def test_alerts_reach_the_call_and_after_call_hooks_see_the_result(vrun):
    seen = []

    class Risk:
        @hookimpl
        def dialer_risk_alerts(self, ctx):
            return [Alert("sensitive", "asked not to be called often")]

        @hookimpl
        def dialer_after_call(self, call, result):
            async def later():
                seen.append((call.alerts, result.outcome.value))

            return later()

    cfg = campaign(retry={"max_attempts": 1})
    vrun(run_script(cfg, {"L1": human()}, plugins=[Risk()]))
    assert seen and seen[0][0][0].code == "sensitive" and seen[0][1] == "connected"


def test_unknown_hook_is_a_clear_error():
    class Typo:
        @hookimpl
        def dialer_chek_dial(self, ctx):
            return None

    with pytest.raises(PluginError, match="dialer_chek_dial"):
        make_plugin_manager(entry_points_too=False, extra=[Typo()])


def test_wrong_argument_names_are_a_clear_error():
    class BadArgs:
        @hookimpl
        def dialer_check_dial(self, context):
            return None

    with pytest.raises(PluginError, match="context"):
        make_plugin_manager(entry_points_too=False, extra=[BadArgs()])


def test_missing_campaign_plugin_module_is_a_clear_error():
    with pytest.raises(PluginError, match="no_such_plugin_module"):
        make_plugin_manager(["no_such_plugin_module"], entry_points_too=False)


def test_ranking_plugins_reorder_the_leads(vrun):
    class PreferL3:
        @hookimpl
        def dialer_rank_lead(self, lead):
            return 10.0 if lead.lead_id == "L3" else None

    class AlsoL2:
        @hookimpl
        def dialer_rank_lead(self, lead):
            async def later():
                return 5.0 if lead.lead_id == "L2" else 0.0

            return later()

    from engine.plugins import rank_leads
    from engine.store.memory import MemoryStore

    cfg = campaign(retry={"max_attempts": 1})
    pm = make_plugin_manager(entry_points_too=False, extra=[PreferL3(), AlsoL2()])
    leads = [Lead(f"L{i}", "t", f"+1212555000{i}") for i in (1, 2, 3)]
    vrun(rank_leads(pm, cfg, leads))
    assert [lead.score for lead in leads] == [0.0, 5.0, 10.0]
    store = MemoryStore()
    vrun(store.add_leads(leads))
    claimed = vrun(store.claim_leads("t", 3, now=1e12, node_id="n", lease_s=60))
    assert [lead.lead_id for lead in claimed] == ["L3", "L2", "L1"]


def test_a_dial_the_gate_refuses_after_its_reservation_leaves_only_the_block(vrun):
    """The Dialer reserves a burst with its contexts in one round trip, then asks the gate: a call the
    gate refuses is never dialled, and its reservation is given back whole -- no attempt counted, no
    number lock, no call recorded as lost once the lock would have lapsed (6 h here, the lock holds
    4 h); only the blocks, under the plugin's own rule, one each time the lead came back."""

    class NeverL2:
        @hookimpl
        def dialer_check_dial(self, ctx: DialContext, campaign):
            if ctx.lead.lead_id == "L2":
                return Veto("test.never", "not this one", retry_at=ctx.now + 3600)
            return None

    cfg = campaign(retry={"max_attempts": 1})
    leads = [Lead(f"L{i}", "t", f"+121255500{i:02d}") for i in range(1, 4)]
    dialer, summary, store = vrun(run_script(cfg, {f"L{i}": human(talk=30) for i in range(1, 4)},
                                             plugins=[NeverL2()], leads=leads, until=6 * 3600))
    blocks = vrun(store.blocks("t"))
    assert len(blocks) >= 5 and {(b["lead_id"], b["rule"]) for b in blocks} == {("L2", "test.never")}
    rows = vrun(store.results("t"))
    assert sorted(r["lead_id"] for r in rows) == ["L1", "L3"]  # nothing for L2: not dialled, nothing lost
    stored = store._leads[("t", "L2")]
    assert stored.attempts == 0 and stored.status == "pending"
    now = dialer.clock.now()
    [ctx] = vrun(store.dial_contexts([stored], now=now, day_keys=[dialer._day_key(stored, now)]))
    assert not ctx.in_flight and ctx.attempts_today == 0 and ctx.attempts_24h == 0

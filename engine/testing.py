"""Test fixtures for dialer plugins, shipped with the engine as a pytest plugin.

Installing ``dialer-engine`` registers this module under the ``pytest11`` entry
point (named ``engine.testing``), so in any project that depends on the engine
these fixtures are available with no conftest::

    from dialer_region_cap import plugin  # your plugin module

    def test_fourth_call_in_a_day_is_vetoed(dial_once, make_lead):
        lead = make_lead("+13055550100", timezone="America/New_York")
        out = dial_once(plugin, lead=lead, at="2026-01-05 10:00", earlier_calls=["1h", "2h", "3h"])
        assert out.vetoed and out.veto.rule == "region_cap.per_24h" and not out.dialled

    def test_pacer_keeps_its_cap(simulate_pacer):
        kpis = simulate_pacer(MyPacer(cap=10), agents=5, duration="30m")
        assert kpis["max_in_flight"] <= 10 and kpis["abandon_rate"] <= 0.03

Fixtures (each returns the function or object of the same purpose below):

``make_campaign`` -> :func:`campaign`, ``make_lead`` -> :func:`lead`, ``fake_clock`` ->
a :class:`FakeClock`, ``make_snapshot`` -> :func:`snapshot`, ``make_dial_context`` ->
:func:`dial_context`, ``check_dial`` -> :func:`check_dial`, ``dial_once`` -> :func:`dial_once`,
``simulate_pacer`` -> :func:`simulate_pacer`, ``vrun`` -> run a coroutine in virtual time.

Everything here is also importable (``from engine.testing import campaign, lead``).
``dial_once``, ``check_dial`` and ``simulate_pacer`` start their own virtual-time
event loop: call them from plain (not ``async``) test functions.

Times: ``at`` arguments take an aware ``datetime``, a naive ``datetime`` or a
string ``"YYYY-MM-DD HH:MM"`` (naive means local time of the called party: the
lead's ``timezone``, else the campaign's), or POSIX seconds. Durations take
seconds or strings such as ``"90s"``, ``"5m"``, ``"2h"``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from engine.clock import LoopClock
from engine.config import AgentModel, CampaignConfig, CustomerModel, campaign_from_dict, parse_duration
from engine.dialer import Dialer
from engine.hooks import hookimpl
from engine.models import (
    Q850,
    Agent,
    Alert,
    AnswerKind,
    CallAttempt,
    CallResult,
    Lead,
    Outcome,
    Veto,
    mask_phone,
)
from engine.pacing import Decision, Estimates, Pacer, Snapshot, dial_cap, make_pacer
from engine.pbx.sim import CallPlan, SimBackend
from engine.plugins import Gate, make_plugin_manager
from engine.store.base import Caps, DialContext
from engine.store.memory import MemoryStore
from simulations.vloop import VirtualTimeLoop

DEFAULT_START = datetime(2026, 1, 5, 14, 0, tzinfo=UTC)  # a Monday, 14:00 UTC
DEFAULT_PHONE = "+12125550100"

__all__ = [
    "DEFAULT_START",
    "NO_ANSWER",
    "DialAll",
    "DialOutcome",
    "FakeClock",
    "Script",
    "campaign",
    "check_dial",
    "dial_context",
    "dial_once",
    "human",
    "lead",
    "machine",
    "run_in_virtual_time",
    "run_one_call",
    "run_pacer_sim",
    "run_script",
    "simulate_pacer",
    "snapshot",
    "unanswered",
    "wall_time",
]


# -- campaigns, leads, time --------------------------------------------------------------------


def campaign(**sections: Any) -> CampaignConfig:
    """A validated campaign (id ``t``, mode ``progressive``) with the given sections merged in.

    ``campaign(retry={"max_attempts": 1}, hours={"start": "09:00"})``; each keyword is a
    section of the campaign TOML as a dict, validated exactly like a file would be.
    """
    data: dict[str, Any] = {"campaign": {"id": "t", "mode": "progressive"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return campaign_from_dict(data)


def lead(phone: str = DEFAULT_PHONE, *, lead_id: str | None = None, campaign_id: str = "t",
         timezone: str | None = None, tags: Iterable[str] = (), attributes: dict[str, Any] | None = None,
         **fields: Any) -> Lead:
    """A lead for campaign ``t`` (E.164 ``phone``; ``lead_id`` defaults to ``L`` + the digits).

    Other ``Lead`` fields (``tier``, ``score``, ``consent_source``, ...) pass through ``fields``.
    """
    return Lead(lead_id=lead_id or "L" + phone.lstrip("+"), campaign_id=campaign_id, phone=phone,
                timezone=timezone, tags=tuple(tags), attributes=dict(attributes or {}), **fields)


_make_lead = lead  # for functions whose ``lead`` argument hides the factory


def _seconds(value: float | str) -> float:
    return parse_duration(value)


def _zone_of(the_lead: Lead | None, cfg: CampaignConfig | None) -> ZoneInfo:
    name = (the_lead.timezone if the_lead is not None else None) or (cfg.campaign.timezone if cfg else "UTC")
    return ZoneInfo(name)


def wall_time(at: datetime | str | float | None, zone: ZoneInfo | str = "UTC") -> float:
    """POSIX seconds for ``at``: a naive datetime or a ``"YYYY-MM-DD HH:MM"`` string is read in ``zone``."""
    if at is None:
        return DEFAULT_START.timestamp()
    if isinstance(at, int | float):
        return float(at)
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    if at.tzinfo is None:
        at = at.replace(tzinfo=ZoneInfo(zone) if isinstance(zone, str) else zone)
    return at.timestamp()


class FakeClock:
    """A wall clock (``engine.clock.Clock``) that moves only when told to.

    Pass it wherever the engine takes a ``clock``; hooks themselves get the time in
    ``ctx.now`` and never need to read a clock.
    """

    def __init__(self, start: datetime | str | float = DEFAULT_START, zone: str = "UTC") -> None:
        self.zone = ZoneInfo(zone)
        self._now = wall_time(start, self.zone)

    def now(self) -> float:
        """Wall-clock POSIX seconds."""
        return self._now

    def advance(self, seconds: float | str) -> float:
        """Move forward by ``seconds`` (or ``"5m"``); returns the new time."""
        self._now += _seconds(seconds)
        return self._now

    def set(self, at: datetime | str | float) -> None:
        """Jump to ``at`` (read in the clock's zone when naive)."""
        self._now = wall_time(at, self.zone)

    def datetime(self, zone: str | None = None) -> datetime:
        """The current time as an aware datetime in ``zone`` (default: the clock's zone)."""
        return datetime.fromtimestamp(self._now, ZoneInfo(zone) if zone else self.zone)


# -- pacers ------------------------------------------------------------------------------------


def _elapsed(value: int | Sequence[float]) -> tuple[float, ...]:
    return (0.0,) * value if isinstance(value, int) else tuple(float(v) for v in value)


def snapshot(*, ready: int = 1, on_call: int | Sequence[float] = (), wrap_up: int | Sequence[float] = (),
             ringing: int | Sequence[float] = (), waiting: int = 0, previewing: int = 0, paused: int = 0,
             now: float = 0.0, answer_rate: float = 0.25, estimates: Estimates | None = None,
             allowance: float = 0.03, connect_limit: float = 2.0, ring_timeout: float = 25.0,
             max_dial_ratio: float = 4.0, live: int = 0, abandoned: int = 0) -> Snapshot:
    """The ``Snapshot`` a pacer gets, from plain numbers.

    ``on_call``, ``wrap_up`` and ``ringing`` take a count (each with 0 s elapsed) or the
    elapsed seconds of each agent / call: ``snapshot(ready=2, on_call=[30, 95], ringing=3)``.
    ``estimates`` defaults to fresh ones with the given prior ``answer_rate``; ``live`` and
    ``abandoned`` are the campaign's counts so far (for a pacer with its own drop feedback).
    """
    return Snapshot(now=now, ready=ready, on_call=_elapsed(on_call), wrap_up=_elapsed(wrap_up),
                    previewing=previewing, paused=paused, ringing=_elapsed(ringing), waiting=waiting,
                    estimates=estimates or Estimates(answer_rate=answer_rate, ring_timeout=ring_timeout),
                    allowance=allowance, connect_limit=connect_limit, ring_timeout=ring_timeout,
                    max_dial_ratio=max_dial_ratio, live=live, abandoned=abandoned)


class DialAll:
    """A test pacer: as many dials as the dial-ratio cap allows."""

    name = "dial-all"

    def decide(self, snap: Snapshot) -> Decision:
        return Decision(dials=dial_cap(snap))


# -- scripted customers ------------------------------------------------------------------------


class Script:
    """Customers whose every call follows a plan chosen by the lead id."""

    def __init__(self, plans: dict[str, CallPlan]) -> None:
        self.plans = plans

    def plan(self, call: CallAttempt, ring_timeout: float) -> CallPlan:
        return self.plans[call.lead.lead_id]


def human(after: float = 3.0, talk: float = 60.0, patience: float = 10.0) -> CallPlan:
    """A person answers after ``after`` s and talks ``talk`` s once connected."""
    return CallPlan(after, machine=False, amd_verdict=AnswerKind.HUMAN, talk=talk, patience=patience)


def machine(after: float = 3.0, verdict: AnswerKind = AnswerKind.MACHINE) -> CallPlan:
    """An answering machine picks up (AMD would say ``verdict``)."""
    return CallPlan(after, machine=True, amd_verdict=verdict, talk=20.0)


def unanswered(cause: int, after: float = 4.0) -> CallPlan:
    """Never answered: the line is released after ``after`` s with Q.850 ``cause``."""
    return CallPlan(None, cause=int(cause), end_after=after)


NO_ANSWER = CallPlan(None, cause=int(Q850.NO_ANSWER), end_after=25.0)


def _agent_model() -> AgentModel:
    return AgentModel(wrap_mean=10.0, think_mean=2.0, skip_rate=0.0)


def _customer_model() -> CustomerModel:
    return CustomerModel(sale_rate=0.0, refusal_rate=0.0, callback_rate=0.0)


async def run_script(cfg: CampaignConfig, plans: dict[str, CallPlan], *, agents: int = 1,
                     until: float | None = None, plugins: Sequence[object] = (), store: MemoryStore | None = None,
                     seed: int = 1, pacer: Any = None, leads: list[Lead] | None = None,
                     **dialer_kwargs: Any) -> tuple[Dialer, dict[str, Any], MemoryStore]:
    """Run the real dialer on the sim backend with scripted customers (inside a virtual-time loop).

    ``plans`` maps lead ids to what each called party does; leads are made up
    (``+1212555....``) unless given. Only ``plugins`` are loaded (no entry points).
    Returns the dialer, its KPI summary and the store.
    """
    from simulations.agents import SimDesk

    store = store or MemoryStore()
    await store.add_leads(leads if leads is not None else
                          [Lead(lead_id=lid, campaign_id=cfg.id, phone=f"+1212555{i:04d}")
                           for i, lid in enumerate(plans, 1)])
    backend = SimBackend(Script(plans), amd=cfg.amd.enabled)
    sim = cfg.simulation
    desk = SimDesk(sim.agent if sim else _agent_model(), sim.customers if sim else _customer_model(), backend,
                   np.random.default_rng(seed))
    dialer = Dialer(cfg, store=store, pbx=backend, desk=desk,
                    agents=[Agent(f"A{i}") for i in range(1, agents + 1)],
                    plugins=make_plugin_manager(entry_points_too=False, extra=plugins),
                    clock=LoopClock(datetime(2026, 1, 5, 14, 0)),
                    pacer=pacer or make_pacer(cfg.campaign.mode), **dialer_kwargs)
    summary = await dialer.run(until=until)
    return dialer, summary, store


def run_in_virtual_time(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion on a fresh virtual-time event loop and return its result."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)


# -- hooks: a context and the gate, without the engine -----------------------------------------


def dial_context(lead: Lead | None = None, *, at: datetime | str | float | None = None,
                 campaign: CampaignConfig | None = None, attempts_today: int = 0, attempts_24h: int = 0,
                 dnc: bool = False, invalid_number: bool = False, last_abandoned_at: float | None = None,
                 in_flight: bool = False, history: Sequence[dict[str, Any]] = ()) -> DialContext:
    """The ``DialContext`` the pre-dial hooks receive, built by hand (``day_key`` is the
    called party's local date at ``at``)."""
    the_lead = lead if lead is not None else _make_lead()
    now = wall_time(at, _zone_of(the_lead, campaign))
    day_key = datetime.fromtimestamp(now, _zone_of(the_lead, campaign)).date().isoformat()
    return DialContext(lead=the_lead, now=now, day_key=day_key, attempts_today=attempts_today,
                       attempts_24h=attempts_24h, dnc=dnc, invalid_number=invalid_number,
                       last_abandoned_at=last_abandoned_at, in_flight=in_flight, history=tuple(history))


def check_dial(*plugins: object, ctx: DialContext | None = None,
               campaign: CampaignConfig | None = None) -> Veto | None:
    """The pre-dial gate's decision on ``ctx`` with only ``plugins`` loaded.

    Uses the engine's real ``Gate``: any veto blocks, an exception or a failed
    awaitable becomes a ``plugin_error`` veto (fail closed), awaitables are awaited.
    """
    cfg = campaign if campaign is not None else _default_campaign()
    gate = Gate(make_plugin_manager(entry_points_too=False, extra=plugins), cfg)
    return run_in_virtual_time(gate.check(ctx if ctx is not None else dial_context(campaign=cfg)))


@functools.lru_cache(maxsize=1)
def _default_campaign() -> CampaignConfig:
    return campaign()


# -- one call through the real engine ----------------------------------------------------------


@dataclass(frozen=True)
class DialOutcome:
    """What happened to the one lead of :func:`dial_once`.

    ``veto`` is the pre-dial gate's decision (the plugins): the ``Veto`` that blocked the
    dial, or None when every plugin allowed it. A dial the plugins allowed can still be
    ``refused`` by the engine's own reservation checks (DNC, per-number caps, ...).
    """

    veto: Veto | None
    refused: Veto | None  # the engine's reservation refused the dial (rule: dnc, cap_per_day, cap_24h, ...)
    dialled: bool  # the call was originated
    context: DialContext | None  # what the pre-dial hooks were given
    alerts: tuple[Alert, ...]  # risk alerts collected for the agent
    result: dict[str, Any] | None  # the result row, when the call was dialled
    blocks: tuple[dict[str, Any], ...]  # refusals recorded in the store (rule, reason), for reports
    summary: dict[str, Any]  # the run's KPI summary

    @property
    def vetoed(self) -> bool:
        """A plugin vetoed the dial (or failed, which vetoes too)."""
        return self.veto is not None

    @property
    def allowed(self) -> bool:
        """Every plugin allowed the dial."""
        return self.veto is None


class _WatchedStore(MemoryStore):
    def __init__(self, on_block: Any) -> None:
        super().__init__()
        self._on_block = on_block

    async def record_block(self, campaign_id: str, lead: Lead, veto: Veto, *, now: float) -> None:
        await super().record_block(campaign_id, lead, veto, now=now)
        self._on_block()


class _WatchedGate(Gate):
    def __init__(self, pm: Any, cfg: CampaignConfig) -> None:
        super().__init__(pm, cfg)
        self.seen: list[tuple[DialContext, Veto | None]] = []
        self.alerts_seen: tuple[Alert, ...] = ()

    async def check(self, ctx: Any) -> Veto | None:
        veto = await super().check(ctx)
        self.seen.append((ctx, veto))
        return veto

    async def alerts(self, ctx: Any) -> tuple[Alert, ...]:
        found = await super().alerts(ctx)
        self.alerts_seen = found
        return found


async def _seed_earlier_calls(store: MemoryStore, cfg: CampaignConfig, the_lead: Lead, now: float,
                              earlier: Sequence[float | str]) -> None:
    """Record calls to ``the_lead``'s number ``earlier`` seconds before ``now``, through the store's API."""
    zone = _zone_of(the_lead, cfg)
    big = Caps(per_day=10**6, per_24h=10**6, lifetime=10**6, lock_s=1.0)
    for n, ago in enumerate(sorted((_seconds(a) for a in earlier), reverse=True), 1):
        t = now - ago
        day_key = datetime.fromtimestamp(t, zone).date().isoformat()
        call = CallAttempt(call_id=f"earlier-{n}", lead=the_lead, campaign_id=cfg.id, attempt_no=n)
        res = await store.reserve_attempt(call, now=t, day_key=day_key, caps=big, node_id="earlier")
        if not res.ok:
            raise ValueError(f"earlier call {ago:g} s before could not be recorded: {res.rule} ({res.reason})")
        started = datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
        result = CallResult(call_id=call.call_id, campaign_id=cfg.id, lead_id=the_lead.lead_id, attempt_no=n,
                            outcome=Outcome.NO_ANSWER, cause=int(Q850.NO_ANSWER), disposition=None, agent_id=None,
                            answer_kind=None, started=started, ring_s=25.0, wait_s=None, talk_s=None,
                            phone_masked=mask_phone(the_lead.phone), tier=the_lead.tier)
        await store.finish_attempt(call, result, now=t + 25.0, next_eligible=now, abandoned=False, live=False)


async def run_one_call(*plugins: object, lead: Lead | None = None, at: datetime | str | float | None = None,
                       campaign: CampaignConfig | None = None, earlier_calls: Sequence[float | str] = (),
                       answer: CallPlan | None = None, dnc: bool = False) -> DialOutcome:
    """Coroutine form of :func:`dial_once`; must run on a virtual-time loop (see ``vrun``)."""
    from simulations.agents import SimDesk

    cfg = campaign if campaign is not None else _default_campaign()
    the_lead = replace(lead) if lead is not None else _make_lead()  # the store counts attempts on its copy
    if the_lead.campaign_id != cfg.id:
        raise ValueError(f"lead {the_lead.lead_id} belongs to campaign {the_lead.campaign_id!r}, not {cfg.id!r}")
    start = wall_time(at, _zone_of(the_lead, cfg))
    holder: dict[str, Dialer] = {}

    def stop() -> None:
        holder["dialer"].stop()

    class _StopAfterCall:
        @hookimpl(trylast=True)
        def dialer_after_call(self) -> None:
            stop()

    store = _WatchedStore(stop)
    await store.add_leads([the_lead])
    await _seed_earlier_calls(store, cfg, the_lead, start, earlier_calls)
    if dnc:
        await store.add_dnc([the_lead.phone])
    backend = SimBackend(Script({the_lead.lead_id: answer or human()}), amd=cfg.amd.enabled)
    desk = SimDesk(_agent_model(), _customer_model(), backend, np.random.default_rng(1))
    pm = make_plugin_manager(entry_points_too=False, extra=[*plugins, _StopAfterCall()])
    dialer = Dialer(cfg, store=store, pbx=backend, desk=desk, agents=[Agent("A1")], plugins=pm,
                    clock=LoopClock(datetime.fromtimestamp(start, UTC)), pacer=DialAll())
    gate = dialer.gate = _WatchedGate(pm, cfg)
    holder["dialer"] = dialer
    summary = await dialer.run(until=4 * 3600.0)
    ctx, veto = gate.seen[0] if gate.seen else (None, None)
    blocks = tuple(await store.blocks(cfg.id))
    results = await store.results(cfg.id)
    ours = [r for r in results if not str(r["call_id"]).startswith("earlier-")]
    refused = None
    if veto is None and blocks:
        refused = Veto(blocks[0]["rule"], blocks[0]["reason"])
    return DialOutcome(veto=veto, refused=refused, dialled=backend.originated > 0, context=ctx,
                       alerts=gate.alerts_seen, result=ours[0] if ours else None, blocks=blocks, summary=summary)


def dial_once(*plugins: object, lead: Lead | None = None, at: datetime | str | float | None = None,
              campaign: CampaignConfig | None = None, earlier_calls: Sequence[float | str] = (),
              answer: CallPlan | None = None, dnc: bool = False) -> DialOutcome:
    """One lead, one agent, through the real engine on the simulated PBX, in virtual time.

    :param plugins: plugin modules or objects to load (installed entry points are not loaded).
    :param lead: the lead to dial (default: :func:`lead`); must belong to the campaign (id ``t``).
    :param at: wall-clock time of the dial (naive: the lead's local time); default 2026-01-05 14:00 UTC.
    :param campaign: the campaign (default: :func:`campaign`).
    :param earlier_calls: earlier calls to the same number, as how long before ``at`` each was
        made (``["1h", "3h"]``); they count in ``ctx.attempts_today`` / ``attempts_24h`` and history.
    :param answer: what the called party does when dialled (default: a person answers and talks).
    :param dnc: put the number on the DNC list first.
    :return: a :class:`DialOutcome`: ``vetoed``/``veto``, ``dialled``, ``context``, ``result``...
    """
    return run_in_virtual_time(run_one_call(*plugins, lead=lead, at=at, campaign=campaign,
                                            earlier_calls=earlier_calls, answer=answer, dnc=dnc))


# -- a short simulation for a pacer ------------------------------------------------------------


class _Watched:
    """Wraps a pacer to count its decisions and the most calls it ever had in flight."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.name = pacer.name
        self.decisions = 0
        self.max_in_flight = 0
        self.max_dials = 0

    def decide(self, snap: Snapshot) -> Decision:
        decision = self.pacer.decide(snap)
        self.decisions += 1
        self.max_dials = max(self.max_dials, decision.dials)
        self.max_in_flight = max(self.max_in_flight, len(snap.ringing) + snap.waiting + decision.dials)
        return decision


def _as_pacer(pacer: Pacer | type | str) -> Pacer:
    if isinstance(pacer, str):
        return make_pacer(pacer)
    if isinstance(pacer, type):
        pacer = pacer()
    if not isinstance(pacer, Pacer):
        raise TypeError(f"{pacer!r} is not a pacer: it needs a name attribute and a decide(snapshot) method")
    return pacer


async def run_pacer_sim(pacer: Pacer | type | str, *, agents: int = 5, leads: int = 1000,
                        duration: float | str = "30m", seed: int = 1, campaign: CampaignConfig | None = None,
                        customers: dict[str, Any] | None = None, plugins: Sequence[object] = ()) -> dict[str, Any]:
    """Coroutine form of :func:`simulate_pacer`; must run on a virtual-time loop."""
    from engine.config import SimulationSection
    from simulations.agents import SimDesk
    from simulations.model import CustomerBehaviour
    from simulations.runner import generate_leads, simulated_agents

    cfg = campaign if campaign is not None else _default_campaign()
    base = cfg.simulation or SimulationSection()
    model = base.customers.model_copy(update=customers or {})
    CustomerModel.model_validate(model.model_dump())  # the same validation as a scenario file
    sim = base.model_copy(update={"agents": agents, "leads": leads, "seed": seed,
                                  "duration": _seconds(duration), "customers": model})
    watched = _Watched(_as_pacer(pacer))
    start = sim.start if sim.start.tzinfo else sim.start.replace(tzinfo=ZoneInfo(cfg.campaign.timezone))
    backend = SimBackend(CustomerBehaviour(sim.customers, np.random.default_rng([seed, 1])), amd=cfg.amd.enabled)
    desk = SimDesk(sim.agent, sim.customers, backend, np.random.default_rng([seed, 2]))
    store = MemoryStore()
    await store.add_leads(generate_leads(cfg, sim.leads, seed))
    dialer = Dialer(cfg, store=store, pbx=backend, desk=desk, agents=simulated_agents(cfg, sim.agents),
                    plugins=make_plugin_manager(entry_points_too=False, extra=plugins), clock=LoopClock(start),
                    pacer=watched)
    summary = await dialer.run(until=sim.duration)
    summary.pop("after_drain", None)
    summary.update(mode=watched.name, seed=seed, decisions=watched.decisions, max_in_flight=watched.max_in_flight,
                   max_dials=watched.max_dials, leads=await store.lead_counts(cfg.id))
    return summary


def simulate_pacer(pacer: Pacer | type | str, *, agents: int = 5, leads: int = 1000, duration: float | str = "30m",
                   seed: int = 1, campaign: CampaignConfig | None = None, customers: dict[str, Any] | None = None,
                   plugins: Sequence[object] = ()) -> dict[str, Any]:
    """A short campaign dialled by ``pacer`` through the real engine, in virtual time; returns its KPIs.

    :param pacer: a pacer object, a pacer class (built with no arguments) or an installed pacer's name.
    :param agents: simulated agents. :param leads: generated leads. :param duration: shift length.
    :param seed: one seed, one result. :param campaign: the campaign (its ``[simulation]`` section
        gives the agent and customer models; defaults otherwise).
    :param customers: overrides of the customer model, e.g. ``{"answer_rate": 0.3, "talk_mean": 90}``.
    :param plugins: plugins to load (none by default: installed entry points are not loaded).
    :return: the KPI summary (``dials``, ``live``, ``connected``, ``abandoned``, ``abandon_rate``,
        ``occupancy``, ``talk_min_per_agent_hour``, ``contact_rate``, ...) plus ``decisions`` (how
        often the pacer was asked), ``max_dials`` (largest single decision) and ``max_in_flight``
        (most unanswered calls plus waiting answers right after any decision).
    """
    return run_in_virtual_time(run_pacer_sim(pacer, agents=agents, leads=leads, duration=duration, seed=seed,
                                             campaign=campaign, customers=customers, plugins=plugins))


# -- the pytest fixtures -----------------------------------------------------------------------


@pytest.fixture
def make_campaign() -> Any:
    """:func:`campaign`: ``make_campaign(retry={"max_attempts": 1})``."""
    return campaign


@pytest.fixture
def make_lead() -> Any:
    """:func:`lead`: ``make_lead("+13055550100", timezone="America/New_York")``."""
    return lead


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`FakeClock` at 2026-01-05 14:00 UTC: ``fake_clock.advance("5m")``."""
    return FakeClock()


@pytest.fixture
def make_snapshot() -> Any:
    """:func:`snapshot`: ``make_snapshot(ready=2, on_call=[30, 95], ringing=3)``."""
    return snapshot


@pytest.fixture
def make_dial_context() -> Any:
    """:func:`dial_context`: ``make_dial_context(lead, at="2026-01-05 19:30", attempts_24h=2)``."""
    return dial_context


@pytest.fixture(name="check_dial")
def check_dial_fixture() -> Any:
    """:func:`check_dial`: ``check_dial(my_plugin, ctx=ctx)`` -> ``Veto | None`` through the real gate."""
    return check_dial


@pytest.fixture(name="dial_once")
def dial_once_fixture() -> Any:
    """:func:`dial_once`: one call through the real engine -> :class:`DialOutcome`."""
    return dial_once


@pytest.fixture(name="simulate_pacer")
def simulate_pacer_fixture() -> Any:
    """:func:`simulate_pacer`: a short virtual-time campaign for a pacer -> KPI dict."""
    return simulate_pacer


@pytest.fixture
def vrun() -> Any:
    """Run a coroutine to completion in virtual time: ``result = vrun(coro)``."""
    return run_in_virtual_time

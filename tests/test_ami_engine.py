"""The real engine (``Dialer``) on the asterisk backend against in-process AMI emulators over real TCP:
opt-out in the abandon message, and one engine driving two Asterisk servers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from amitest import SECRET, SECRET_ENV, ami_secret, settle, until  # noqa: F401  (ami_secret: autouse fixture)

from engine.clock import SystemClock
from engine.config import CampaignConfig, campaign_from_dict
from engine.models import CallAttempt, Lead
from engine.pbx.asterisk import AmiServer, AsteriskBackend, AsteriskConfig
from engine.pbx.base import PbxError
from engine.store.memory import MemoryStore
from simulations.ami_emulator import AmiEmulator, Contexts, default_plan, with_default_options
from simulations.runner import run_sim_campaign


def backend(*ports: int, amd: bool = False) -> AsteriskBackend:
    return AsteriskBackend(AsteriskConfig(
        servers=tuple(AmiServer(port=p, secret_env=SECRET_ENV) for p in ports),
        trunk="Local/{digits}@dialer-outbound/n", amd=amd, action_timeout=2.0, ping_interval=30.0,
        reconnect_delay=0.02, reconnect_max=0.2, connect_timeout=1.0))


def campaign(cid: str, *, agents: int, wrap: str, amd: bool = False) -> CampaignConfig:
    return campaign_from_dict({
        "campaign": {"id": cid, "mode": "fixed", "backend": "asterisk", "timezone": "America/New_York"},
        "hours": {"start": "00:00", "end": "24:00"},
        "amd": {"enabled": amd},
        "retry": {"max_attempts": 1},
        "simulation": {"agents": agents, "leads": 0, "duration": "60s",
                       "agent": {"wrap_mean": wrap},
                       "customers": {"sale_rate": 0.0, "refusal_rate": 0.0, "callback_rate": 0.0}},
    })


def attempt(call_id: str, phone: str) -> CallAttempt:
    return CallAttempt(call_id, Lead(f"L{call_id}", "camp", phone), "camp", 1)


def leads(cid: str, phones: list[str]) -> list[Lead]:
    return [Lead(f"L{i:03d}", cid, p, timezone="America/New_York") for i, p in enumerate(phones)]


async def dnc(store: MemoryStore, lead: Lead) -> bool:
    return (await store.dial_context(lead, now=SystemClock().now(), day_key="d")).dnc


async def test_an_opt_out_puts_the_number_on_dnc_while_the_call_is_still_up() -> None:
    """Three people answer at once for two agents who talk longer than the connect limit: one is
    abandoned, presses 9 in the message, and its number is on DNC before the call has ended."""
    emu = AmiEmulator(secret=SECRET, time_scale=0.5, plan=with_default_options(default_plan, opt_out_digits="5"),
                      contexts=Contexts(optout_message_s=3600.0))  # the confirmation never ends on its own
    await emu.start()
    store = MemoryStore()
    cfg = campaign("optout", agents=2, wrap="0.2s")
    people = leads(cfg.id, ["+12125551005", "+12125551015", "+12125551025"])
    be = backend(emu.port)
    run = asyncio.create_task(run_sim_campaign(cfg, leads=people, store=store, backend=be, clock=SystemClock()))
    try:
        await until(lambda: len(emu.journal.opt_outs) == 1 or run.done())
        (cid,) = emu.journal.opt_outs
        on_dnc: list[Lead] = []

        async def check() -> None:
            on_dnc[:] = [lead for lead in people if await dnc(store, lead)]

        async with asyncio.timeout(10):
            while not on_dnc:
                await check()
                await asyncio.sleep(0.01)
        assert len(on_dnc) == 1
        assert cid in be.in_flight(), "the DNC entry must not wait for the end of the call"
        assert emu.remote_hangup(cid, 16)
        async with asyncio.timeout(30):
            summary = await run
    finally:
        await settle(run, emu)
    rows = {r["lead_id"]: r for r in await store.results(cfg.id)}
    assert sorted(r["outcome"] for r in rows.values()) == ["abandoned", "connected", "connected"]
    (opted,) = on_dnc
    assert rows[opted.lead_id]["call_id"] == cid and rows[opted.lead_id]["disposition"] == "dnc_request"
    assert emu.journal.abandon_messages == {cid: 1}
    assert summary["abandoned"] == 1
    assert [lead for lead in people if await dnc(store, lead)] == [opted]  # the others were connected


async def test_two_servers_pin_agents_and_calls_so_every_connect_succeeds() -> None:
    """One engine, two Asterisk servers: agent sessions and customer legs share one server, so every
    person is either bridged to the agent the engine chose or abandoned with the message, never left
    in silence by a connect that crossed servers."""
    emus = [AmiEmulator(secret=SECRET, time_scale=0.1, plan=with_default_options(default_plan, patience=40.0))
            for _ in range(2)]
    ports = [await e.start() for e in emus]
    cfg = campaign("two-servers", agents=3, wrap="1s", amd=True)
    phones = [f"+1212555{2000 + i:04d}" for i in range(60)]
    store = MemoryStore()
    be = backend(*ports, amd=True)
    try:
        async with asyncio.timeout(90):
            summary = await run_sim_campaign(cfg, leads=leads(cfg.id, phones), store=store, backend=be,
                                             clock=SystemClock())
    finally:
        for e in emus:
            await e.close()
    rows = await store.results(cfg.id)
    home, other = emus
    assert len(rows) == len(phones) == sum(home.journal.originates.values())
    assert not other.journal.originates, "a call placed where no agent session lives"
    by_digit = {"4": {"machine"}, "6": {"no_answer"}, "7": {"no_answer"}, "8": {"busy"}, "9": {"congestion"}}
    phone_of = {f"L{i:03d}": p for i, p in enumerate(phones)}
    for r in rows:
        assert r["outcome"] in by_digit.get(phone_of[r["lead_id"]][-1], {"connected", "abandoned"}), r
    connected = {r["call_id"]: r["agent_id"] for r in rows if r["outcome"] == "connected"}
    abandoned = {r["call_id"] for r in rows if r["outcome"] == "abandoned"}
    assert connected and home.journal.bridged == connected
    assert dict(home.journal.abandon_messages) == dict.fromkeys(abandoned, 1)
    assert summary["errors"] == 0


async def test_agent_server_down_refuses_rather_than_splitting_the_team() -> None:
    """While the agents' server is unreachable its sessions may still be up: nothing is placed on the
    other server, where no agent could take it; once it is back, the sessions and the calls are there."""
    emus = [AmiEmulator(secret=SECRET, plan=lambda n, v: default_plan("+15550000", v)) for _ in range(2)]
    ports = [await e.start() for e in emus]
    home, other = emus
    be = backend(*ports)
    events: list[Any] = []
    await be.start(events.append)
    try:
        for agent in ("a1", "a2"):
            await be.agent_login(agent)
        assert be.agent_server == f"127.0.0.1:{ports[0]}"
        assert sum(c.startswith("PJSIP/a") for c in home.channels) == 2 and other.channels == []
        await home.close()  # the agents' server is gone; its sessions' fate is unknown from here
        await until(lambda: be.connected_servers == [f"127.0.0.1:{ports[1]}"])
        with pytest.raises(PbxError, match="agents' Asterisk server"):
            await be.originate(attempt("x1", "+15551000"), ring_timeout=30, caller_id="D <1>")
        with pytest.raises(PbxError, match="agents' Asterisk server"):
            await be.agent_login("a3")
        assert other.journal.originates == {} and other.channels == []
        await home.start()  # back, restarted: the sessions are gone, and called back together
        await until(lambda: sorted(c.split("-")[0] for c in home.channels) == ["PJSIP/a1", "PJSIP/a2"])
        await be.originate(attempt("x2", "+15551000"), ring_timeout=30, caller_id="D <1>")
        assert be.agent_server == f"127.0.0.1:{ports[0]}" and list(home.journal.originates) == ["x2"]
        assert other.journal.originates == {} and other.channels == []
    finally:
        await be.close()
        for e in emus:
            await e.close()


async def test_a_login_refused_on_reconnect_stops_the_run_instead_of_burning_the_leads() -> None:
    """The secret is changed on the PBX mid-run and the link drops: the reconnect is refused, and the
    run stops and says why, rather than marking every remaining lead as a failed attempt."""
    emu = AmiEmulator(secret=SECRET, time_scale=0.2, plan=lambda n, v: default_plan("+15550000", v))
    await emu.start()
    store = MemoryStore()
    cfg = campaign("rotated", agents=2, wrap="0.2s")
    phones = [f"+1212555{3000 + i:04d}" for i in range(200)]
    run = asyncio.create_task(run_sim_campaign(cfg, leads=leads(cfg.id, phones), store=store,
                                               backend=backend(emu.port), clock=SystemClock()))
    try:
        await until(lambda: emu.originate_count >= 3 or run.done())
        assert not run.done()
        emu._secret = "rotated-on-the-pbx-only"
        emu.drop_connections()
        async with asyncio.timeout(30):
            summary = await run
    finally:
        await settle(run, emu)
    assert "login refused" in summary["failed"]
    rows = await store.results(cfg.id)
    assert len(rows) < 50, "the run went on dialling after the PBX logged it out"
    assert all(r["outcome"] in ("connected", "abandoned", "unknown", "failed") for r in rows)
    assert "unknown" in {r["outcome"] for r in rows}  # the calls the link could no longer follow
    untouched = [lead for lead in await store.claim_leads(cfg.id, 500, now=SystemClock().now() + 1, node_id="check",
                                                          lease_s=60) if lead.attempts == 0]
    assert len(untouched) >= 150


async def test_while_the_pbx_is_unreachable_nothing_is_dialled_and_no_lead_is_spent() -> None:
    """The only server goes away for a while: dialling pauses (a dial could only fail and spend the
    lead's attempt), and resumes once the server is back; no call is recorded as failed."""
    emu = AmiEmulator(secret=SECRET, time_scale=0.2, plan=lambda n, v: default_plan("+15550000", v))
    await emu.start()
    store = MemoryStore()
    cfg = campaign("outage", agents=2, wrap="0.2s")
    phones = [f"+1212555{4000 + i:04d}" for i in range(16)]
    dialers: list[Any] = []
    run = asyncio.create_task(run_sim_campaign(cfg, leads=leads(cfg.id, phones), store=store,
                                               backend=backend(emu.port), clock=SystemClock(),
                                               on_dialer=dialers.append))
    try:
        await until(lambda: emu.originate_count >= 3 or run.done())
        await emu.close()  # the PBX is gone; the engine keeps trying to reconnect
        await until(lambda: bool(dialers) and dialers[0].pbx_down)
        dials_while_down = dialers[0].counters.dials
        await asyncio.sleep(0.5)  # several pacing rounds with no server
        assert dialers[0].counters.dials == dials_while_down
        await emu.start()  # back (restarted: the calls it had are gone)
        await until(lambda: not dialers[0].pbx_down)
        async with asyncio.timeout(60):
            summary = await run
    finally:
        await settle(run, emu)
    rows = await store.results(cfg.id)
    outcomes = {r["outcome"] for r in rows}
    assert "failed" not in outcomes, outcomes
    assert len(rows) == len(phones) and summary["errors"] == 0

"""Agent sessions that vanish: the backend says so (``AgentSession``), the pool pauses the agent, and the
engine gives them no call until the session is back. Breaks, calls and wrap-ups keep their own course.

Backend and engine run against the AMI emulator over real TCP; the pool's rules are checked directly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from amitest import SECRET, SECRET_ENV, ami_secret, settle, until  # noqa: F401  (ami_secret: autouse fixture)

from engine.agents import AgentPool
from engine.clock import SystemClock
from engine.config import campaign_from_dict
from engine.dialer import Dialer
from engine.models import Agent, AgentState, Lead
from engine.pbx.asterisk import AmiServer, AsteriskBackend, AsteriskConfig
from engine.pbx.base import AgentSession
from engine.store.memory import MemoryStore
from simulations.ami_emulator import AmiEmulator, default_plan, with_default_options
from simulations.runner import run_sim_campaign

NETWORK_OUT_OF_ORDER = 38  # a session lost, not put down by the agent (16)





def backend(port: int, transport: str = "native") -> AsteriskBackend:
    return AsteriskBackend(AsteriskConfig(
        servers=(AmiServer(port=port, secret_env=SECRET_ENV),), trunk="Local/{digits}@dialer-outbound/n",
        action_timeout=2.0, ping_interval=30.0, reconnect_delay=0.02, reconnect_max=0.1, connect_timeout=1.0,
        agent_answer_timeout=0.3, transport=transport))


def session_of(emu: AmiEmulator, agent: str) -> list[str]:
    return [c for c in emu.channels if c.startswith(f"PJSIP/{agent}-")]


# -- the backend --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["native", "panoramisk"])
async def test_a_lost_session_is_reported_and_called_back_a_hung_up_phone_only_reported(transport: str) -> None:
    emu = AmiEmulator(secret=SECRET, time_scale=0.01)
    await emu.start()
    be = backend(emu.port, transport)
    events: list[Any] = []
    await be.start(events.append)
    try:
        for agent in ("7", "8"):
            await be.agent_login(agent)
        assert [e for e in events if isinstance(e, AgentSession)] == []  # a first login is no news
        emu.unreachable_agents.add("7")
        (chan,) = session_of(emu, "7")
        assert emu.remote_hangup(chan, NETWORK_OUT_OF_ORDER)
        await until(lambda: AgentSession("7", False) in events)
        await until(lambda: emu.originate_count >= 4)  # called back at least twice: the phone does not answer
        assert AgentSession("7", True) not in events
        emu.unreachable_agents.clear()
        await until(lambda: AgentSession("7", True) in events)
        assert len(session_of(emu, "7")) == 1
        (chan8,) = session_of(emu, "8")
        assert emu.remote_hangup(chan8, 16)  # the agent put the phone down: reported, not called back
        await until(lambda: AgentSession("8", False) in events)
        calls_before = emu.originate_count
        await asyncio.sleep(0.3)  # three times the longest retry delay: a call-back would have gone out
        assert emu.originate_count == calls_before and session_of(emu, "8") == []
        await emu.restart()  # every session lost at once: reported, then back
        await until(lambda: events.count(AgentSession("7", False)) == 2 and events.count(AgentSession("7", True)) == 2)
        assert AgentSession("8", True) not in events
    finally:
        await be.close()
        await emu.close()


# -- the pool -----------------------------------------------------------------------------------------


def pool(*ids: str) -> AgentPool:
    p = AgentPool([Agent(i) for i in ids], clock=lambda: 0.0)
    for i in ids:
        p.login(i)
    return p


def test_a_ready_agent_is_paused_until_the_session_is_back() -> None:
    p = pool("a", "b")
    assert p.session_lost("a") and not p.session_lost("a") and not p.session_lost("nobody")
    assert p.agents["a"].state is AgentState.PAUSED
    assert p.take_ready().agent_id == "b"  # type: ignore[union-attr]
    assert p.take_ready() is None
    assert p.session_back("a") and not p.session_back("a")
    assert p.agents["a"].state is AgentState.READY and p.take_ready().agent_id == "a"  # type: ignore[union-attr]


def test_an_agent_on_a_call_finishes_it_then_waits_for_the_session() -> None:
    p = pool("a")
    agent = p.take_ready()
    assert agent is not None
    p.session_lost("a")
    assert agent.state is AgentState.ON_CALL  # the call in progress is not touched
    p.to_wrap_up(agent)
    p.make_ready(agent)  # end of wrap-up
    assert agent.state is AgentState.PAUSED and p.take_ready() is None
    p.session_back("a")
    assert agent.state is AgentState.READY
    # handed to an answer that hung up before the bridge, while the session was down: not ready either
    agent2 = p.take_ready()
    assert agent2 is agent
    p.session_lost("a")
    p.return_unused(agent)
    assert agent.state is AgentState.PAUSED and p.count(AgentState.READY) == 0


def test_a_session_back_does_not_end_a_break_nor_a_break_end_a_lost_session() -> None:
    p = pool("a")
    p.pause("a")  # a break
    p.session_lost("a")
    p.session_back("a")
    assert p.agents["a"].state is AgentState.PAUSED  # still on the break
    p.make_ready(p.agents["a"])  # the break ends
    assert p.agents["a"].state is AgentState.READY
    p.pause("a")  # another break
    p.session_lost("a")
    p.make_ready(p.agents["a"])  # the break ends while the session is still down
    assert p.agents["a"].state is AgentState.PAUSED
    p.session_back("a")
    assert p.agents["a"].state is AgentState.READY
    p.session_lost("a")  # paused for the session ...
    p.pause("a")  # ... then the desk starts a break: the pause is now that break
    p.session_back("a")
    assert p.agents["a"].state is AgentState.PAUSED
    p.make_ready(p.agents["a"])
    assert p.agents["a"].state is AgentState.READY


def test_a_logged_out_agent_is_not_logged_in_by_the_session_coming_back() -> None:
    p = pool("a")
    p.session_lost("a")
    p.logout("a")
    p.session_back("a")
    assert p.agents["a"].state is AgentState.LOGGED_OUT


# -- the engine, end to end ---------------------------------------------------------------------------


async def test_an_agent_whose_session_vanished_gets_no_calls_until_it_is_back() -> None:
    emu = AmiEmulator(secret=SECRET, time_scale=0.05, plan=with_default_options(default_plan, patience=60.0))
    await emu.start()
    cfg = campaign_from_dict({
        "campaign": {"id": "sessions", "mode": "fixed", "backend": "asterisk", "timezone": "America/New_York"},
        "hours": {"start": "00:00", "end": "24:00"},
        "retry": {"max_attempts": 1},
        "simulation": {"agents": 2, "leads": 0, "duration": "600s", "agent": {"wrap_mean": "0.05s"},
                       "customers": {"sale_rate": 0.0, "refusal_rate": 0.0, "callback_rate": 0.0}},
    })
    phones = [f"+1212555{3000 + i:04d}" for i in range(400) if str(i)[-1] in "01235"]
    people = [Lead(f"L{i:03d}", cfg.id, p, timezone="America/New_York") for i, p in enumerate(phones)]
    store = MemoryStore()
    got: list[Dialer] = []
    run = asyncio.create_task(run_sim_campaign(cfg, leads=people, store=store, backend=backend(emu.port),
                                               clock=SystemClock(), on_dialer=got.append))
    try:
        await until(lambda: len(emu.journal.bridged) >= 4 or run.done(), limit=30.0)
        (dialer,) = got
        assert {"A001", "A002"} <= set(emu.journal.bridged.values())
        emu.unreachable_agents.add("A001")
        (chan,) = session_of(emu, "A001")
        assert emu.remote_hangup(chan, NETWORK_OUT_OF_ORDER)
        lost_at = len(emu.journal.bridged)
        await until(lambda: "A001" in dialer.pool.no_session or run.done(), limit=30.0)
        await until(lambda: dialer.pool.agents["A001"].state is AgentState.PAUSED or run.done(), limit=30.0)
        await until(lambda: len(emu.journal.bridged) >= lost_at + 6 or run.done(), limit=30.0)
        during = list(emu.journal.bridged.values())[lost_at:]
        assert set(during) == {"A002"}, "a call went to an agent without a session"
        assert dialer.pool.agents["A001"].state is AgentState.PAUSED
        emu.unreachable_agents.clear()  # the phone answers the next call-back
        await until(lambda: "A001" not in dialer.pool.no_session or run.done(), limit=30.0)
        back_at = len(emu.journal.bridged)
        await until(lambda: "A001" in list(emu.journal.bridged.values())[back_at:] or run.done(), limit=30.0)
        assert not run.done()
        dialer.stop()
        async with asyncio.timeout(30):
            summary = await run
    finally:
        await settle(run, emu)
    assert summary["errors"] == 0
    rows = await store.results(cfg.id)
    assert all(r["outcome"] in ("connected", "abandoned") for r in rows), {r["outcome"] for r in rows}

"""The agent pool: explicit states, fair hand-out, answered calls served first."""

from __future__ import annotations

import asyncio

import pytest

from engine.agents import AgentPool, AgentStateError
from engine.models import Agent, AgentState


def pool(n: int = 3, clock=None) -> AgentPool:
    t = clock or (lambda: 0.0)
    return AgentPool([Agent(f"A{i}") for i in range(1, n + 1)], t)


def test_login_makes_ready_and_longest_idle_goes_first():
    now = [0.0]
    p = pool(3, lambda: now[0])
    for a in ("A2", "A1", "A3"):
        p.login(a)
        now[0] += 1
    assert p.count(AgentState.READY) == 3
    assert p.take_ready().agent_id == "A2"
    assert p.start_preview().agent_id == "A1"
    assert p.count(AgentState.PREVIEWING) == 1 and p.count(AgentState.ON_CALL) == 1


def test_impossible_transitions_are_refused():
    p = pool(1)
    a = p.agents["A1"]
    with pytest.raises(AgentStateError):
        p.to_wrap_up(a)  # logged out -> wrap-up
    p.login("A1")
    p.take_ready()
    with pytest.raises(AgentStateError):
        p.logout("A1")  # on a call


def test_time_in_each_state_is_accounted():
    now = [0.0]
    p = pool(1, lambda: now[0])
    p.login("A1")
    now[0] = 10
    a = p.take_ready()
    now[0] = 70
    p.to_wrap_up(a)
    now[0] = 85
    p.make_ready(a)
    now[0] = 100
    t = p.totals()
    assert t[AgentState.READY] == 25 and t[AgentState.ON_CALL] == 60 and t[AgentState.WRAP_UP] == 15


async def test_freed_agent_goes_to_the_oldest_waiting_answer_first():
    p = pool(1)
    p.login("A1")
    a = p.take_ready()
    first = asyncio.ensure_future(p.acquire(5.0))
    second = asyncio.ensure_future(p.acquire(5.0))
    await asyncio.sleep(0)
    p.to_wrap_up(a)
    p.make_ready(a)
    assert (await first) is a
    assert a.state == AgentState.ON_CALL
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_acquire_times_out_with_none():
    p = pool(1)
    assert await p.acquire(0.01) is None
    assert p.waiting_calls() == 0

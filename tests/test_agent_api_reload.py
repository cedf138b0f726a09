"""The token roster reloaded while the campaign runs: on a change of the tokens file (a task of the
server looks every few seconds) and on SIGHUP to ``dialer run``. New people can sign in at once; a
removed or changed token stops working at once, its event streams are closed (4401, "token revoked")
and its agent is logged out only once the call, wrap-up or preview in hand is over; a file that does
not parse leaves the roster in use as it was. Real HTTP and WebSocket against the engine's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from helpers import human
from redis_server import _free_port
from test_agent_api import (
    API_CAMPAIGN,
    EVENT_WAIT_S,
    ROSTER,
    TOKENS,
    Floor,
    auth,
    connected_call,
    floor,
    login_status,
    login_when_up,
    next_event,
    the_lead,
)

import engine.agent_api.server as server_module
from engine.agents import AgentPool
from engine.models import Agent, AgentState
from engine.pbx.base import PbxError

A3_TOKEN = "a3-token-0123456789abcdef"
NEW_A2_TOKEN = "a2-token-NEW-0123456789ab"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _watch_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "TOKENS_WATCH_S", 0.05)


def tokens_file(tmp_path: Path, text: str = ROSTER) -> Path:
    path = tmp_path / "agents.tokens"
    path.write_text(text)
    path.chmod(0o600)
    return path


def rewrite(path: Path, text: str) -> None:
    """As an editor saves: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


async def reloaded(f: Floor, before: int) -> None:
    """Until the server has taken (or refused) one more reload."""
    for _ in range(int(EVENT_WAIT_S / 0.02)):
        if f.desk.server is not None and f.desk.server.reloads > before:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the roster was not reloaded")


async def until(condition: Any) -> None:
    """Until ``condition()`` holds (a guard against a hang, not a measurement)."""
    for _ in range(int(EVENT_WAIT_S / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], int | None, str]:
    """Every event up to the close, then its code and reason."""
    events = []
    async with asyncio.timeout(EVENT_WAIT_S):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                events.append(json.loads(msg.data))
                continue
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            return events, msg.data, msg.extra


async def state_of(f: Floor, agent: str) -> str:
    _, board = await f.call("GET", "/supervisor", "S1")
    return {a["agent_id"]: a["state"] for a in board["agents"]}[agent]


async def until_state(f: Floor, agent: str, state: str) -> None:
    for _ in range(int(EVENT_WAIT_S / 0.05)):
        if await state_of(f, agent) == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{agent} never {state}")


async def a3_takes_the_call(f: Floor) -> None:
    """A3 (added by a reload) signs in, goes ready, takes lead L1's preview call and ends it with a sale."""
    TOKENS["A3"] = A3_TOKEN
    try:
        ws, connected = await connected_call(f, "A3")
        assert connected["screen_pop"]["lead"]["lead_id"] == "L1"
        assert await state_of(f, "A3") == "on_call"
        await f.call("POST", f"/calls/{connected['call_id']}/hangup", "A3")
        await next_event(ws, "wrap_up")
        await f.call("POST", f"/calls/{connected['call_id']}/disposition", "A3", {"disposition": "sale"})
        await next_event(ws, "call_done")
    finally:
        del TOKENS["A3"]


async def test_a_new_agent_added_to_the_file_can_sign_in_and_take_calls(tmp_path):
    path = tokens_file(tmp_path)
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()],
                     agents={"tokens_file": str(path)}) as f:
        async with f.http.post(f.base + "/login", headers={"Authorization": f"Bearer {A3_TOKEN}"}) as r:
            assert r.status == 401
        before = f.desk.server.reloads
        rewrite(path, ROSTER + f"\nA3:agent:{A3_TOKEN}\n")
        await reloaded(f, before)
        await a3_takes_the_call(f)  # signs in, goes ready, takes the preview call
        assert (await f.call("GET", "/me", "A1"))[0] == 200  # nobody else is touched
        await f.stop()
    assert [(r["agent_id"], r["disposition"]) for r in await f.store.results("t")] == [("A3", "sale")]
    [reload] = [e for e in f.audit.entries() if e["action"] == "roster_reload"]
    assert (reload["actor"], reload["reason"]) == ("engine", "file changed: added A3")
    assert A3_TOKEN not in f.audit.path.read_text()


async def test_a_new_agent_whose_phone_misses_the_login_is_logged_in_again_until_it_answers(tmp_path):
    path = tokens_file(tmp_path)
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()],
                     agents={"tokens_file": str(path)}) as f:
        f.desk.login_retry_s = (0.05, 0.1)
        tries: list[str] = []
        logged_in = f.dialer.pbx.agent_login

        async def phone_off_twice(agent_id: str) -> None:
            tries.append(agent_id)
            if tries.count(agent_id) <= 2:
                raise PbxError(f"PJSIP/{agent_id} did not answer")
            await logged_in(agent_id)

        f.dialer.pbx.agent_login = phone_off_twice
        before = f.desk.server.reloads
        rewrite(path, ROSTER + f"\nA3:agent:{A3_TOKEN}\n")
        await reloaded(f, before)
        await until(lambda: "A3" not in f.dialer.pool.no_session)
        assert tries.count("A3") == 3 and "A3" not in f.dialer.pool.no_session
        assert f.desk._logins == {}  # the task that tried again is done
        await a3_takes_the_call(f)  # and the agent takes calls, no restart
        await f.stop()


async def test_logins_tried_again_stop_with_the_shift_or_when_the_agent_leaves(tmp_path):
    path = tokens_file(tmp_path)
    async with floor(tmp_path, {}, leads=[the_lead()], agents={"tokens_file": str(path)}) as f:
        f.desk.login_retry_s = (0.05,)
        tries: list[str] = []

        async def phone_off(agent_id: str) -> None:
            tries.append(agent_id)
            raise PbxError(f"PJSIP/{agent_id} did not answer")

        f.dialer.pbx.agent_login = phone_off
        before = f.desk.server.reloads
        rewrite(path, ROSTER + f"\nA3:agent:{A3_TOKEN}\nA4:agent:{'a4-token-' + 'x' * 16}\n")
        await reloaded(f, before)
        await until(lambda: tries.count("A3") >= 3 and tries.count("A4") >= 3)  # tried again and again
        assert set(f.desk._logins) == {"A2", "A3", "A4"}
        before = f.desk.server.reloads
        rewrite(path, ROSTER + f"\nA4:agent:{'a4-token-' + 'x' * 16}\n")  # A3 leaves the roster
        await reloaded(f, before)
        await until(lambda: "A3" not in f.desk._logins)  # its next try finds it gone, and stops
        stopped_at, a4_at = tries.count("A3"), tries.count("A4")
        await until(lambda: tries.count("A4") >= a4_at + 3)  # A4 still tried; A3 no more
        assert tries.count("A3") == stopped_at and set(f.desk._logins) == {"A2", "A4"}
        task = f.desk._logins["A4"]
        await f.stop()
    assert task.done() and f.desk._logins == {}


async def test_removed_and_changed_tokens_stop_at_once_and_their_agents_leave_after_the_call(tmp_path):
    path = tokens_file(tmp_path)
    leads = [the_lead("L1"), the_lead("L2", "+12125550143")]
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600), "L2": human(after=3600)}, leads=leads,
                     people=("A1", "A2"), agents={"tokens_file": str(path), "wrap_up_timeout": 0.3,
                                                  "default_disposition": "not_interested"}) as f:
        ws1, connected = await connected_call(f, "A1")  # A1 is on a call
        ws2 = await f.events("A2")  # A2 is reading a preview
        await f.call("POST", "/login", "A2")
        await f.call("POST", "/ready", "A2")
        offer = await next_event(ws2, "preview")
        assert offer["screen_pop"]["lead"]["lead_id"] == "L2"
        watch = await f.http.ws_connect(f.base + "/events", headers=auth("S1"))
        await next_event(watch, "hello")

        before = f.desk.server.reloads
        rewrite(path, f"A2:agent:{NEW_A2_TOKEN}\nS1:supervisor:{TOKENS['S1']}\n")  # A1 gone, A2 a new token
        await reloaded(f, before)

        # Both tokens stop working at once, on requests and streams; the supervisor's stream stays.
        for agent in ("A1", "A2"):
            status, body = await f.call("GET", "/me", agent)
            assert status == 401 and "valid token" in body["error"]
        closed = {agent: await until_closed(ws) for agent, ws in (("A1", ws1), ("A2", ws2))}
        for events, code, reason in closed.values():
            assert (code, reason) == (4401, "token revoked") and events[-1]["type"] == "token_revoked"
        assert [e["type"] for e in closed["A2"][0] if e["type"] != "state"] == ["preview_withdrawn", "token_revoked"]
        # A2's preview (nothing dialled yet) is withdrawn and A2 logged out; A1's call goes on to its end.
        await until_state(f, "A2", "logged_out")
        await asyncio.sleep(0.3)
        assert await state_of(f, "A1") == "on_call"  # nothing cut short
        await f.dialer.pbx.hangup(connected["call_id"])  # the agent puts the phone down
        await until_state(f, "A1", "logged_out")  # the wrap-up timed out (no valid token to end it): then out
        assert not watch.closed

        # A2 signs in with the new token; A1's old token still opens nothing.
        async with f.http.post(f.base + "/login", headers={"Authorization": f"Bearer {NEW_A2_TOKEN}"}) as r:
            assert r.status == 200 and (await r.json())["state"] == "paused"
        ws = await f.http.ws_connect(f.base + "/events")
        await ws.send_json({"type": "auth", "token": TOKENS["A1"]})
        assert (await until_closed(ws))[1] == 4401
        await f.stop()
    rows = await f.store.results("t")
    assert [(r["lead_id"], r["outcome"], r["disposition"], r["agent_id"]) for r in rows] == [
        ("L1", "connected", "not_interested", "A1")]  # no call lost
    [reload] = [e for e in f.audit.entries() if e["action"] == "roster_reload"]
    assert reload["reason"] == "file changed: removed A1; token or role changed A2"
    text = f.audit.path.read_text()
    assert NEW_A2_TOKEN not in text and TOKENS["A1"] not in text


async def test_a_preview_in_hand_is_withdrawn_when_the_token_goes(tmp_path):
    path = tokens_file(tmp_path)
    async with floor(tmp_path, {"L1": human(after=3600)}, leads=[the_lead()],
                     agents={"tokens_file": str(path)}) as f:
        ws = await f.events("A1")
        await f.call("POST", "/login", "A1")
        await f.call("POST", "/ready", "A1")
        offer = await next_event(ws, "preview")
        before = f.desk.server.reloads
        rewrite(path, f"A2:agent:{TOKENS['A2']}\nS1:supervisor:{TOKENS['S1']}\n")
        await reloaded(f, before)
        events, code, _ = await until_closed(ws)
        assert [e["type"] for e in events if e["type"] != "state"] == ["preview_withdrawn", "token_revoked"]
        assert events[0]["offer_id"] == offer["offer_id"] and code == 4401
        await until_state(f, "A1", "logged_out")
        assert f.dialer.counters.dials == 0
        await f.stop()
    assert await f.store.results("t") == []


async def test_a_file_that_does_not_parse_keeps_the_roster_in_use(tmp_path):
    path = tokens_file(tmp_path)
    async with floor(tmp_path, {"L1": human()}, leads=[the_lead()], agents={"tokens_file": str(path)}) as f:
        ws = await f.events("A1")
        before = f.desk.server.reloads
        with structlog.testing.capture_logs() as logs:
            rewrite(path, f"A1:agent:{TOKENS['A1']}\nA3:agent:{A3_TOKEN}\nB9:boss:{'z' * 20}\n")
            await reloaded(f, before)
        # The old roster stands: every old token works, the new one in the bad file does not.
        for agent in ("A1", "A2", "S1"):
            assert (await f.call("GET", "/dispositions", agent))[0] == 200
        async with f.http.get(f.base + "/me", headers={"Authorization": f"Bearer {A3_TOKEN}"}) as r:
            assert r.status == 401
        assert not ws.closed
        [error] = [e for e in logs if e["log_level"] == "error"]
        assert (error["file"], error["line"], error["field"]) == (str(path), 3, "role")
        assert "'boss' is not one of" in error["error"]
        assert not any(token in json.dumps(logs, default=str) for token in (*TOKENS.values(), A3_TOKEN, "z" * 20))
        # The file is fixed: taken at once.
        before = f.desk.server.reloads
        rewrite(path, f"A1:agent:{TOKENS['A1']}\nA3:agent:{A3_TOKEN}\n")
        await reloaded(f, before)
        async with f.http.get(f.base + "/me", headers={"Authorization": f"Bearer {A3_TOKEN}"}) as r:
            assert r.status == 200
        # A file that disappears is refused the same way.
        before = f.desk.server.reloads
        path.unlink()
        await reloaded(f, before)
        assert (await f.call("GET", "/me", "A1"))[0] == 200
        await f.stop()
    refused = [e["reason"] for e in f.audit.entries() if e["action"] == "roster_reload_refused"]
    assert refused == [f"file changed: {path}:3: role: role 'boss' is not one of agent, supervisor, admin",
                       f"file changed: agents.tokens_file: cannot read {path}: No such file or directory"]
    assert [e["reason"] for e in f.audit.entries() if e["action"] == "roster_reload"] == [
        "file changed: added A3; removed A2, S1"]


async def test_the_watcher_is_owned_by_the_server_and_gone_after_shutdown(tmp_path):
    path = tokens_file(tmp_path)
    async with floor(tmp_path, {"L1": human()}, leads=[the_lead()], agents={"tokens_file": str(path)}) as f:
        assert [t.get_name() for t in asyncio.all_tasks() if t.get_name() == "agent-api-files"] == [
            "agent-api-files"]
        await f.stop()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("agent-api")] == []


# -- SIGHUP to dialer run -----------------------------------------------------------------------------

def test_sighup_to_dialer_run_reloads_the_tokens_file(tmp_path):
    port = _free_port()
    path = tokens_file(tmp_path, f"A1:agent:{TOKENS['A1']}\nS1:supervisor:{TOKENS['S1']}\n")
    audit = tmp_path / "audit.jsonl"
    cfg = tmp_path / "floor.toml"
    cfg.write_text(API_CAMPAIGN.format(port=port, tokens=f'tokens_file = "{path}"', audit=audit))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", str(cfg), "--results", str(tmp_path / "res"),
                             "--json", "--quiet", "--realtime"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)

    try:
        login_when_up(proc, port, TOKENS["A1"])
        assert login_status(port, TOKENS["A2"])[0] == 401
        # Same length and the old modification time: only SIGHUP can make the engine read it again.
        stat = path.stat()
        path.write_text(f"A2:agent:{TOKENS['A2']}\nS1:supervisor:{TOKENS['S1']}\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size == stat.st_size
        proc.send_signal(signal.SIGHUP)
        login_when_up(proc, port, TOKENS["A2"])
        assert login_status(port, TOKENS["A1"])[0] == 401
        # A bad file on SIGHUP: an error naming file, line and field; the roster in use stands.
        path.write_text(f"A2:agent:{TOKENS['A2']}\nA2:agent:{'q' * 20}\n")
        proc.send_signal(signal.SIGHUP)
        for _ in range(400):
            if f'"SIGHUP: {path}:2: id:' in audit.read_text():
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
        else:
            raise AssertionError("the bad file was not refused")
        assert login_status(port, TOKENS["A2"])[0] == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "agent tokens file not reloaded" in err and f"{path}:2: id: 'A2' is listed twice" in err
    assert all(token not in err + out for token in (*TOKENS.values(), "q" * 20))
    reasons = [json.loads(line)["reason"] for line in audit.read_text().splitlines()]
    assert "SIGHUP: added A2; removed A1" in reasons
    assert any(r.startswith(f"SIGHUP: {path}:2: id: 'A2' is listed twice") for r in reasons)


# -- the pool's part: joining and leaving mid-shift ---------------------------------------------------


def test_the_pool_takes_an_agent_mid_shift_in_a_lane_that_had_nobody() -> None:
    pool = AgentPool([Agent("a")], clock=lambda: 5.0, groups={"a": "progressive"})
    pool.add(Agent("b"), "preview")
    assert pool.agents["b"].state is AgentState.LOGGED_OUT and pool.agents["b"].since == 5.0
    pool.login("b")
    assert pool.count(AgentState.READY, "preview") == 1 and pool.take_ready("preview").agent_id == "b"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="already in the pool"):
        pool.add(Agent("b"))


def test_a_retired_agent_leaves_only_once_the_call_in_hand_is_over() -> None:
    pool = AgentPool([Agent(i) for i in ("idle", "busy", "preview", "back")], clock=lambda: 0.0)
    for agent_id in pool.agents:
        pool.login(agent_id)
    busy, preview = pool.take_ready(prefer="busy"), pool.start_preview(prefer="preview")
    assert busy is not None and preview is not None
    pool.retire("idle")
    assert pool.agents["idle"].state is AgentState.LOGGED_OUT  # ready: out at once
    pool.retire("busy")
    pool.retire("preview")
    assert busy.state is AgentState.ON_CALL and preview.state is AgentState.PREVIEWING  # nothing cut short
    assert pool.take_ready() is not None and pool.take_ready() is None  # only "back" is given calls
    pool.to_wrap_up(busy)
    pool.make_ready(busy)  # the end of the wrap-up
    pool.end_preview(preview)  # the preview ended (skipped, withdrawn or its call unanswered)
    assert busy.state is AgentState.LOGGED_OUT and preview.state is AgentState.LOGGED_OUT
    assert pool.leaving == set()
    back = pool.agents["back"]
    pool.retire("back")  # on a call: leaving ...
    pool.stay("back")  # ... until they sign in again
    pool.return_unused(back)
    assert back.state is AgentState.READY

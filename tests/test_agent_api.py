"""The agent API: real HTTP and WebSocket against the server the engine runs, a whole call worked by a
person (preview, screen-pop, tags, note, disposition with a follow-up), and what it must refuse.

Runs in real time (the people on the other end of the API do), on the simulated PBX with scripted
customers; the call lasts until the agent hangs up, so no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from amitest import until
from helpers import Script, campaign, human
from redis_server import _free_port, dump_all

import plugins.followups as followups
from engine.agent_api import ApiDesk, Roster, TokenError
from engine.agent_api.check import agent_api_problems
from engine.agent_api.tokens import Identity
from engine.audit import AuditLog
from engine.clock import LoopClock
from engine.config import AgentsSection, ConfigError, campaign_from_dict
from engine.dialer import Dialer
from engine.models import Agent, Lead
from engine.pacing import make_pacer
from engine.pbx.sim import SimBackend
from engine.pii import BlindIndex
from engine.plugins import make_plugin_manager
from engine.store.memory import MemoryStore
from engine.store.redis import RedisStore
from engine.testing import _seed_earlier_calls

TOKENS = {"A1": "a1-token-0123456789abcdef", "A2": "a2-token-0123456789abcdef", "S1": "s1-token-0123456789abcdef"}
ROSTER = "\n".join(["# people on the floor", f"A1:agent:{TOKENS['A1']}", f"A2:agent:{TOKENS['A2']}",
                    f"S1:supervisor:{TOKENS['S1']}"])
PHONE = "+12125550142"
START = datetime(2026, 1, 5, 14, 0, tzinfo=UTC)
EVENT_WAIT_S = 30.0  # a guard against a hang, not a measurement
INDEX = BlindIndex(b"agent-api test index key, 32 by")


def auth(agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[agent]}"}


def login_status(port: int, token: str) -> tuple[int, Any]:
    """``POST /login`` over plain HTTP, blocking: the status and the JSON body (None on an error status)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/login", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def login_when_up(proc: subprocess.Popen[str], port: int, token: str, status: int = 200) -> Any:
    """Log in to a ``dialer run`` subprocess's agent API until it answers ``status`` (the server starts
    with the campaign, a moment after its start line); the reply's body. Fails if the process ends."""
    for _ in range(400):
        try:
            got, body = login_status(port, token)
            if got == status:
                return body
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError):
                raise
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        assert proc.poll() is None, proc.communicate()
    raise AssertionError(f"the agent API never answered {status}")


def the_lead(lead_id: str = "L1", phone: str = PHONE) -> Lead:
    return Lead(lead_id, "t", phone, tags=("vip",),
                attributes={"first_name": "Ann", "email": "ann@example.com", "refused_products": "gold; silver"})


class Floor:
    """The engine (preview or progressive) with the API desk on a free port, and a client session."""

    def __init__(self, dialer: Dialer, desk: ApiDesk, store: Any, audit: AuditLog,
                 client_ssl: ssl.SSLContext | None = None) -> None:
        self.dialer, self.desk, self.store, self.audit = dialer, desk, store, audit
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl) if client_ssl else None)
        self.task: asyncio.Task[dict[str, Any]] | None = None

    @property
    def base(self) -> str:
        scheme = "https" if self.desk.cfg.agents.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.desk.port}/api/v1"

    async def call(self, method: str, path: str, agent: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, headers=auth(agent), json=body) as r:
            return r.status, await r.json()

    async def events(self, agent: str) -> aiohttp.ClientWebSocketResponse:
        ws = await self.http.ws_connect(self.base + "/events", headers=auth(agent))
        hello = await next_event(ws, "hello")
        assert hello["agent_id"] == agent
        return ws

    async def stop(self) -> dict[str, Any]:
        self.dialer.stop()
        assert self.task is not None
        return await self.task


@contextlib.asynccontextmanager
async def floor(tmp_path: Path, plans: dict[str, Any], *, leads: list[Lead], mode: str = "preview",
                store: Any = None, people: tuple[str, ...] = ("A1",), client_ssl: ssl.SSLContext | None = None,
                roster: str = ROSTER, **sections: Any) -> AsyncIterator[Floor]:
    cfg = campaign(campaign={"id": "t", "mode": mode}, retry=sections.pop("retry", {"max_attempts": 1}),
                   agents={"desk": "api", "port": 0, **sections.pop("agents", {})}, **sections)
    store = store if store is not None else MemoryStore(index=INDEX)
    await store.add_leads(leads)
    audit = AuditLog(tmp_path / "audit.jsonl", clock=lambda: 0.0)
    desk = ApiDesk(cfg, Roster.parse(roster, "test roster"))
    backend = SimBackend(Script(plans))
    dialer = Dialer(cfg, store=store, pbx=backend, desk=desk, agents=[Agent(a) for a in people],
                    plugins=make_plugin_manager(entry_points_too=False, extra=[followups]),
                    clock=LoopClock(START), pacer=make_pacer(mode), audit=audit, drain_timeout=5.0)
    desk.attach(dialer)
    f = Floor(dialer, desk, store, audit, client_ssl)
    f.task = asyncio.create_task(dialer.run())
    try:
        async with asyncio.timeout(EVENT_WAIT_S):
            await desk.serving.wait()
        yield f
    finally:
        if not f.task.done():
            dialer.stop()
            with contextlib.suppress(Exception):
                await f.task
        await f.http.close()


async def next_event(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """The next event of ``kind`` on the stream (others, e.g. state changes, are passed over)."""
    async with asyncio.timeout(EVENT_WAIT_S):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            event = json.loads(msg.data)
            if event["type"] == kind:
                return event


async def connected_call(f: Floor, agent: str = "A1") -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Log in, ready, accept the preview offered; returns the stream and the call_connected event."""
    ws = await f.events(agent)
    assert (await f.call("POST", "/login", agent))[1]["state"] == "paused"
    assert (await f.call("POST", "/ready", agent))[1]["state"] in ("ready", "previewing")
    offer = await next_event(ws, "preview")
    status, body = await f.call("POST", f"/previews/{offer['offer_id']}/accept", agent)
    assert status == 200 and body["accepted"] is True
    return ws, await next_event(ws, "call_connected")


def dump_redis(url: str) -> str:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return "\n".join(dump_all(client))
    finally:
        client.close()


# -- a whole call ---------------------------------------------------------------------------------



def preview_dialer(cfg: Any, store: MemoryStore, script: Script, tmp_path: Path) -> Dialer:
    """A preview campaign's Dialer with the agent API as its desk (agent A1 on the test roster)."""
    desk = ApiDesk(cfg, Roster.parse(ROSTER, "test roster"))
    dialer = Dialer(cfg, store=store, pbx=SimBackend(script), desk=desk, agents=[Agent("A1")],
                    plugins=make_plugin_manager(entry_points_too=False), clock=LoopClock(START),
                    pacer=make_pacer("preview"), audit=AuditLog(tmp_path / "audit.jsonl", clock=lambda: 0.0))
    desk.attach(dialer)
    return dialer


async def test_a_person_works_a_preview_call_from_offer_to_follow_up(tmp_path, redis_url):
    store = RedisStore(redis_url, prefix="api", index=INDEX)
    try:
        async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()], store=store,
                         dispositions={"callback": {"follow_up": "1d", "same_agent": True}}) as f:
            ws = await f.events("A1")
            _, me = await f.call("POST", "/login", "A1")
            assert me["state"] == "paused"
            await f.call("POST", "/ready", "A1")

            # The preview: the person, not yet their number.
            offer = await next_event(ws, "preview")
            lead = offer["screen_pop"]["lead"]
            assert lead["phone"] != PHONE and lead["phone"].endswith("42") and "555" not in lead["phone"]
            assert lead["attributes"] == {"first_name": "Ann"} and lead["tags"] == ["vip"]
            assert offer["screen_pop"]["do_not_offer"] == ["gold", "silver"]
            _, accepted = await f.call("POST", f"/previews/{offer['offer_id']}/accept", "A1")
            assert accepted == {"offer_id": offer["offer_id"], "accepted": True, "call_id": "t-node-1-1"}

            # Connected: the screen-pop with the agent's fields only (the number now; never the email).
            connected = await next_event(ws, "call_connected")
            call_id = connected["call_id"]
            pop = connected["screen_pop"]
            assert pop["lead"]["phone"] == PHONE
            assert pop["lead"]["attributes"] == {"first_name": "Ann"}
            assert "ann@example.com" not in json.dumps(connected)
            assert (await f.call("GET", f"/calls/{call_id}", "A1"))[1]["screen_pop"]["lead"]["phone"] == PHONE

            # During the call: a tag, a note with a tag; no disposition while the call is up.
            status, body = await f.call("POST", f"/calls/{call_id}/tags", "A1", {"tags": ["interested"]})
            assert status == 200 and body["tags"] == ["vip", "interested"]
            status, body = await f.call("POST", f"/calls/{call_id}/notes", "A1",
                                        {"note": "wants the premium plan next month", "tags": ["premium"]})
            assert status == 200 and body["notes"] == 1
            status, body = await f.call("POST", f"/calls/{call_id}/disposition", "A1", {"disposition": "sale"})
            assert status == 409 and "wrap-up" in body["error"]

            # The agent hangs up; wrap-up lists the campaign's dispositions.
            assert (await f.call("POST", f"/calls/{call_id}/hangup", "A1"))[0] == 200
            wrap = await next_event(ws, "wrap_up")
            assert wrap["call_id"] == call_id
            assert {"name": "callback", "final": False, "follow_up": True, "same_agent": True,
                    "success": False} in wrap["dispositions"]
            status, body = await f.call("POST", f"/calls/{call_id}/disposition", "A1", {"disposition": "maybe"})
            assert status == 400
            assert body["error"].startswith("disposition 'maybe' is not one of this campaign's: ")
            assert "callback" in body["allowed"] and "sale" in body["allowed"]
            status, body = await f.call("POST", f"/calls/{call_id}/disposition", "A1",
                                        {"disposition": "sale", "follow_up_at": "2026-01-07T10:00:00+00:00"})
            assert status == 400 and "creates no follow-up" in body["error"]
            agreed = (START + timedelta(days=1, hours=3)).isoformat()
            status, body = await f.call("POST", f"/calls/{call_id}/disposition", "A1",
                                        {"disposition": "callback", "follow_up_at": agreed})
            assert status == 200, body
            assert body["disposition"] == "callback" and body["follow_up_due"] == "2026-01-06T17:00:00+00:00"
            assert body["callback_requested_at"] == agreed
            await next_event(ws, "call_done")
            # The call is over: its lead is no longer the agent's to read. Once the result is stored the
            # call is gone from the dialer, and a read of it says nothing about anyone (not audited).
            await until(lambda: call_id not in f.dialer.calls)
            status, body = await f.call("GET", f"/calls/{call_id}", "A1")
            assert status == 403 and "not your call" in body["error"]
            await f.stop()

        # The store: tags, the note (encrypted at rest), the follow-up task for the same agent.
        rows = await store.results("t")
        assert [(r["outcome"], r["disposition"], r["agent_id"]) for r in rows] == [("connected", "callback", "A1")]
        [stored] = await store.claim_leads("t", 5, now=START.timestamp() + 3 * 86400, node_id="check",
                                           lease_s=60)
        assert stored.tags == ("vip", "interested", "premium")
        assert stored.attributes["notes"] == ["wants the premium plan next month"]
        assert stored.attributes["follow_up_agent"] == "A1" and stored.attributes["follow_up_reason"] == "callback"
        # The time agreed with the person (a day and three hours on), not the disposition's one day.
        assert stored.attributes["follow_up_due"] == pytest.approx((START + timedelta(days=1, hours=3)).timestamp(),
                                                                   abs=1)
        assert stored.attributes["callback_requested_at"] == agreed
        assert stored.score >= followups.PRIORITY
    finally:
        await store.close()
    raw = dump_redis(redis_url)
    assert "premium plan" not in raw and "ann@example.com" not in raw
    assert PHONE not in raw and PHONE[1:] not in raw and "interested" in raw  # the scan sees plain tags

    # The audit log: every read and change, by whom and why; no personal data in it.
    audit = AuditLog(tmp_path / "audit.jsonl", clock=lambda: 0.0)
    assert audit.verify() is None
    seen = [(e["actor"], e["role"], e["action"], e["reason"]) for e in audit.entries()]
    assert seen == [
        ("A1", "agent", "view", "preview offered"),
        ("A1", "agent", "view", "connected call"),
        ("A1", "agent", "view", "connected call"),  # the GET of the screen-pop
        ("A1", "agent", "update", "tags during call"),
        ("A1", "agent", "update", "note during call"),
        ("A1", "agent", "update", "follow-up time agreed"),
    ]
    assert "phone_masked" in audit.entries()[0]["fields"] and "phone" in audit.entries()[1]["fields"]
    text = audit.path.read_text()
    assert PHONE not in text and "premium plan" not in text and "ann@example.com" not in text


# -- refusals -----------------------------------------------------------------------------------------


async def test_wrong_token_is_refused_on_requests_and_on_the_event_stream(tmp_path):
    async with floor(tmp_path, {"L1": human()}, leads=[the_lead()]) as f:
        for headers in ({}, {"Authorization": "Bearer not-a-token-of-anyone"}, {"Authorization": "Basic QTE6eA=="}):
            async with f.http.post(f.base + "/login", headers=headers) as r:
                assert r.status == 401 and "valid token" in (await r.json())["error"]
        ws = await f.http.ws_connect(f.base + "/events")
        await ws.send_json({"type": "auth", "token": TOKENS["A1"][:-1] + "x"})
        msg = await ws.receive()
        assert json.loads(msg.data) == {"type": "error", "error": "a valid token is required"}
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4401
        # The right token as the first message works (browsers cannot set headers on a WebSocket).
        ws = await f.http.ws_connect(f.base + "/events")
        await ws.send_json({"type": "auth", "token": TOKENS["A1"]})
        assert (await next_event(ws, "hello"))["state"] == "logged_out"
        await ws.close()
        # A supervisor has no seat.
        status, body = await f.call("POST", "/login", "S1")
        assert status == 403 and "does not take calls" in body["error"]


async def test_an_agent_cannot_read_another_agents_call_but_a_supervisor_sees_it_masked(tmp_path):
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()], people=("A1", "A2")) as f:
        ws, connected = await connected_call(f, "A1")
        call_id = connected["call_id"]
        status, body = await f.call("GET", f"/calls/{call_id}", "A2")
        assert status == 403 and "not your call" in body["error"]
        for path, payload in ((f"/calls/{call_id}/notes", {"note": "x"}), (f"/calls/{call_id}/tags", {"tags": ["x"]}),
                              (f"/calls/{call_id}/disposition", {"disposition": "sale"})):
            assert (await f.call("POST", path, "A2", payload))[0] == 403
        status, body = await f.call("GET", f"/calls/{call_id}", "S1")
        assert status == 200 and body["agent_id"] == "A1"
        assert body["lead"]["phone"] != PHONE and body["lead"]["attributes"]["email"] == "***"
        status, board = await f.call("GET", "/supervisor", "S1")
        assert status == 200
        assert {a["agent_id"]: a["state"] for a in board["agents"]} == {"A1": "on_call", "A2": "logged_out"}
        assert board["figures"]["dials"] == 1 and PHONE not in json.dumps(board)
        assert (await f.call("GET", "/supervisor", "A1"))[0] == 403
        await f.call("POST", f"/calls/{call_id}/hangup", "A1")
        await next_event(ws, "wrap_up")
        await f.call("POST", f"/calls/{call_id}/disposition", "A1", {"disposition": "sale"})
        await next_event(ws, "call_done")
    denied = [(e["actor"], e["action"], e["reason"]) for e in f.audit.entries() if e["action"] == "denied"]
    assert denied == [("A2", "denied", "screen-pop read: not the agent's call"), ("A2", "denied", "note: not the "
                      "agent's call"), ("A2", "denied", "tags: not the agent's call"),
                      ("A2", "denied", "disposition: not the agent's call")]
    assert ("S1", "supervisor", "view", "supervision of a live call") in [
        (e["actor"], e["role"], e["action"], e["reason"]) for e in f.audit.entries()]


async def test_a_wrap_up_that_times_out_takes_the_campaigns_default(tmp_path):
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()],
                     agents={"wrap_up_timeout": 0.2, "default_disposition": "not_interested"}) as f:
        ws, connected = await connected_call(f)
        await f.call("POST", f"/calls/{connected['call_id']}/hangup", "A1")
        timed_out = await next_event(ws, "wrap_up_timeout")
        assert timed_out == {"type": "wrap_up_timeout", "call_id": connected["call_id"],
                             "disposition": "not_interested"}
        await next_event(ws, "call_done")
        await f.stop()
    rows = await f.store.results("t")
    assert [r["disposition"] for r in rows] == ["not_interested"]


async def test_pause_during_a_call_takes_effect_after_the_wrap_up(tmp_path):
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()]) as f:
        ws, connected = await connected_call(f)
        _, me = await f.call("POST", "/pause", "A1")
        assert me["state"] == "on_call" and me["pause_after_call"] is True
        status, body = await f.call("POST", "/logout", "A1")
        assert status == 409 and "finish the call" in body["error"]
        await f.call("POST", f"/calls/{connected['call_id']}/hangup", "A1")
        await next_event(ws, "wrap_up")
        await f.call("POST", f"/calls/{connected['call_id']}/disposition", "A1", {"disposition": "sale"})
        await next_event(ws, "call_done")
        assert (await f.call("GET", "/me", "A1"))[1]["state"] == "paused"
        assert (await f.call("POST", "/logout", "A1"))[1]["state"] == "logged_out"


async def test_progressive_calls_reach_a_ready_agent_without_a_preview(tmp_path):
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()], mode="progressive") as f:
        ws = await f.events("A1")
        await f.call("POST", "/login", "A1")
        await f.call("POST", "/ready", "A1")
        connected = await next_event(ws, "call_connected")
        assert connected["screen_pop"]["lead"]["phone"] == PHONE
        await f.call("POST", f"/calls/{connected['call_id']}/hangup", "A1")
        wrap = await next_event(ws, "wrap_up")
        assert wrap["outcome"] == "connected"
        status, body = await f.call("POST", f"/calls/{connected['call_id']}/disposition", "A1",
                                    {"disposition": "sale"})
        assert status == 200 and body["follow_up_due"] is None
        await next_event(ws, "call_done")
        await f.stop()
    assert [r["disposition"] for r in await f.store.results("t")] == ["sale"]
    assert [e["reason"] for e in f.audit.entries()] == ["connected call"]


async def test_the_preview_shows_the_persons_earlier_calls(tmp_path):
    """The agent decides whether to call with what happened before on screen (the number still masked)."""
    lead = the_lead()
    store = MemoryStore(index=INDEX)
    await store.add_leads([lead])
    await _seed_earlier_calls(store, campaign(campaign={"id": "t"}), lead, START.timestamp(), ["2d", "1d"])
    async with floor(tmp_path, {"L1": human()}, leads=[lead], store=store) as f:
        ws = await f.events("A1")
        await f.call("POST", "/login", "A1")
        await f.call("POST", "/ready", "A1")
        offer = await next_event(ws, "preview")
        history = offer["screen_pop"]["history"]
        assert [h["outcome"] for h in history] == ["no_answer", "no_answer"]
        assert sorted(h["started"] for h in history) == [
            (START - timedelta(days=2)).isoformat(timespec="seconds"),
            (START - timedelta(days=1)).isoformat(timespec="seconds")]
        assert PHONE not in json.dumps(offer)
        await f.call("POST", f"/previews/{offer['offer_id']}/skip", "A1")


async def test_a_skipped_preview_goes_back_and_the_next_lead_is_offered(tmp_path):
    leads = [the_lead("L1", PHONE), the_lead("L2", "+12125550143")]
    async with floor(tmp_path, {"L1": human(), "L2": human()}, leads=leads) as f:
        ws = await f.events("A1")
        await f.call("POST", "/login", "A1")
        await f.call("POST", "/ready", "A1")
        first = await next_event(ws, "preview")
        status, again = await f.call("GET", f"/previews/{first['offer_id']}", "A1")
        assert status == 200 and again["screen_pop"] == first["screen_pop"]
        assert (await f.call("GET", f"/previews/{first['offer_id']}", "A2"))[0] == 403  # not in this campaign
        assert (await f.call("POST", f"/previews/{first['offer_id']}/skip", "A1"))[1]["accepted"] is False
        status, body = await f.call("POST", f"/previews/{first['offer_id']}/accept", "A1")
        assert status == 409 and "no preview" in body["error"]
        second = await next_event(ws, "preview")
        assert second["offer_id"] != first["offer_id"]
        assert second["screen_pop"]["lead"]["lead_id"] != first["screen_pop"]["lead"]["lead_id"]
    assert f.dialer.counters.skipped >= 1


async def test_an_accepted_preview_can_be_cancelled_while_it_rings(tmp_path):
    """Called off before anyone answers: hung up on the PBX, recorded as cancelled, retried by [retry]
    cancelled; the agent is offered the next lead."""
    leads = [the_lead("L1", PHONE), the_lead("L2", "+12125550143")]
    async with floor(tmp_path, {"L1": human(after=3600), "L2": human(after=3600)}, leads=leads,
                     retry={"max_attempts": 3, "cancelled": "10m"}) as f:
        ws = await f.events("A1")
        await f.call("POST", "/login", "A1")
        await f.call("POST", "/ready", "A1")
        offer = await next_event(ws, "preview")
        status, body = await f.call("POST", f"/previews/{offer['offer_id']}/cancel", "A1")
        assert status == 409 and "not accepted yet: skip it instead" in body["error"]
        _, accepted = await f.call("POST", f"/previews/{offer['offer_id']}/accept", "A1")
        call_id = accepted["call_id"]
        for _ in range(200):  # the dial is placed just after the accept
            if f.dialer.calls.get(call_id) is not None and f.dialer.calls[call_id].state.value == "ringing":
                break
            await asyncio.sleep(0.01)
        _, me = await f.call("GET", "/me", "A1")
        assert me["state"] == "previewing" and me["dialing"] == {"offer_id": offer["offer_id"], "call_id": call_id}
        assert (await f.call("POST", f"/previews/{offer['offer_id']}/cancel", "A2"))[0] == 403  # not in the campaign
        status, body = await f.call("POST", f"/previews/{offer['offer_id']}/cancel", "A1")
        assert (status, body) == (200, {"offer_id": offer["offer_id"], "call_id": call_id, "cancelled": True})
        assert (await next_event(ws, "call_cancelled"))["call_id"] == call_id
        status, body = await f.call("POST", f"/previews/{offer['offer_id']}/cancel", "A1")
        assert status == 409 and "no call of preview" in body["error"]
        # Ready again: the next lead is offered at once.
        second = await next_event(ws, "preview")
        assert second["screen_pop"]["lead"]["lead_id"] == "L2"
        await f.call("POST", f"/previews/{second['offer_id']}/skip", "A1")
        await f.stop()
    [row] = [r for r in await f.store.results("t") if r["lead_id"] == "L1"]
    assert (row["outcome"], row["agent_id"], row["cause"]) == ("cancelled", None, 16)
    assert row["ring_s"] < 5  # hung up long before the 25 s ring timeout
    assert f.dialer.counters.live == 0 and f.dialer.counters.abandoned == 0
    # Rescheduled by the retry rules: not before [retry] cancelled (10 minutes), then again.
    assert await f.store.claim_leads("t", 5, now=START.timestamp() + 500, node_id="check", lease_s=60) == []
    later = await f.store.claim_leads("t", 5, now=START.timestamp() + 700, node_id="check", lease_s=60)
    assert [lead.lead_id for lead in later] == ["L1"]


async def test_an_answered_preview_call_cannot_be_cancelled(tmp_path):
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()]) as f:
        ws, connected = await connected_call(f)
        offer_id = (await f.call("GET", "/me", "A1"))[1]
        status, body = await f.call("POST", "/previews/P1/cancel", "A1")
        assert status == 409 and body["call_id"] == connected["call_id"]
        assert "answered: it cannot be cancelled" in body["error"] and "/hangup" in body["error"]
        assert offer_id["dialing"] is None  # no longer a ringing call: nothing to cancel
        assert (await f.call("GET", "/me", "A1"))[1]["state"] == "on_call"  # the call goes on
        await f.call("POST", f"/calls/{connected['call_id']}/hangup", "A1")
        await next_event(ws, "wrap_up")
        status, body = await f.call("POST", "/previews/P1/cancel", "A1")
        assert status == 409 and "already ended" in body["error"]
        await f.call("POST", f"/calls/{connected['call_id']}/disposition", "A1", {"disposition": "sale"})
        await next_event(ws, "call_done")
        status, body = await f.call("POST", "/previews/P1/cancel", "A1")
        assert status == 409 and "no call of preview" in body["error"]
        await f.stop()
    assert [(r["outcome"], r["disposition"]) for r in await f.store.results("t")] == [("connected", "sale")]


async def test_an_agent_whose_last_screen_closes_while_ready_is_paused(tmp_path):
    later = the_lead()
    later.next_eligible = START.timestamp() + 86400  # nothing to dial yet: the campaign waits
    async with floor(tmp_path, {"L1": human()}, leads=[later]) as f:
        watch = await f.http.ws_connect(f.base + "/events", headers=auth("S1"))
        assert (await next_event(watch, "hello"))["role"] == "supervisor"
        ws = await f.events("A1")
        await f.call("POST", "/login", "A1")
        assert (await f.call("POST", "/ready", "A1"))[1]["state"] == "ready"
        await ws.close()
        states: list[str] = []  # the supervisor's stream shows A1's states in order
        while states[-2:] != ["ready", "paused"]:
            event = await next_event(watch, "state")
            if event["agent_id"] == "A1":
                states.append(event["state"])
        assert states == ["paused", "ready", "paused"]
        assert (await f.call("GET", "/me", "A1"))[1]["state"] == "paused"


async def test_shutdown_with_an_agent_connected_closes_cleanly(tmp_path):
    async with floor(tmp_path, {"L1": human(after=3600)}, leads=[the_lead()]) as f:
        ws = await f.events("A1")
        await f.call("POST", "/login", "A1")
        port = f.desk.port
        summary = await f.stop()
        assert summary["errors"] == 0
        assert (await next_event(ws, "shutdown"))["reason"] == "the campaign is stopping"
        goodbye = await ws.receive()
        assert (goodbye.type, goodbye.data, goodbye.extra) == (aiohttp.WSMsgType.CLOSE, 1001, "closed by the engine")
        with pytest.raises(aiohttp.ClientConnectionError):
            await f.http.get(f"http://127.0.0.1:{port}/api/v1/me", headers=auth("A1"))
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("agent-api")]
    assert leftover == []


async def test_a_port_in_use_stops_the_campaign_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = campaign(campaign={"id": "t", "mode": "preview"}, agents={"desk": "api", "port": port})
        store = MemoryStore(index=INDEX)
        await store.add_leads([the_lead()])
        dialer = preview_dialer(cfg, store, Script({"L1": human()}), tmp_path)
        with pytest.raises(ExceptionGroup) as err:
            await dialer.run()
    [problem] = err.value.exceptions
    assert isinstance(problem, OSError)
    assert f"the agent API cannot listen on 127.0.0.1:{port} ([agents] host, port)" in str(problem)


def test_the_desk_needs_the_audit_log_and_a_token_for_every_agent(tmp_path):
    async def build(audit: AuditLog | None, people: list[str]) -> None:
        cfg = campaign(agents={"desk": "api"})
        desk = ApiDesk(cfg, Roster.parse(ROSTER, "test roster"))
        dialer = Dialer(cfg, store=MemoryStore(index=INDEX), pbx=SimBackend(Script({})), desk=desk,
                        agents=[Agent(a) for a in people], plugins=make_plugin_manager(entry_points_too=False),
                        clock=LoopClock(START), audit=audit)
        desk.attach(dialer)

    with pytest.raises(ValueError, match="needs the audit log"):
        asyncio.run(build(None, ["A1"]))
    with pytest.raises(ValueError, match="without a token cannot use the agent API: B7"):
        asyncio.run(build(AuditLog(tmp_path / "a.jsonl", clock=lambda: 0.0), ["A1", "B7"]))


# -- configuration and tokens -------------------------------------------------------------------------


def test_agents_section_is_validated_with_clear_errors():
    with pytest.raises(ConfigError, match=r"agents.default_disposition: 'maybe' is not a disposition"):
        campaign_from_dict({"campaign": {"id": "t"}, "agents": {"desk": "api", "default_disposition": "maybe"}})
    with pytest.raises(ConfigError, match=r"agents.desk"):
        campaign_from_dict({"campaign": {"id": "t"}, "agents": {"desk": "browser"}})
    with pytest.raises(ConfigError, match=r"agents.port"):
        campaign_from_dict({"campaign": {"id": "t"}, "agents": {"port": 70000}})
    for bad in (0, "2h"):
        with pytest.raises(ConfigError, match=r"agents.wrap_up_timeout"):
            campaign_from_dict({"campaign": {"id": "t"}, "agents": {"wrap_up_timeout": bad}})
    cfg = campaign_from_dict({"campaign": {"id": "t"}, "agents": {"desk": "api", "wrap_up_timeout": "2m",
                                                                  "default_disposition": "callback"}})
    assert cfg.agents.wrap_up_timeout == 120.0


@pytest.mark.parametrize(("text", "problem"), [
    ("A1:agent:short", r"agents.tokens \(entry 1\): token: the token of 'A1' is shorter than 16"),
    ("A1:boss:" + "x" * 20, r"agents.tokens \(entry 1\): role: role 'boss'"),
    ("A1:" + "x" * 20, r"agents.tokens \(entry 1\): entry: expected id:role:token"),
    (f"A1:agent:{'x' * 20}\nA1:agent:{'y' * 20}", "agents.tokens:2: id: 'A1' is listed twice"),
    (f"A1:agent:{'x' * 20}\nA2:agent:{'x' * 20}", "agents.tokens:2: token: 'A2' has the same token as 'A1'"),
    ("# nobody\n", "no agent listed"),
])
def test_token_errors_name_the_entry_never_the_token(text, problem):
    with pytest.raises(TokenError, match=problem) as err:
        Roster.parse(text, "agents.tokens")
    assert "x" * 16 not in str(err.value) and "y" * 16 not in str(err.value)
    assert [str(e) for e in Roster.problems(text, "agents.tokens")] == [str(err.value)]


def test_every_bad_entry_is_found_with_its_file_line_and_field():
    text = "\n".join(["# floor", f"A1:agent:{'x' * 20}", f"A1:agent:{'y' * 20}", f"B2:boss:{'z' * 20}",
                      "C3:agent:short", f"D4:agent:{'x' * 20}"])
    found = [(e.line, e.field) for e in Roster.problems(text, "/etc/dialer/agents.tokens")]
    assert found == [(3, "id"), (4, "role"), (5, "token"), (6, "token")]
    assert all(e.source == "/etc/dialer/agents.tokens" for e in Roster.problems(text, "/etc/dialer/agents.tokens"))


def test_tokens_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "agents.tokens"
    path.write_text(ROSTER)
    roster = Roster.from_settings(AgentsSection(desk="api", tokens_file=str(path)))
    assert roster.agents == ("A1", "A2") and roster.identify(TOKENS["S1"]).role == "supervisor"
    assert roster.identify("nope") is None and roster.identify(None) is None
    env = {"DIALER_AGENT_TOKENS": f"A9:agent:{'z' * 16}, S9:admin:{'w' * 16}"}
    assert Roster.from_settings(AgentsSection(desk="api"), env).agents == ("A9",)
    with pytest.raises(TokenError, match="DIALER_AGENT_TOKENS"):
        Roster.from_settings(AgentsSection(desk="api"), {})
    with pytest.raises(TokenError, match="cannot read"):
        Roster.from_settings(AgentsSection(desk="api", tokens_file=str(tmp_path / "missing")))


def test_a_token_in_a_file_may_hold_a_comma_and_two_entries_on_a_line_are_refused(tmp_path):
    path = tmp_path / "agents.tokens"
    comma = "x" * 10 + ",y;z:" + "w" * 8  # punctuation a password generator makes
    path.write_text(f"A1:agent:{comma}\nA2:agent:{'q' * 20}\n")
    roster = Roster.from_file(path)
    assert roster.agents == ("A1", "A2") and roster.identify(comma) == Identity("A1", "agent")
    assert roster.identify("x" * 10) is None
    # The environment's separator, used in a file: said, not read as one long token that locks both out.
    path.write_text(f"A1:agent:{'x' * 20}, A2:agent:{'y' * 20}\n")
    with pytest.raises(TokenError, match=r"agents.tokens:1: entry: one entry per line") as err:
        Roster.from_file(path)
    assert err.value.line == 1 and err.value.field == "entry" and "x" * 16 not in str(err.value)
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f'[campaign]\nid = "c"\n[agents]\ndesk = "api"\ntokens_file = "{path}"\n')
    cfg = campaign_from_dict({"campaign": {"id": "c"}, "agents": {"desk": "api", "tokens_file": str(path)}})
    errors, _ = agent_api_problems(cfg, str(cfg_path), {})
    assert any("agents.tokens:1: entry: one entry per line" in e for e in errors)
    path.write_text(f"A1:agent:{comma}\n")
    assert agent_api_problems(cfg, str(cfg_path), {})[0] == []


# -- dialer run -----------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent

API_CAMPAIGN = """
[campaign]
id = "floor"
mode = "progressive"

[agents]
desk = "api"
port = {port}
{tokens}
audit_log = "{audit}"

[simulation]
leads = 5
"""


def test_dialer_run_serves_the_agent_api_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    cfg = tmp_path / "floor.toml"
    audit = tmp_path / "audit.jsonl"
    cfg.write_text(API_CAMPAIGN.format(port=port, audit=audit, tokens='tokens_env = "TEST_AGENT_TOKENS"'))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_AGENT_TOKENS": ROSTER}
    cmd = [sys.executable, "-m", "engine.cli", "run", str(cfg), "--results", str(tmp_path / "res"), "--json",
           "--quiet"]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "add --realtime" in refused.stderr
    proc = subprocess.Popen([*cmd, "--realtime"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"agent API on http://127.0.0.1:{port}/api/v1" in line, line
        assert login_when_up(proc, port, TOKENS["A1"])["state"] == "paused"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert TOKENS["A1"] not in err and TOKENS["A1"] not in out
    summary = json.loads(out)
    assert summary["agents"] == 2 and summary["dials"] == 0  # nobody said ready

"""A person cancels the preview call they accepted while it rings, on the asterisk backend: the agent API,
the engine and the Asterisk backend against the project's AMI emulator over real TCP. The hang-up goes
to the PBX as a Hangup action on the ringing channel; the attempt is recorded as cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
from amitest import SECRET, SECRET_ENV, ami_secret, until  # noqa: F401  (ami_secret: autouse fixture)
from test_agent_api import EVENT_WAIT_S, INDEX, ROSTER, auth, next_event

from engine.agent_api import ApiDesk, Roster
from engine.audit import AuditLog
from engine.clock import SystemClock
from engine.config import campaign_from_dict
from engine.dialer import Dialer
from engine.models import Agent, CallState, Lead
from engine.pacing import make_pacer
from engine.pbx.asterisk import AmiServer, AsteriskBackend, AsteriskConfig
from engine.plugins import make_plugin_manager
from engine.store.memory import MemoryStore
from simulations.ami_emulator import AmiEmulator

NEVER_ANSWERS = "+12125550107"  # the emulator's plan: a number ending in 7 rings until it is hung up
RINGING = "Local/12125550107@"  # its channels on the PBX (the trunk dials the digits)


async def test_a_ringing_preview_call_cancelled_by_its_agent_is_hung_up_on_asterisk(tmp_path) -> None:
    emu = AmiEmulator(secret=SECRET, time_scale=1.0)  # rings for the real 25 s
    await emu.start()
    cfg = campaign_from_dict({
        "campaign": {"id": "t", "mode": "preview", "backend": "asterisk", "timezone": "America/New_York"},
        "hours": {"start": "00:00", "end": "24:00"},
        "retry": {"max_attempts": 3, "cancelled": "1h"},
        "agents": {"desk": "api", "port": 0},
    })
    be = AsteriskBackend(AsteriskConfig(
        servers=(AmiServer(port=emu.port, secret_env=SECRET_ENV),), trunk="Local/{digits}@dialer-outbound/n",
        action_timeout=2.0, ping_interval=30.0, reconnect_delay=0.02, reconnect_max=0.1, connect_timeout=1.0,
        agent_answer_timeout=1.0))
    store = MemoryStore(index=INDEX)
    await store.add_leads([Lead("L1", "t", NEVER_ANSWERS, timezone="America/New_York")])
    desk = ApiDesk(cfg, Roster.parse(ROSTER, "test roster"))
    dialer = Dialer(cfg, store=store, pbx=be, desk=desk, agents=[Agent("A1")],
                    plugins=make_plugin_manager(entry_points_too=False), clock=SystemClock(),
                    pacer=make_pacer("preview"), audit=AuditLog(tmp_path / "audit.jsonl", clock=lambda: 0.0),
                    drain_timeout=5.0)
    desk.attach(dialer)
    run = asyncio.create_task(dialer.run())
    http = aiohttp.ClientSession()
    try:
        async with asyncio.timeout(EVENT_WAIT_S):
            await desk.serving.wait()
        base = f"http://127.0.0.1:{desk.port}/api/v1"
        ws = await http.ws_connect(base + "/events", headers=auth("A1"))
        for action in ("login", "ready"):
            async with http.post(f"{base}/{action}", headers=auth("A1")) as r:
                assert r.status == 200
        offer = await next_event(ws, "preview")
        async with http.post(f"{base}/previews/{offer['offer_id']}/accept", headers=auth("A1")) as r:
            call_id = (await r.json())["call_id"]
        await until(lambda: any(c.startswith(RINGING) for c in emu.channels))  # the far end rings
        assert dialer.calls[call_id].state in (CallState.ORIGINATING, CallState.RINGING)
        async with http.post(f"{base}/previews/{offer['offer_id']}/cancel", headers=auth("A1")) as r:
            assert (r.status, await r.json()) == (200, {"offer_id": offer["offer_id"], "call_id": call_id,
                                                        "cancelled": True})
        await until(lambda: call_id not in dialer.calls)
        assert not any(c.startswith(RINGING) for c in emu.channels)  # the ring is gone on the PBX
        await until(lambda: dialer.pool.agents["A1"].state.value == "ready")
        dialer.stop()
        async with asyncio.timeout(30):
            summary = await run
    finally:
        dialer.stop()
        with contextlib.suppress(Exception):
            await run
        await http.close()
        await emu.close()
    assert summary["errors"] == 0
    [row] = await store.results("t")
    assert (row["outcome"], row["agent_id"]) == ("cancelled", None)
    assert json.dumps(row).count("2125550107") == 0  # the number is masked in results

"""Floods in CI: a few hundred concurrent calls from emulator processes over real TCP, counted on both
sides; and the ingest shortcuts the flood relies on, checked against the line-by-line reference on
every captured Asterisk 22 transcript. Nothing here is timed: only counts and equalities."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from engine.models import CallAttempt, Lead
from engine.pbx.ami.correlator import Correlator
from engine.pbx.ami.protocol import AmiProtocol, Message, _slow_message, drain
from engine.pbx.asterisk import AmiServer, AsteriskBackend, AsteriskConfig
from engine.pbx.base import Answered, CallEvent, Ended
from simulations.ami_emulator import AmiEmulator, CallPlan
from simulations.flood import FloodOptions, flood_phone, format_figures, run_flood

FIX = Path(__file__).parent / "fixtures" / "ami"
TRANSCRIPTS = sorted(p for p in FIX.glob("*.txt") if not p.name.endswith(".sent.txt")
                     and p.name not in ("README.txt", "panoramisk_stream.txt"))


def _small(**kw: object) -> FloodOptions:
    """A few hundred calls in flight for a few seconds: 150 dials/s, calls of about 2.5 s."""
    base: dict[str, object] = dict(agents=200, concurrent=400, rate=150.0, duration=3.0, ring=0.5, talk=1.5,
                                   wrap=0.1, answer_rate=0.9, live=False, baseline=False, drain=30.0)
    base.update(kw)
    return FloodOptions(**base)  # type: ignore[arg-type]


def _assert_counts_match(fig: object) -> None:
    f = fig  # Figures
    report = format_figures(f)  # type: ignore[arg-type]
    assert f.ok, report  # type: ignore[attr-defined]
    assert f.problems == [], report  # type: ignore[attr-defined]
    # Events: what each emulator says it sent on the connection = what the engine read = what it correlated.
    assert f.events_sent > 0  # type: ignore[attr-defined]
    for row in f.per_connection:  # type: ignore[attr-defined]
        assert row["sent"] == row["read"] == row["correlated"], report
    # Calls: originated at the PBX = dials = ended = result rows.
    assert f.dials > 0  # type: ignore[attr-defined]
    assert f.originated == f.dials == f.ended == f.result_rows, report  # type: ignore[attr-defined]
    assert f.errors == 0 and f.unknown_ends == 0, report  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_small_flood_counts_match_on_both_sides() -> None:
    fig = await run_flood(_small())
    _assert_counts_match(fig)
    assert fig.peak_concurrent >= 200, format_figures(fig)  # a few hundred calls were in flight at once
    assert fig.connected > 0
    # Every answered call carried the full volume (busy calls carry ~30): well above the minimal ~31.
    assert fig.events_per_dial > 60, format_figures(fig)


@pytest.mark.slow
async def test_small_flood_with_redis_and_two_emulators(redis_url: str) -> None:
    fig = await run_flood(_small(store="redis", redis_url=redis_url, emulators=2, rate=100.0, concurrent=250))
    _assert_counts_match(fig)
    assert len(fig.per_connection) == 2
    # The Dialer takes decision_ms when dialling stops: dials still in their gate then are not in it.
    assert 0 < fig.decision_ms["n"] <= fig.dials


@pytest.mark.slow
def test_flood_command_on_uvloop(tmp_path: Path) -> None:
    """``dialer flood`` as an operator runs it: its own process, uvloop, JSON figures, exit 0."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "flood", "--agents", "60", "--concurrent", "120", "--rate", "60",
         "--duration", "2", "--ring", "0.3", "--talk", "0.8", "--wrap", "0.1", "--loop", "uvloop",
         "--emulator-uvloop", "--no-baseline", "--quiet", "--json"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.returncode == 0, out.stderr[-3000:]
    fig = json.loads(out.stdout)
    assert fig["ok"] and fig["events_sent"] == fig["events_read"] == fig["events_correlated"] > 0
    assert fig["originated"] == fig["dials"] == fig["ended"] == fig["result_rows"] > 0
    assert fig["options"]["loop"] == "uvloop"
    assert "+1" not in out.stderr  # no full phone number in any log line


async def test_full_event_volume_of_an_answered_call() -> None:
    """The emulator's full volume matches a real Asterisk 22 (about 96 events for an answered call
    bridged to an agent); the minimal volume is only what the engine reads."""
    counts = {}
    for full in (False, True):
        emu = AmiEmulator(secret="s", full_events=full,
                          plan=lambda n, v: CallPlan("answer", answer_after=0.02, talk=0.05))
        port = await emu.start()
        os.environ["DIALER_TEST_FLOOD_SECRET"] = "s"
        be = AsteriskBackend(AsteriskConfig(servers=(AmiServer(port=port, secret_env="DIALER_TEST_FLOOD_SECRET"),),
                                            trunk="Local/{digits}@dialer-outbound/n"))
        ended = asyncio.Event()

        def sink(ev: CallEvent, be: AsteriskBackend = be, ended: asyncio.Event = ended) -> None:
            if isinstance(ev, Answered):
                asyncio.get_running_loop().create_task(be.connect(ev.call_id, "A1"))
            elif isinstance(ev, Ended):
                ended.set()

        try:
            await be.start(sink)
            await be.agent_login("A1")
            before = emu.stats()["EventsSentTotal"]
            await be.originate(CallAttempt("c1", Lead("L1", "k", "+12125550100"), "k", 1), ring_timeout=20,
                               caller_id="x")
            async with asyncio.timeout(10):
                await ended.wait()
            await asyncio.sleep(0.05)  # the agent's return to holding follows the customer's hangup
            counts[full] = emu.stats()["EventsSentTotal"] - before
        finally:
            await be.close()
            await emu.close()
    assert 90 <= counts[True] <= 100, counts
    assert counts[False] < 40, counts


def test_flood_numbers_are_distinct_fictional_and_mixed() -> None:
    phones = [flood_phone(i, 0.9) for i in range(20_000)]
    assert len(set(phones)) == len(phones)
    share = sum(p.endswith("0") for p in phones) / len(phones)
    assert 0.88 < share < 0.92
    assert all(p[-1] in "08" and p.startswith("+1") and len(p) == 12 for p in phones)


# -- the ingest shortcuts against the reference -----------------------------------------------------


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_lazy_and_bulk_frames_equal_the_line_by_line_parse(path: Path) -> None:
    raw = path.read_bytes()
    body = raw[raw.index(b"\n") + 1:]
    frames = [f for f in body.decode().split("\r\n\r\n") if f]
    reference = [m for m in (_slow_message(f) for f in frames) if m is not None]
    p = AmiProtocol("server")
    p.receive_data(body)
    got = p.messages()
    assert got == reference
    for m, r in zip(got, reference, strict=True):
        assert m.headers == r.headers and m.event == r.event and m.action_id == r.action_id


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_prefilter_never_drops_an_event_the_correlator_acts_on(path: Path) -> None:
    """Feeding only what ``prefilter`` keeps gives the same call events as feeding everything, and the
    skipped events are counted: none is lost."""
    from test_ami_correlator import registered

    name = path.stem
    raw = path.read_bytes()
    everything = registered(name)
    all_events: list[CallEvent] = []
    p = AmiProtocol()
    p.receive_data(raw)
    frames = [m for m in drain(p) if isinstance(m, Message)]
    for m in frames:
        all_events += everything.feed(m.headers)

    filtered = registered(name)
    keep = filtered.prefilter({"OriginateResponse", "Hangup", "Shutdown"})
    q = AmiProtocol()
    q.receive_data(raw)
    kept: list[Message] = []
    while True:
        batch = q.messages(keep)
        if not batch:
            break
        kept += batch
    kept_events: list[CallEvent] = []
    for m in kept:
        if m.event is None or filtered.interested(m.event, m.raw):
            kept_events += filtered.feed(m.headers)
    assert kept_events == all_events
    assert len(kept) + q.skipped == len(frames)


def test_prefilter_keeps_what_matters_and_skips_noise() -> None:
    c = Correlator(abandon_context="dialer-abandon")
    keep = c.prefilter({"Hangup"})
    assert keep("Newstate", "Event: Newstate\r\nUniqueid: 1")
    assert keep("VarSet", "Event: VarSet\r\nVariable: AMDSTATUS\r\nValue: HUMAN")
    assert not keep("VarSet", "Event: VarSet\r\nVariable: DIALSTATUS\r\nValue: ANSWER")
    assert keep("Newexten", "Event: Newexten\r\nContext: dialer-abandon\r\nApplication: Playback")
    assert not keep("Newexten", "Event: Newexten\r\nContext: dialer-customer\r\nApplication: Wait")
    assert not keep("DeviceStateChange", "Event: DeviceStateChange\r\nDevice: Local/1@x")
    assert keep("CoreShowChannel", "Event: CoreShowChannel\r\nActionID: a-1\r\nChannel: x")  # answers an action
    assert keep("Hangup", "Event: Hangup")


def test_reported_redis_url_never_carries_a_password() -> None:
    from simulations.flood import _without_password

    assert _without_password("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert _without_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_flood_pacer_does_not_make_up_dials_the_dialer_held_back() -> None:
    """A load generator, not a pacing strategy: while the Dialer held dialling (its loop or the PBX's
    events late) the dials it could not place are dropped, not sent in one burst afterwards."""
    from engine.testing import snapshot
    from simulations.flood import FloodPacer

    held = [0]
    pacer = FloodPacer(100.0, 10_000, lambda: 0, ingest_lag=lambda: 0.0, dialer_held=lambda: held[0])
    assert pacer.decide(snapshot(now=0.0)).dials == 0
    assert pacer.decide(snapshot(now=0.1)).dials == 10  # 100 dials/s, a decision every 0.1 s
    held[0] += 3  # the Dialer held three rounds (0.8 s) without asking the pacer
    assert pacer.decide(snapshot(now=1.0)).dials == 0
    assert pacer.decide(snapshot(now=1.1)).dials == 10  # the rate again, nothing made up
    free = FloodPacer(100.0, 10_000, lambda: 0)  # --no-ingest-hold: the skipped dials are made up
    free.decide(snapshot(now=0.0))
    assert free.decide(snapshot(now=0.9)).dials == 90

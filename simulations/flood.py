"""``dialer flood``: the whole stack under thousands of concurrent calls, over real TCP.

Why it exists: the pacing simulator runs in one process on a virtual clock, so it says nothing about
whether one engine process keeps up with a busy PBX. Here the AMI emulator runs as one or several
separate processes (``python -m engine.cli pbx-emulator --port 0``, so the PBX side does not share the
engine's core) and the real engine -- ``Dialer``, the ``asterisk`` backend, the compliance gate and the
in-memory or Redis store -- runs a campaign against them at a chosen call rate and concurrency, with the
full event volume of a real Asterisk 22 (``--full-events``: about 96 AMI events per answered call).

What it reports, live (stderr, every second) and at the end:

* calls in flight, originates/s, AMI events/s ingested (framed and fed through the correlator);
* event-to-state lag: from the ``Timestamp`` the PBX put on an event (``timestampevents = yes``) to the
  moment the correlator turned it into a call event (p50/p99/max);
* per-dial decision time (the Dialer's ``decision_ms``, from the pacer's decision to the dial's verdict:
  the claim, the store context, the compliance gate and the reservation; with Redis, the gate alone for
  the dials taken from leads reserved ahead, ``engine/hopper.py``, and how many were);
* memory per concurrent call (RSS growth over the baseline taken after agent login, at peak concurrency);
* errors, and backpressure: how often dialling held because the loop was late (``held``), the worst lag;
* counts on both sides: events the emulator says it sent on each connection (``DialerEmulatorStats``,
  answered in order with the events) against events the engine read and correlated; calls originated
  (emulator) = dials (engine) = calls ended = result rows.

It also measures, in the same run, panoramisk's bare parse rate and the engine's framer on the same
bytes (the real Asterisk 22 transcript of an answered call, repeated), so the ingest rate is stated as
a ratio to a baseline taken on this machine at this moment.

The emulators decide each call with :func:`plan` (ring and talk times from ``DIALER_FLOOD_PLAN``); the
lead's last digit picks the outcome (see :func:`flood_phone`). Numbers are fictional (555 exchanges) and
never leave the loopback interface; logs only ever show them masked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.pacing import Decision, Snapshot
    from simulations.ami_emulator import CallPlan

PLAN_ENV = "DIALER_FLOOD_PLAN"
SECRET_ENV = "DIALER_FLOOD_SECRET"
TRANSCRIPT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ami" / "answered.txt"


# -- the customers the emulators play -------------------------------------------------------------


def plan(number: str, variables: dict[str, str]) -> CallPlan:
    """The flood's customers (runs inside each emulator process): last digit 8 busy, 6 no answer after
    ``ring`` s, anything else a person who answers after ``ring`` s and talks ``talk`` s once bridged.

    Parameters come from ``DIALER_FLOOD_PLAN`` (``ring=2,talk=6,patience=10``) because the emulator is
    a separate process started by the flood; the defaults are the captured transcript's."""
    from simulations.ami_emulator import CallPlan

    p = _plan_params()
    last = number[-1:]
    if last == "8":
        return CallPlan("busy")
    if last == "6":
        return CallPlan("noanswer", answer_after=p["ring"])
    return CallPlan("answer", answer_after=p["ring"], talk=p["talk"], patience=p["patience"])


_PARAMS: dict[str, float] = {}


def _plan_params() -> dict[str, float]:
    if not _PARAMS:
        _PARAMS.update(ring=2.0, talk=6.0, patience=10.0)
        for part in os.environ.get(PLAN_ENV, "").split(","):
            key, _, value = part.partition("=")
            if key.strip() in _PARAMS and value:
                _PARAMS[key.strip()] = float(value)
    return _PARAMS


AREA = ("212", "213", "312", "415", "512", "617", "702", "713", "801", "919", "305", "404", "503", "602", "646",
        "718", "720", "773", "818", "858")


def flood_phone(i: int, answer_rate: float) -> str:
    """The i-th lead's number: fictional 555-5xx exchanges, last digit 0 (answers) or 8 (busy), spread
    so that a share ``answer_rate`` of any run of leads answers (a low-discrepancy sequence)."""
    digit = "0" if (i * 0.6180339887498949) % 1.0 < answer_rate else "8"
    area = AREA[i % len(AREA)]
    j = i // len(AREA)
    return f"+1{area}{555 + j // 1000}{j % 1000:03d}{digit}"


# -- options and figures ------------------------------------------------------------------------


@dataclass(slots=True)
class FloodOptions:
    """One flood. ``rate`` dials/s up to ``concurrent`` calls in flight, for ``duration`` s of dialling."""

    emulators: int = 1
    agents: int = 100
    concurrent: int = 300
    rate: float = 100.0
    duration: float = 10.0
    answer_rate: float = 0.9
    ring: float = 1.0
    talk: float = 2.0
    wrap: float = 0.2
    full_events: bool = True
    store: str = "memory"  # or "redis"
    redis_url: str | None = None  # default: a redis-server started for the run
    loop: str = "asyncio"  # or "uvloop"
    emulator_uvloop: bool = False
    live: bool = True
    profile: str | None = None  # write cProfile stats of the engine process here
    baseline: bool = True  # measure panoramisk's bare parse rate first
    drain: float = 60.0
    ingest_hold: bool = True  # hold dialling while events arrive late (see FloodPacer)
    gc_freeze: bool = False  # gc.freeze() once set up (see BENCHMARKS.md, Floods)
    reserve_ahead: bool | None = None  # the Dialer's hopper (engine/hopper.py); None: its default (Redis only)


@dataclass(slots=True)
class Figures:
    """Everything a flood measured; ``ok`` says whether the counts on both sides match."""

    options: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    dial_s: float = 0.0
    dials: int = 0
    originated: int = 0  # customer originates the emulators received
    ended: int = 0  # Ended call events the engine delivered
    result_rows: int = 0
    peak_concurrent: int = 0
    dials_per_s: float = 0.0
    peak_dials_per_s: float = 0.0
    events_sent: int = 0
    events_read: int = 0
    events_correlated: int = 0
    events_per_s: float = 0.0
    peak_events_per_s: float = 0.0
    events_per_dial: float = 0.0  # every event sent / dials (agent logins and busy calls included)
    lag_ms: dict[str, float] = field(default_factory=dict)
    decision_ms: dict[str, float] = field(default_factory=dict)
    reserve_ahead: dict[str, int] = field(default_factory=dict)  # the hopper: taken, missed, given back
    rss_base_mb: float = 0.0
    rss_peak_mb: float = 0.0
    kb_per_call: float = 0.0
    errors: int = 0
    interrupted: int = 0
    unknown_ends: int = 0
    held: int = 0
    held_ingest: int = 0
    gc2_ms: dict[str, float] = field(default_factory=dict)  # full (generation 2) collections' pauses
    max_loop_lag_ms: float = 0.0
    connected: int = 0
    abandoned: int = 0
    per_connection: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0
    emulator_cpu_s: list[float] = field(default_factory=list)
    ok: bool = False
    problems: list[str] = field(default_factory=list)  # counts that differ, errors, calls lost
    engine_issues: list[str] = field(default_factory=list)  # engine misbehaviour the flood worked around


def _without_password(url: str | None) -> str | None:
    """A Redis URL fit for a report: any password replaced (the figures are printed and kept)."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: no per-call memory figure
        return 0.0


def _pcts(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {"p50": round(v[len(v) // 2], 3), "p99": round(v[min(len(v) - 1, int(len(v) * 0.99))], 3),
            "max": round(v[-1], 3), "n": len(v)}


# -- the baseline: bare parse rates on the same bytes ---------------------------------------------


def parse_baseline(copies: int = 400, chunk: int = 65536) -> dict[str, float]:
    """Frames/s of panoramisk's ``AMIProtocol.data_received`` (its own framing and ``Message``, dispatch
    to a no-op) and of the engine's framer, on the real Asterisk 22 bytes of an answered call, repeated,
    fed in 64 KiB reads. Same process, same moment: the ratio is what carries over between machines."""
    raw = TRANSCRIPT.read_bytes()
    body = raw[raw.index(b"\r\n") + 2:]
    stream = body * copies
    frames = stream.count(b"\r\n\r\n")
    pieces = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    out: dict[str, float] = {"frames": frames, "bytes_per_frame": round(len(stream) / frames, 1)}

    from panoramisk.ami_protocol import AMIProtocol

    class _Factory:
        save_stream = None

        def dispatch(self, message: Any) -> None:
            pass

    def panoramisk_once() -> float:
        p = AMIProtocol()
        p.connection_made(None)
        p.factory = _Factory()
        p.version = "11.0.0"
        t = time.perf_counter()
        for piece in pieces:
            p.data_received(piece)
        return frames / (time.perf_counter() - t)

    from engine.pbx.ami.protocol import AmiProtocol

    def engine_once() -> float:
        p = AmiProtocol("server")
        n = 0
        t = time.perf_counter()
        for piece in pieces:
            p.receive_data(piece)
            n += len(p.messages())
        dt = time.perf_counter() - t
        assert n == frames, (n, frames)
        return frames / dt

    def engine_parsed_once() -> float:
        p = AmiProtocol("server")
        t = time.perf_counter()
        for piece in pieces:
            p.receive_data(piece)
            for m in p.messages():
                m.headers  # noqa: B018 -- every header of every frame, as panoramisk does
        return frames / (time.perf_counter() - t)

    out["panoramisk_frames_per_s"] = round(max(panoramisk_once() for _ in range(3)))
    out.update(ingest_baseline(copies))
    out["engine_frames_per_s"] = round(max(engine_once() for _ in range(3)))
    out["engine_parsed_frames_per_s"] = round(max(engine_parsed_once() for _ in range(3)))
    return out


def ingest_baseline(copies: int = 400, chunk: int = 65536) -> dict[str, float]:
    """The engine's whole ingest path, without sockets: frame, filter, parse what matters, correlate
    and translate into call events, on the same real Asterisk bytes, each copy of the answered call
    given its own uniqueids so the correlator tracks ``copies`` distinct calls to their end."""
    from engine.pbx.ami.correlator import Correlator
    from engine.pbx.ami.protocol import AmiProtocol
    from engine.pbx.base import Connected, Ended
    from simulations.ami_transport_rate import answered_calls

    stream, calls = answered_calls(copies)
    frames = stream.count(b"\r\n\r\n")
    pieces = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    watched = ("OriginateResponse", "Hangup")

    def once() -> tuple[float, int, int]:
        corr = Correlator()
        for call_id, action_id, channel in calls:
            corr.register(call_id, action_id=action_id, channel=channel)
        keep = corr.prefilter({*watched, "Shutdown"})
        proto = AmiProtocol("server")
        ended = connected = 0
        t0 = time.perf_counter()
        for piece in pieces:
            proto.receive_data(piece)
            for m in proto.messages(keep):
                ev = m.event
                if ev is not None and (ev in watched or corr.interested(ev, m.raw)):
                    for ce in corr.feed(m.headers):
                        if isinstance(ce, Ended):
                            ended += 1
                        elif isinstance(ce, Connected):
                            connected += 1
        return frames / (time.perf_counter() - t0), ended, connected

    runs = [once() for _ in range(3)]
    rate, ended, connected = max(runs)
    if ended != copies or connected != copies:
        raise RuntimeError(f"ingest baseline lost track: {ended} ended, {connected} connected of {copies}")
    return {"engine_ingest_frames_per_s": round(rate), "ingest_calls_tracked": ended}


# -- the emulator processes -----------------------------------------------------------------------


@dataclass(slots=True)
class _Emulator:
    proc: asyncio.subprocess.Process
    host: str
    port: int
    reader: asyncio.Task[None]  # keeps the emulator's stdout pipe from filling up


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def start_emulators(n: int, opts: FloodOptions, secret: str) -> list[_Emulator]:
    """``n`` emulators as separate processes on free ports; each prints ``AMI emulator on HOST:PORT``."""
    env = {**os.environ, SECRET_ENV: secret,
           PLAN_ENV: f"ring={opts.ring},talk={opts.talk},patience={max(10.0, opts.talk * 3)}"}
    args = ["--port", "0", "--secret-env", SECRET_ENV, "--plan", "simulations.flood:plan", "--timestamp-events"]
    if opts.full_events:
        args.append("--full-events")
    if opts.emulator_uvloop:
        args.append("--uvloop")
    out: list[_Emulator] = []
    try:
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "simulations.flood", "emulator", *args, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            assert proc.stdout is not None
            line = ""
            async with asyncio.timeout(30):
                while not line.startswith("AMI emulator on "):
                    raw = await proc.stdout.readline()
                    if not raw:
                        raise RuntimeError("emulator exited at start")
                    line = raw.decode(errors="replace")
            host, _, port = line.split()[3].rpartition(":")
            out.append(_Emulator(proc, host, int(port), asyncio.create_task(_drain(proc.stdout))))
    except BaseException:
        await stop_emulators(out)
        raise
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def stop_emulators(emus: Sequence[_Emulator]) -> None:
    """SIGINT each emulator (it closes its server) and wait; kill one that does not go within 10 s."""
    for e in emus:
        if e.proc.returncode is None:
            e.proc.send_signal(signal.SIGINT)
    for e in emus:
        try:
            async with asyncio.timeout(10):
                await e.proc.wait()
        except TimeoutError:
            e.proc.kill()
            await e.proc.wait()
        e.reader.cancel()


# -- the engine side ------------------------------------------------------------------------------


class FloodPacer:
    """Dials at ``rate`` per second while fewer than ``limit`` calls are in flight (a token bucket of
    one second): a load generator, not a pacing strategy, so the flood sets the load it asks for.

    The Dialer holds dialling while the PBX's events arrive late or its loop runs late (its
    ``ingest_lag`` and ``loop_lag`` checks); with ``ingest_lag`` and ``dialer_held`` (the Dialer's count
    of held rounds) given, this pacer also drops the dials it could not place meanwhile, so they are
    not made up in a burst once the engine has caught up (see BENCHMARKS.md, Floods)."""

    name = "flood"

    def __init__(self, rate: float, limit: int, in_flight: Callable[[], int],
                 ingest_lag: Callable[[], float] | None = None, max_lag: float = 0.2,
                 dialer_held: Callable[[], int] | None = None) -> None:
        self.rate, self.limit, self.in_flight = rate, limit, in_flight
        self.ingest_lag, self.max_lag, self.dialer_held = ingest_lag, max_lag, dialer_held
        self._held_seen = 0
        self.held = 0
        self._tokens = 0.0
        self._at: float | None = None

    def decide(self, snap: Snapshot) -> Decision:
        """Tokens earned since the last decision, up to the room left under the concurrency limit."""
        from engine.pacing import Decision

        if self._at is None:
            self._at = snap.now
        self._tokens = min(self._tokens + (snap.now - self._at) * self.rate, max(self.rate, 1.0))
        self._at = snap.now
        if self.dialer_held is not None and self.dialer_held() != self._held_seen:
            self._held_seen = self.dialer_held()
            self._tokens = 0.0  # the Dialer held on its own loop lag since: not made up either
        if self.ingest_lag is not None and self.ingest_lag() > self.max_lag:
            self.held += 1
            self._tokens = 0.0  # the calls not placed while behind are not made up in a burst
            return Decision()
        n = max(0, min(int(self._tokens), self.limit - self.in_flight()))
        self._tokens -= n
        return Decision(dials=n)


def _lag_correlator(base: type, sink: deque[float]) -> Any:
    """A correlator that records, for each AMI event completing a call event, how old the event is."""

    class LagCorrelator(base):  # type: ignore[misc,valid-type]
        def feed(self, msg: Mapping[str, str]) -> list[Any]:
            out = super().feed(msg)
            if out:
                ts = msg.get("Timestamp")
                if ts:
                    sink.append((time.time() - float(ts)) * 1000.0)
            return out

    return LagCorrelator


def _campaign(opts: FloodOptions, ports: Sequence[tuple[str, int]], prefix: str) -> Any:
    from engine.config import campaign_from_dict

    data: dict[str, Any] = {
        "campaign": {"id": "flood", "mode": "progressive", "backend": "asterisk", "store": opts.store,
                     "timezone": "America/New_York"},
        "hours": {"start": "00:00", "end": "24:00"},
        "pacing": {"interval": "0.1s", "drain_timeout": f"{opts.drain}s",
                   **({} if opts.reserve_ahead is None else {"reserve_ahead": opts.reserve_ahead})},
        "abandon": {"count_early_hangups": False},
        "asterisk": {"servers": [{"host": h, "port": p, "secret_env": SECRET_ENV} for h, p in ports],
                     "trunk": "Local/{digits}@dialer-outbound/n", "action_timeout": "10s", "ping_interval": "30s"},
        "simulation": {"agents": opts.agents, "leads": 0, "agent": {"wrap_mean": f"{opts.wrap}s"}},
    }
    if opts.store == "redis":
        data["redis"] = {"url": opts.redis_url, "prefix": prefix}
    return campaign_from_dict(data, source="<flood>")


async def run_flood(opts: FloodOptions, *, out: Any = sys.stderr) -> Figures:
    """One flood, from emulator start to the final comparison of counts; never raises on a mismatch
    (the figures say what went wrong in ``problems``)."""
    import numpy as np

    from engine.clock import SystemClock
    from engine.dialer import Dialer
    from engine.models import Lead
    from engine.pbx.ami.correlator import Correlator
    from engine.pbx.asterisk import AsteriskBackend, AsteriskConfig
    from engine.pbx.base import Ended
    from engine.plugins import make_plugin_manager
    from engine.results import ResultWriter
    from simulations.agents import SimDesk
    from simulations.runner import simulated_agents

    fig = Figures(options={**asdict(opts), "redis_url": _without_password(opts.redis_url)})
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    if opts.baseline:
        fig.baseline = parse_baseline()
    secret = secrets.token_hex(16)
    os.environ[SECRET_ENV] = secret  # the backend reads it from the environment, never from argv
    redis_server = None
    if opts.store == "redis" and not opts.redis_url:
        from simulations.redis_proc import RedisServer

        redis_server = RedisServer().start()
        # A flood starts hundreds of store operations at once: more connections than the store's
        # default pool (they would wait their turn, not fail).
        opts.redis_url = redis_server.url + "?max_connections=2000"
    # SIGTERM as SIGINT: unwind through the finally below, so no emulator or redis-server is orphaned.
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    if main is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        emus = await start_emulators(opts.emulators, opts, secret)
    except BaseException:
        if redis_server is not None:
            redis_server.stop()
        raise
    store = None
    try:
        prefix = f"flood{secrets.token_hex(4)}"
        cfg = _campaign(opts, [(e.host, e.port) for e in emus], prefix)
        n_leads = int(opts.rate * opts.duration * 1.2) + opts.concurrent
        leads = [Lead(lead_id=f"F{i:07d}", campaign_id=cfg.id, phone=flood_phone(i, opts.answer_rate),
                     timezone=cfg.campaign.timezone) for i in range(n_leads)]
        if opts.store == "redis":
            from engine.store.redis import RedisStore

            store = RedisStore(opts.redis_url or "", prefix=prefix)
        else:
            from engine.store.memory import MemoryStore

            store = MemoryStore()
        await store.add_leads(leads)

        lags: deque[float] = deque(maxlen=1_000_000)
        gc_pauses: list[float] = []
        gc_started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            elif info.get("generation") == 2:
                gc_pauses.append((time.perf_counter() - gc_started[0]) * 1000.0)

        gc.callbacks.append(on_gc)
        ended = {"n": 0, "unknown": 0}
        backend = AsteriskBackend(AsteriskConfig.from_settings(cfg))
        links = backend._links  # the flood reads the per-connection counters the backend keeps
        for link in links:
            link.correlator = _lag_correlator(Correlator, lags)(abandon_context=cfg.asterisk.abandon_context)
        agents = simulated_agents(cfg, opts.agents)
        real_start, real_close = backend.start, backend.close
        state: dict[str, Any] = {}

        async def start(sink: Callable[[Any], None]) -> None:
            def counting_sink(ev: Any) -> None:
                if isinstance(ev, Ended):
                    ended["n"] += 1
                    if ev.reason == "unknown":
                        ended["unknown"] += 1
                sink(ev)

            await real_start(counting_sink)
            # Agent sessions in parallel (the Dialer logs them in one by one: minutes for thousands).
            for i in range(0, len(agents), 500):
                await asyncio.gather(*(backend.agent_login(a.agent_id) for a in agents[i:i + 500]))
            if opts.gc_freeze:
                gc.freeze()  # leads, agents, plugins: long-lived, no need to scan them at every collection
            state["rss_base"] = _rss_mb()
            state["dial_t0"] = time.perf_counter()

        async def close() -> None:
            state["dial_t1"] = time.perf_counter()
            await _settle(backend, links, fig)
            await real_close()

        backend.start, backend.close = start, close  # type: ignore[method-assign]
        results_dir = tempfile.mkdtemp(prefix="dialer-flood-")
        results = ResultWriter(results_dir, "flood", ["csv"])
        plugins = make_plugin_manager(cfg.campaign.plugins)
        sim = cfg.simulation
        assert sim is not None
        desk = SimDesk(sim.agent, sim.customers, backend, np.random.default_rng(1))
        holder: dict[str, Any] = {}
        pacer = FloodPacer(opts.rate, opts.concurrent, lambda: len(holder["dialer"].calls),
                           ingest_lag=(lambda: backend.ingest_lag) if opts.ingest_hold else None,
                           dialer_held=(lambda: holder["dialer"].counters.held) if opts.ingest_hold else None)
        dialer = Dialer(cfg, store=store, pbx=backend, desk=desk, agents=agents, plugins=plugins,
                        clock=SystemClock(), pacer=pacer, results=results, node_id="flood")
        holder["dialer"] = dialer
        live = asyncio.create_task(_live(dialer, links, lags, fig, state, out if opts.live else None,
                                         lambda: pacer.held))
        profiler = None
        if opts.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        watchdog = asyncio.get_running_loop().call_later(
            opts.duration + opts.drain + 120.0, _dump_tasks, out)
        try:
            summary = await dialer.run(until=opts.duration)
        finally:
            watchdog.cancel()
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(opts.profile)
            live.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live
        # -- figures
        c = dialer.counters
        fig.dials = c.dials
        fig.ended = ended["n"]
        fig.unknown_ends = ended["unknown"]
        fig.errors = c.errors
        fig.interrupted = c.interrupted
        fig.held = c.held
        fig.held_ingest = pacer.held
        fig.connected, fig.abandoned = c.connected, c.abandoned
        gc.callbacks.remove(on_gc)
        fig.gc2_ms = _pcts(gc_pauses)
        fig.decision_ms = dict(summary.get("decision_ms", {}))
        fig.reserve_ahead = dict(summary.get("reserve_ahead", {}))
        fig.lag_ms = _pcts(lags)
        csv = results.paths.get("csv")
        if csv is not None and csv.exists():
            with csv.open(encoding="utf-8") as f:
                fig.result_rows = max(0, sum(1 for _ in f) - 1)
        dial_s = state.get("dial_t1", time.perf_counter()) - state.get("dial_t0", t0)
        fig.dial_s = round(dial_s, 2)
        fig.dials_per_s = round(fig.dials / opts.duration, 1) if opts.duration else 0.0
        fig.events_per_s = round(fig.events_correlated / dial_s, 0) if dial_s > 0 else 0.0
        if fig.dials:
            fig.events_per_dial = round(fig.events_sent / fig.dials, 1)
        fig.rss_base_mb = round(state.get("rss_base", 0.0), 1)
        fig.rss_peak_mb = round(state.get("rss_peak", 0.0), 1)
        if state.get("peak", 0):
            fig.kb_per_call = round((state["rss_at_peak"] - state.get("rss_base", 0.0)) * 1024 / state["peak"], 1)
        fig.peak_concurrent = state.get("peak", 0)
        _check(fig, opts)
    finally:
        if store is not None:
            await store.close()
        fig.emulator_cpu_s = [round(_cpu_s(e.proc.pid), 2) for e in emus]
        await stop_emulators(emus)
        if redis_server is not None:
            redis_server.stop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
    fig.wall_s = round(time.perf_counter() - t0, 2)
    fig.cpu_s = round(time.process_time() - cpu0, 2)
    return fig


def _dump_tasks(out: Any) -> None:
    """The run outlived its every bound: say where each task waits (for the bug report), once."""
    print("flood: the campaign did not end in time; tasks still running:", file=out)
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=3)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        print(f"  {task.get_name()}: {where}", file=out)


async def _settle(backend: Any, links: Sequence[Any], fig: Figures) -> None:
    """Before the backend closes: let the last events arrive, then ask each emulator, on the very
    connection the engine reads, how many events it sent there. The reply comes after every event
    it counts, so once it is read the engine must have read exactly that many (retried while a tail
    of events is still arriving, which shows up as more read than sent). Every wait is bounded: a
    dead consumer or a silent PBX becomes a problem in the figures, not a hang."""
    from engine.pbx.base import PbxError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    # Polling: neither state is published as an event, and the waits are bounded.
    while backend.in_flight() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    fig.per_connection = []
    for link in links:
        row: dict[str, Any] = {"server": link.server.label, "sent": -1, "read": link.events_read,
                               "correlated": link.events_correlated, "originates": 0}
        for _ in range(20):
            try:
                reply = await link.action("DialerEmulatorStats")
            except (TimeoutError, PbxError) as exc:
                fig.problems.append(f"{link.server.label}: no stats from the emulator ({exc or 'timeout'})")
                break
            settled = loop.time() + 10.0
            while not backend._queue.empty() and loop.time() < settled:  # noqa: ASYNC110 (correlate what was read)
                await asyncio.sleep(0.01)
            sent = int(reply.get("EventsSent") or -1)
            row.update(sent=sent, read=link.events_read, correlated=link.events_correlated,
                       originates=int(reply.get("Originates") or 0))
            if sent == link.events_read == link.events_correlated:
                break
            await asyncio.sleep(0.1)
        fig.per_connection.append(row)
    fig.events_sent = sum(r["sent"] for r in fig.per_connection)
    fig.events_read = sum(r["read"] for r in fig.per_connection)
    fig.events_correlated = sum(r["correlated"] for r in fig.per_connection)
    fig.originated = sum(r["originates"] for r in fig.per_connection) - len(backend._agents)


def _check(fig: Figures, opts: FloodOptions) -> None:
    p = fig.problems  # may already hold what _settle found
    for r in fig.per_connection:
        if not (r["sent"] == r["read"] == r["correlated"]):
            p.append(f"{r['server']}: events sent {r['sent']}, read {r['read']}, correlated {r['correlated']}")
    if not (fig.originated == fig.dials == fig.ended == fig.result_rows):
        p.append(f"calls: originated {fig.originated}, dials {fig.dials}, ended {fig.ended}, "
                 f"result rows {fig.result_rows}")
    if fig.errors:
        p.append(f"{fig.errors} call handling errors")
    if fig.unknown_ends:
        p.append(f"{fig.unknown_ends} calls ended as unknown (lost track)")
    fig.ok = not p


async def _live(dialer: Any, links: Sequence[Any], lags: deque[float], fig: Figures, state: dict[str, Any],
                out: Any, held: Callable[[], int]) -> None:
    """Once a second: calls in flight, originates/s, events/s, lag, decision time, loop lag, memory."""
    last = (time.perf_counter(), 0, 0, 0)
    state["peak"] = 0
    state["rss_peak"] = 0.0
    stopping_since: float | None = None
    while True:
        await asyncio.sleep(1.0)
        now = time.perf_counter()
        if getattr(dialer, "_stopping", False):
            # The Dialer stops pacing with one cancel(); a cancel swallowed inside a store call (seen
            # with the Redis store) leaves its pacing loop running and run() waiting forever. Cancel it
            # again after 5 s, and say so in the figures: it is a Dialer bug, not a flood result.
            stopping_since = stopping_since or now
            pacing = [t for t in asyncio.all_tasks() if t.get_name() == "pacing" and not t.done()]
            if pacing and now - stopping_since > 5.0:
                for t in pacing:
                    t.cancel()
                msg = "the Dialer's pacing task outlived its cancel at stop (cancelled again by the flood)"
                if msg not in fig.engine_issues:
                    fig.engine_issues.append(msg)
        dials = dialer.counters.dials
        events = sum(link.events_correlated for link in links)
        dt = now - last[0]
        dps, eps = (dials - last[1]) / dt, (events - last[2]) / dt
        fig.peak_dials_per_s = max(fig.peak_dials_per_s, round(dps, 1))
        fig.peak_events_per_s = max(fig.peak_events_per_s, round(eps))
        in_flight = len(dialer.calls)
        rss = _rss_mb()
        state["rss_peak"] = max(state["rss_peak"], rss)
        if in_flight > state["peak"]:
            state["peak"], state["rss_at_peak"] = in_flight, rss
        recent = list(lags)[-(len(lags) - last[3]):] if len(lags) > last[3] else []
        lag = _pcts(recent)
        dec = list(dialer.decision_times)[-max(1, int(dps * dt)):] if dialer.decision_times else []
        dec_ms = _pcts([d * 1000 for d in dec])
        fig.max_loop_lag_ms = max(fig.max_loop_lag_ms, round(dialer.loop_lag * 1000, 1))
        last = (now, dials, events, len(lags))
        if out is not None:
            print(f"[{now - state.get('dial_t0', now):6.1f}s] calls {in_flight:6d}  originates/s {dps:7.1f}  "
                  f"events/s {eps:8.0f}  lag ms p50 {lag.get('p50', 0):7.1f} p99 {lag.get('p99', 0):7.1f}  "
                  f"decision ms p50 {dec_ms.get('p50', 0):6.2f} p99 {dec_ms.get('p99', 0):6.2f}  "
                  f"loop lag {dialer.loop_lag * 1000:6.0f} ms  held {dialer.counters.held}/{held()}  "
                  f"rss {rss:6.0f} MB  errors {dialer.counters.errors}", file=out, flush=True)


# -- report ---------------------------------------------------------------------------------------


def format_figures(fig: Figures) -> str:
    """The end-of-run report: what was asked, what was reached, and whether the counts match."""
    o = fig.options
    b = fig.baseline
    lines = [
        f"flood: {o['emulators']} emulator process(es), {o['agents']} agents, up to {o['concurrent']} calls at "
        f"{o['rate']:g} dials/s for {o['duration']:g} s, store {o['store']}, loop {o['loop']}, "
        f"{'full' if o['full_events'] else 'minimal'} event volume; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs",
    ]
    if b:
        lines.append(f"baseline (same run, real Asterisk 22 bytes, {b['bytes_per_frame']:g} B/frame): panoramisk "
                     f"bare parse {b['panoramisk_frames_per_s']:,.0f} frames/s; engine: every header parsed "
                     f"{b['engine_parsed_frames_per_s']:,.0f} frames/s "
                     f"({b['engine_parsed_frames_per_s'] / b['panoramisk_frames_per_s']:.2f}x), framed with "
                     f"events parsed on demand {b['engine_frames_per_s']:,.0f} frames/s "
                     f"({b['engine_frames_per_s'] / b['panoramisk_frames_per_s']:.2f}x); engine ingest "
                     f"(frame, filter, parse what matters, correlate, translate; {b['ingest_calls_tracked']:g} "
                     f"calls tracked to their end) {b['engine_ingest_frames_per_s']:,.0f} events/s "
                     f"({b['engine_ingest_frames_per_s'] / b['panoramisk_frames_per_s']:.2f}x)")
    ratio = ""
    if b:
        ratio = (f" = {fig.events_per_s / b['panoramisk_frames_per_s']:.2f}x panoramisk's bare parse "
                 f"(peak second {fig.peak_events_per_s / b['panoramisk_frames_per_s']:.2f}x)")
    lines += [
        f"calls: dials {fig.dials}, originated (PBX) {fig.originated}, ended {fig.ended}, result rows "
        f"{fig.result_rows}; connected {fig.connected}, abandoned {fig.abandoned}; peak concurrent "
        f"{fig.peak_concurrent}",
        f"dials/s: {fig.dials_per_s:g} average over the dialling window, peak second {fig.peak_dials_per_s:g}",
        f"AMI events: sent {fig.events_sent}, read {fig.events_read}, correlated {fig.events_correlated}; "
        f"{fig.events_per_s:,.0f}/s over {fig.dial_s:g} s (peak second {fig.peak_events_per_s:,.0f}/s){ratio}; "
        f"{fig.events_per_dial:g} events per dial",
        f"event-to-state lag ms: {_fmt_pcts(fig.lag_ms)}",
        f"per-dial decision ms: {_fmt_pcts(fig.decision_ms)}" + (
            "; dials reserved ahead: {taken} taken, {missed} not in the hopper, {given_back} given back".format(
                **fig.reserve_ahead) if fig.reserve_ahead else "; no dials reserved ahead"),
        f"memory: RSS {fig.rss_base_mb:g} MB after login, peak {fig.rss_peak_mb:g} MB; {fig.kb_per_call:g} KiB per "
        f"concurrent call",
        f"backpressure: dialling held {fig.held} times on loop lag (worst {fig.max_loop_lag_ms:g} ms), "
        f"{fig.held_ingest} times on ingest lag; full GC pauses ms: {_fmt_pcts(fig.gc2_ms)}; errors "
        f"{fig.errors}, interrupted {fig.interrupted}, ended unknown {fig.unknown_ends}",
        f"CPU: engine process {fig.cpu_s:g} s, emulators {', '.join(f'{c:g}' for c in fig.emulator_cpu_s)} s, "
        f"in {fig.wall_s:g} s wall (the baseline included)",
        "counts match on both sides: " + ("yes" if fig.ok else "NO: " + "; ".join(fig.problems)),
    ]
    lines += [f"engine issue: {issue}" for issue in fig.engine_issues]
    return "\n".join(lines)


def _fmt_pcts(p: Mapping[str, float]) -> str:
    if not p:
        return "-"
    return f"p50 {p['p50']:g}, p99 {p['p99']:g}, max {p['max']:g} (n {p['n']})"


DESCRIPTION = ("Flood one engine process with calls from AMI emulator processes over TCP and report rates, "
               "lag, decision time, memory and whether every event and call is accounted for on both sides.")


def build_parser(prog: str = "dialer flood") -> argparse.ArgumentParser:
    """The flood's own parser (``python -m simulations.flood``)."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flood's options, on any parser (``dialer flood`` adds them to its subcommand)."""
    d = FloodOptions()
    p.add_argument("--emulators", type=int, default=d.emulators, help="emulator processes (one AMI link each)")
    p.add_argument("--agents", type=int, default=d.agents)
    p.add_argument("--concurrent", type=int, default=d.concurrent, help="most calls in flight")
    p.add_argument("--rate", type=float, default=d.rate, help="dials per second")
    p.add_argument("--duration", type=float, default=d.duration, help="seconds of dialling (then calls drain)")
    p.add_argument("--answer-rate", type=float, default=d.answer_rate, help="share of calls answered (rest busy)")
    p.add_argument("--ring", type=float, default=d.ring, help="seconds a customer rings before answering")
    p.add_argument("--talk", type=float, default=d.talk, help="seconds of conversation once bridged")
    p.add_argument("--wrap", type=float, default=d.wrap, help="agents' wrap-up seconds")
    p.add_argument("--minimal-events", action="store_true",
                   help="only the events the engine reads (default: the full volume of a real Asterisk 22)")
    p.add_argument("--store", choices=("memory", "redis"), default=d.store)
    p.add_argument("--redis-url", default=None, help="default: a redis-server started for the run")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default=d.loop, help="the engine's event loop")
    p.add_argument("--emulator-uvloop", action="store_true", help="run the emulators on uvloop")
    p.add_argument("--no-ingest-hold", action="store_true",
                   help="let the flood's pacer make up the dials skipped while events were late (the Dialer "
                   "still holds while they are)")
    p.add_argument("--gc-freeze", action="store_true",
                   help="gc.freeze() after set-up: full collections then skip the long-lived objects (the "
                   "Dialer now freezes what is alive at the start of every run itself; this freezes a little earlier)")
    p.add_argument("--reserve-ahead", choices=("on", "off"), default=None,
                   help="the Dialer's hopper of dials reserved ahead (default: on with Redis, off in memory)")
    p.add_argument("--profile", metavar="FILE", help="cProfile the engine process into FILE (slows it down)")
    p.add_argument("--no-baseline", action="store_true", help="skip the parse-rate baseline")
    p.add_argument("--quiet", action="store_true", help="no live lines")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def options_from_args(args: argparse.Namespace) -> FloodOptions:
    """Parsed arguments to options."""
    return FloodOptions(emulators=args.emulators, agents=args.agents, concurrent=args.concurrent, rate=args.rate,
                        duration=args.duration, answer_rate=args.answer_rate, ring=args.ring, talk=args.talk,
                        wrap=args.wrap, full_events=not args.minimal_events, store=args.store,
                        redis_url=args.redis_url, loop=args.loop, emulator_uvloop=args.emulator_uvloop,
                        live=not args.quiet, profile=args.profile, baseline=not args.no_baseline,
                        ingest_hold=not args.no_ingest_hold, gc_freeze=args.gc_freeze,
                        reserve_ahead=None if args.reserve_ahead is None else args.reserve_ahead == "on")


def run(opts: FloodOptions) -> Figures:
    """Run a flood on a fresh event loop (uvloop when asked)."""
    factory = None
    if opts.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_flood(opts))


def emulator_main(argv: Sequence[str]) -> int:
    """``dialer pbx-emulator`` with its logs at warning level: unconfigured, structlog prints a debug
    line per dial, which would cost the PBX side of a flood more than the calls themselves (and
    ``dialer --log-level warning pbx-emulator --port 0`` does not parse: argparse's REMAINDER refuses
    an option first)."""
    from engine import logs
    from simulations import ami_emulator

    logs.configure("warning")
    return int(ami_emulator.main(argv) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one flood and print its figures; exit 1 if any count differs between the two sides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        return emulator_main(argv[1:])
    from engine import logs

    logs.configure("warning")
    return run_from_args(build_parser().parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the flood the parsed arguments describe, print its figures; 1 if any count differs."""
    try:
        fig = run(options_from_args(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("flood interrupted (emulators and redis-server stopped)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(fig), default=str))
    else:
        print(format_figures(fig))
    return 0 if fig.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The asterisk backend over real TCP: against captured transcripts replayed byte for byte, and against
the emulator; the same scenarios must give the same call events. Then the faults a PBX link meets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from amitest import SECRET, SECRET_ENV, ami_secret, until  # noqa: F401  (ami_secret: autouse fixture)

from engine.calls import advance, final_outcome
from engine.models import AnswerKind, CallAttempt, CallState, Lead, Outcome
from engine.pbx.ami.protocol import AmiProtocol, Message, drain, format_banner
from engine.pbx.asterisk import AmiServer, AsteriskBackend, AsteriskConfig
from engine.pbx.base import Abandoned, Answered, CallEvent, Connected, Ended, PbxAuthError, PbxError, Ringing
from simulations.ami_emulator import AmiEmulator, CallPlan

FIX = Path(__file__).parent / "fixtures" / "ami"
H, M, U = AnswerKind.HUMAN, AnswerKind.MACHINE, AnswerKind.UNKNOWN




TRANSPORT = {"name": "native"}


@pytest.fixture(autouse=True, params=["native", "panoramisk"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every test here runs over both AMI transports (``[asterisk] ami_transport``): same contract."""
    TRANSPORT["name"] = request.param
    return str(request.param)


class Sink:
    """Collects call events; waits are event-driven and always bounded."""

    def __init__(self) -> None:
        self.events: list[CallEvent] = []
        self._changed = asyncio.Event()
        self.on: Callable[[CallEvent], None] | None = None

    def __call__(self, ev: CallEvent) -> None:
        self.events.append(ev)
        self._changed.set()
        if self.on is not None:
            self.on(ev)

    def of(self, call_id: str) -> list[CallEvent]:
        return [e for e in self.events if e.call_id == call_id]

    def ended(self, call_id: str) -> bool:
        return any(isinstance(e, Ended) for e in self.of(call_id))

    async def wait(self, pred: Callable[[], bool], limit: float = 5.0) -> None:
        async with asyncio.timeout(limit):
            while not pred():
                self._changed.clear()
                await self._changed.wait()



def config(*ports: int, **kw: object) -> AsteriskConfig:
    base: dict[str, object] = dict(
        servers=tuple(AmiServer(port=p, secret_env=SECRET_ENV) for p in ports),
        trunk="Local/{digits}@dialer-outbound/n", action_timeout=1.0, ping_interval=30.0,
        reconnect_delay=0.02, reconnect_max=0.2, connect_timeout=1.0, transport=TRANSPORT["name"])
    base.update(kw)
    return AsteriskConfig(**base)  # type: ignore[arg-type]


def attempt(call_id: str, phone: str) -> CallAttempt:
    return CallAttempt(call_id, Lead(f"L{call_id}", "camp", phone), "camp", 1)


# -- (a) a captured transcript replayed over TCP ------------------------------------------------


class ReplayServer:
    """Serves one captured transcript: banner and login frames as captured; on our Originate, every frame
    Asterisk sent after its acknowledgement, with the captured ActionID and channel uniqueids rewritten to
    ours (the bytes are otherwise untouched)."""

    def __init__(self, name: str) -> None:
        raw = (FIX / f"{name}.txt").read_bytes()
        self.banner, rest = raw.split(b"\r\n", 1)
        self.frames = [c + b"\r\n\r\n" for c in rest.split(b"\r\n\r\n") if c]
        parsed = [drain(_server_parse(f, client=True))[0] for f in self.frames]
        self.msgs: list[Message] = [m for m in parsed if isinstance(m, Message)]
        sent = _server_parse((FIX / f"{name}.sent.txt").read_bytes())
        actions = [m for m in drain(sent) if isinstance(m, Message)]
        self.login_id = actions[0].action_id or ""
        orig = next((a for a in actions if a.action == "Originate"), None)
        self.orig_id = orig.action_id if orig else None
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = AmiProtocol("server")
        writer.write(self.banner + b"\r\n")
        try:
            while data := await reader.read(4096):
                proto.receive_data(data)
                for m in drain(proto):
                    if isinstance(m, Message) and not self._answer(m, writer):
                        writer.close()
                        return
        finally:
            writer.close()

    def _answer(self, m: Message, writer: asyncio.StreamWriter) -> bool:
        aid = (m.action_id or "").encode()
        if m.action == "Login":
            for f, msg in zip(self.frames, self.msgs, strict=True):
                if msg.response is not None and msg.action_id != self.login_id:
                    break
                writer.write(f.replace(b"ActionID: " + self.login_id.encode() + b"\r\n", b"ActionID: " + aid + b"\r\n"))
                if msg.response == "Error":
                    return False  # Asterisk closes the socket right after a refused login
            return True
        if m.action == "Originate" and self.orig_id:
            idx = next(i for i, x in enumerate(self.msgs) if x.action_id == self.orig_id and x.response)
            tail = [f for f, x in zip(self.frames[idx:], self.msgs[idx:], strict=True) if x.response != "Goodbye"]
            news = [x for x in self.msgs if x.event == "Newchannel"]
            subs = {self.orig_id: m.action_id or ""}
            for half, ours in ((";1", m.get("ChannelId")), (";2", m.get("OtherChannelId"))):
                theirs = next(x.get("Uniqueid") for x in news if (x.get("Channel") or "").endswith(half))
                if theirs and ours:
                    subs[theirs] = ours
            data = b"".join(tail)
            for old, new in subs.items():
                data = re.sub(rb"(: )" + re.escape(old.encode()) + rb"\r\n", rb"\g<1>" + new.encode() + rb"\r\n",
                              data)
            writer.write(data)
            return True
        writer.write(b"Response: Success\r\nActionID: " + aid + b"\r\n\r\n")
        return True


def _server_parse(raw: bytes, client: bool = False) -> AmiProtocol:
    p = AmiProtocol("client" if client else "server")
    if client:
        p.receive_data(format_banner())
    p.receive_data(raw)
    if client:
        p.next_event()  # the banner we prepended
    return p


# -- scenarios shared by replay and emulator ------------------------------------------------------


def outcome(events: list[CallEvent]) -> Outcome:
    """The outcome the engine's own call state machine draws from these events."""
    call = attempt("c1", "+15551000")
    advance(call, CallState.ORIGINATING, 0.0)
    states = {Ringing: CallState.RINGING, Connected: CallState.CONNECTED, Abandoned: CallState.ABANDONED}
    for ev in events:
        if isinstance(ev, Answered):
            call.answer_kind = ev.kind
            advance(call, CallState.ANSWERED_MACHINE if ev.kind == M else CallState.ANSWERED_HUMAN, 0.0)
        elif isinstance(ev, Ended):
            last = call.state
            advance(call, CallState.ENDED, 0.0)
            return final_outcome(call, last, ev.cause, ev.reason)
        else:
            advance(call, states[type(ev)], 0.0)
    raise AssertionError("no Ended")


OUTCOMES = {"answered": Outcome.CONNECTED, "answered_channelid": Outcome.CONNECTED, "busy": Outcome.BUSY,
            "busy_channelid": Outcome.BUSY, "congestion": Outcome.CONGESTION, "noanswer": Outcome.NO_ANSWER,
            "noanswer_timeout": Outcome.NO_ANSWER, "failed": Outcome.FAILED,
            "amd_human": Outcome.CUSTOMER_HANGUP, "amd_machine": Outcome.MACHINE}

SCENARIOS = {
    # transcript: (phone for the emulator, amd, trunk override, expected events)
    "answered": ("+15551000", False, None,
                 [Ringing("c1"), Answered("c1", U), Connected("c1", "100"), Ended("c1", 16, "normal")]),
    "answered_channelid": ("+15551010", False, None,
                           [Ringing("c1"), Answered("c1", U), Connected("c1", "100"), Ended("c1", 16, "normal")]),
    "busy": ("+15551008", False, None, [Ended("c1", 17, "busy")]),
    "busy_channelid": ("+15551018", False, None, [Ended("c1", 17, "busy")]),
    "congestion": ("+15551009", False, None, [Ended("c1", 34, "congestion")]),
    "noanswer": ("+15551006", False, None, [Ringing("c1"), Ended("c1", 19, "no_answer")]),
    "noanswer_timeout": ("+15551007", False, None, [Ringing("c1"), Ended("c1", 19, "no_answer")]),
    "failed": ("+15551001", False, "Local/{digits}@nosuchcontext/n", [Ended("c1", 0, "failed")]),
    "amd_human": ("+15551000", True, None, [Ringing("c1"), Answered("c1", H), Ended("c1", 16, "normal")]),
    "amd_machine": ("+15551004", True, None, [Ringing("c1"), Answered("c1", M), Ended("c1", 16, "normal")]),
}


async def run_scenario(port: int, phone: str, amd: bool, trunk: str | None, *, agent: bool) -> list[CallEvent]:
    kw: dict[str, object] = {"amd": amd}
    if trunk:
        kw["trunk"] = trunk
    be = AsteriskBackend(config(port, **kw))
    sink = Sink()
    await be.start(sink)
    try:
        if agent:
            await be.agent_login("100")
            sink.on = lambda ev: asyncio.ensure_future(be.connect("c1", "100")) if (
                isinstance(ev, Answered) and ev.kind != M) else None
        await be.originate(attempt("c1", phone), ring_timeout=30.0, caller_id="Dialer <5550000>")
        await sink.wait(lambda: sink.ended("c1"))
        assert be.in_flight() == []
        return sink.events
    finally:
        await be.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_replayed_transcript_and_emulator_agree(name: str) -> None:
    phone, amd, trunk, expected = SCENARIOS[name]
    replay = ReplayServer(name)
    port = await replay.start()
    try:
        replayed = await run_scenario(port, phone, amd, trunk, agent=False)
    finally:
        await replay.close()
    assert replayed == expected

    emu = AmiEmulator(secret=SECRET, time_scale=0.01)
    port = await emu.start()
    try:
        emulated = await run_scenario(port, phone, amd, trunk, agent="answered" in name)
    finally:
        await emu.close()
    assert emulated == expected
    assert outcome(replayed) is outcome(emulated) is OUTCOMES[name]
    (orig,) = [o for o in emu.originates if o.get("Context") == "dialer-customer"]
    assert orig["Async"] == "true" and orig["ChannelId"] == "c1" and orig["OtherChannelId"] == "c1-2"
    assert int(orig["Timeout"]) >= 15000
    assert orig["Variable(__DIALER_CALL)"] == "c1" and orig["Variable(__DIALER_CAMPAIGN)"] == "camp"


async def test_replayed_bad_password_raises_auth_error() -> None:
    replay = ReplayServer("bad_password")
    port = await replay.start()
    try:
        be = AsteriskBackend(config(port))
        async with asyncio.timeout(2):
            with pytest.raises(PbxAuthError):
                await be.start(Sink())
    finally:
        await replay.close()


# -- emulator fidelity: the same conversation as the captured one -----------------------------------

def _summary(raw: bytes) -> list[tuple[str | None, ...]]:
    p = AmiProtocol()
    p.receive_data(raw)
    return [(m.response or m.event, m.action_id, m.get("Message"), m.get("Reason"))
            for m in drain(p) if isinstance(m, Message)]


@pytest.mark.parametrize("name", ["login_and_ping", "bad_password", "bad_username", "action_before_login",
                                  "malformed"])
async def test_emulator_answers_like_asterisk(name: str) -> None:
    emu = AmiEmulator(secret=SECRET)
    port = await emu.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((FIX / f"{name}.sent.txt").read_bytes())
        got = b""
        async with asyncio.timeout(3):
            while data := await reader.read(65536):
                got += data
        writer.close()
    finally:
        await emu.close()
    assert got.startswith(b"Asterisk Call Manager/11.0.0\r\n")
    assert _summary(got) == _summary((FIX / f"{name}.txt").read_bytes())


# -- faults ---------------------------------------------------------------------------------------


@pytest.fixture
async def emu() -> AmiEmulator:
    e = AmiEmulator(secret=SECRET, time_scale=1.0, plan=lambda number, variables: CallPlan(
        "noanswer" if number.endswith("6") else "answer", answer_after=60.0, patience=60.0))
    await e.start()
    yield e  # type: ignore[misc]
    await e.close()


async def test_wrong_password_raises_quickly_and_does_not_retry(emu: AmiEmulator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "WRONGpass")
    be = AsteriskBackend(config(emu.port))
    async with asyncio.timeout(2):
        with pytest.raises(PbxAuthError):
            await be.start(Sink())
    assert emu.logins == 0 and emu.connections == 1
    assert not be.connected and be._runner is None  # nothing left that could reconnect
    with pytest.raises(PbxError):
        await be.originate(attempt("c1", "+15551000"), ring_timeout=30, caller_id="D <1>")


async def test_missing_secret_is_an_auth_error(emu: AmiEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(PbxAuthError):
        await AsteriskBackend(config(emu.port)).start(Sink())
    assert emu.connections == 0


async def test_dropped_link_with_originates_in_flight(emu: AmiEmulator) -> None:
    """The link drops while calls ring and one Originate awaits its acknowledgement: nothing is dialled
    twice, live calls carry on, and a call that ended during the outage ends as unknown."""
    be = AsteriskBackend(config(emu.port))
    sink = Sink()
    await be.start(sink)
    try:
        for cid in ("a", "b"):
            await be.originate(attempt(cid, "+1555100" + cid), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: all(sink.of(c) == [Ringing(c)] for c in ("a", "b")))
        emu.drop_on_originate = 1
        await be.originate(attempt("c", "+15551002"), ring_timeout=30, caller_id="D <1>")  # ack lost: no raise
        await until(lambda: not be.connected)
        assert emu.remote_hangup("b-2", 16)  # "b" ends while we are away: its events are lost
        await until(lambda: be.connected and emu.logins == 2)
        await sink.wait(lambda: sink.ended("b"))
        assert sink.of("b") == [Ringing("b"), Ended("b", 0, "unknown")]
        assert sorted(be.in_flight()) == ["a", "c"]  # still alive on the PBX: they carry on
        assert [o["ChannelId"] for o in emu.originates] == ["a", "b", "c"]  # never re-sent
        await be.hangup("a")
        await be.hangup("c")
        await sink.wait(lambda: sink.ended("a") and sink.ended("c"))
        assert sink.of("a") == [Ringing("a"), Ended("a", 16, "normal")]
        assert sink.of("c")[-1] == Ended("c", 16, "normal")
        assert len(emu.originates) == 3
    finally:
        await be.close()


async def test_silent_pbx_is_dropped_by_heartbeat_and_reconnected(emu: AmiEmulator) -> None:
    be = AsteriskBackend(config(emu.port, ping_interval=0.05, ping_timeout=0.2, action_timeout=0.3))
    sink = Sink()
    await be.start(sink)
    try:
        await be.originate(attempt("a", "+15551000"), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: sink.of("a") == [Ringing("a")])
        emu.set_silent(True)
        await until(lambda: not be.connected)
        emu.set_silent(False)
        await until(lambda: be.connected and emu.logins >= 2)
        assert be.in_flight() == ["a"]  # reconciled: the call is still on the PBX
        await be.hangup("a")
        await sink.wait(lambda: sink.ended("a"))
        assert sink.of("a") == [Ringing("a"), Ended("a", 16, "normal")]
    finally:
        await be.close()


async def test_restarted_pbx_ends_calls_as_unknown(emu: AmiEmulator) -> None:
    be = AsteriskBackend(config(emu.port))
    sink = Sink()
    await be.start(sink)
    try:
        for cid in ("a", "b", "c"):
            await be.originate(attempt(cid, "+15551000"), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: all(sink.of(c) == [Ringing(c)] for c in "abc"))
        await emu.restart()
        await sink.wait(lambda: all(sink.ended(c) for c in "abc"))
        assert [sink.of(c) for c in "abc"] == [[Ringing(c), Ended(c, 0, "unknown")] for c in "abc"]
        assert be.in_flight() == [] and len(emu.originates) == 3
        await be.originate(attempt("d", "+15551000"), ring_timeout=30, caller_id="D <1>")  # usable again
        await sink.wait(lambda: Ringing("d") in sink.events)
    finally:
        await be.close()


async def test_malformed_frames_are_ignored(emu: AmiEmulator) -> None:
    be = AsteriskBackend(config(emu.port))
    sink = Sink()
    await be.start(sink)
    try:
        await be.originate(attempt("a", "+15551000"), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: sink.of("a") == [Ringing("a")])
        emu.send_malformed()
        await be.hangup("a")
        await sink.wait(lambda: sink.ended("a"))
        assert sink.of("a") == [Ringing("a"), Ended("a", 16, "normal")]
        assert emu.logins == 1 and be.connected
    finally:
        await be.close()


async def test_refused_originate_raises_and_is_forgotten(emu: AmiEmulator) -> None:
    be = AsteriskBackend(config(emu.port, trunk="garbage"))
    await be.start(Sink())
    try:
        with pytest.raises(PbxError, match="Invalid channel"):
            await be.originate(attempt("a", "+15551000"), ring_timeout=30, caller_id="D <1>")
        assert be.in_flight() == []
        with pytest.raises(PbxError):
            await be.originate(attempt("b", "+15551000"), ring_timeout=30, caller_id="D\r\nAction: Hangup")
    finally:
        await be.close()


async def test_connect_abandon_and_agent_session_through_emulator() -> None:
    emu = AmiEmulator(secret=SECRET, time_scale=0.01)
    await emu.start()
    be = AsteriskBackend(config(emu.port, amd=True))
    sink = Sink()
    await be.start(sink)
    try:
        await be.agent_login("7")
        with pytest.raises(PbxError):
            await be.connect("nope", "7")
        for cid, phone in (("a", "+15551000"), ("b", "+15551003")):
            await be.originate(attempt(cid, phone), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: Answered("a", H) in sink.events and Answered("b", H) in sink.events)
        await be.connect("a", "7")
        await be.abandon("b")
        await sink.wait(lambda: sink.ended("a") and sink.ended("b"))
        assert sink.of("a") == [Ringing("a"), Answered("a", H), Connected("a", "7"), Ended("a", 16, "normal")]
        assert sink.of("b") == [Ringing("b"), Answered("b", H), Abandoned("b"), Ended("b", 16, "normal")]
        # The agent stayed parked between calls: the next connect is again one Bridge.
        await be.originate(attempt("c", "+15551000"), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: Answered("c", H) in sink.events)
        await be.connect("c", "7")
        await sink.wait(lambda: sink.ended("c"))
        assert Connected("c", "7") in sink.of("c")
        await be.agent_logout("7")
        await until(lambda: not any(c.startswith("PJSIP/7-") for c in emu.channels))
        await be.originate(attempt("d", "+15551000"), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: Answered("d", H) in sink.events)
        with pytest.raises(PbxError, match="no session"):
            await be.connect("d", "7")
        await be.hangup("d")
        await sink.wait(lambda: sink.ended("d"))
    finally:
        await be.close()
        await emu.close()


async def test_two_servers_spread_originates_and_route_by_call_id() -> None:
    emus = [AmiEmulator(secret=SECRET, plan=lambda n, v: CallPlan("answer", answer_after=60.0)) for _ in range(2)]
    ports = [await e.start() for e in emus]
    be = AsteriskBackend(config(*ports))
    sink = Sink()
    await be.start(sink)
    try:
        ids = [f"x{i}" for i in range(6)]
        for cid in ids:
            await be.originate(attempt(cid, "+15551000"), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: all(Ringing(c) in sink.events for c in ids))
        per = [sorted(o["ChannelId"] for o in e.originates) for e in emus]
        assert [len(p) for p in per] == [3, 3] and sorted(per[0] + per[1]) == ids
        for cid in ids:
            await be.hangup(cid)  # each goes to the server that holds the call
        await sink.wait(lambda: all(sink.ended(c) for c in ids))
        assert all(sink.of(c)[-1] == Ended(c, 16, "normal") for c in ids)
    finally:
        await be.close()
        for e in emus:
            await e.close()


async def test_a_thousand_concurrent_calls() -> None:
    """Every call ends exactly once with the outcome its number asks for, all through one AMI link."""
    emu = AmiEmulator(secret=SECRET, time_scale=0.02)
    await emu.start()
    be = AsteriskBackend(config(emu.port, action_timeout=5.0))
    sink = Sink()
    await be.start(sink)
    try:
        n = 1000
        phones = {f"k{i}": f"+1555{i:07d}" for i in range(n)}
        await asyncio.gather(*(be.originate(attempt(cid, p), ring_timeout=30, caller_id="D <1>")
                               for cid, p in phones.items()))
        ends: dict[str, Ended] = {}
        await sink.wait(lambda: len([e for e in sink.events if isinstance(e, Ended)]) >= n, limit=30)
        for e in sink.events:
            if isinstance(e, Ended):
                assert e.call_id not in ends
                ends[e.call_id] = e
        want = {"6": "no_answer", "7": "no_answer", "8": "busy", "9": "congestion"}
        assert all(ends[c].reason == want.get(p[-1], "normal") for c, p in phones.items())
        assert be.in_flight() == [] and emu.channels == [] and len(emu.originates) == n
    finally:
        await be.close()
        await emu.close()


def test_config_from_engine_settings() -> None:
    from engine.config import AsteriskSection, CampaignConfig

    cfg = AsteriskConfig.from_settings(AsteriskSection(customer_context="cust"))
    assert cfg.customer_context == "cust" and cfg.servers[0].secret_env == "DIALER_AMI_SECRET"
    campaign = CampaignConfig(campaign={"id": "c1", "backend": "asterisk"}, amd={"enabled": True})
    be = AsteriskBackend(campaign)
    assert be.cfg.amd is True and be.cfg.trunk == campaign.asterisk.trunk
    assert "secret" not in repr(be.cfg.servers[0]).replace("secret_env", "").replace("secret_file", "")


async def test_emulator_serve_entry_point() -> None:
    import socket

    from simulations.ami_emulator import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, username="dialer", secret=SECRET, stop=stop))
    try:
        be = AsteriskBackend(config(port))
        async with asyncio.timeout(5):
            while True:
                try:
                    await be.start(Sink())
                    break
                except PbxError:
                    await asyncio.sleep(0.01)  # the server task is still binding
        assert be.connected
        await be.close()
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task


async def test_emulator_cli_faults_drop_and_the_backend_recovers() -> None:
    """serve() with --drop-every style faults: the backend keeps reconnecting and calls keep flowing."""
    import socket

    from simulations.ami_emulator import Faults, serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, username="dialer", secret=SECRET, time_scale=0.01,
                                     faults=Faults(drop_every=0.1, malformed_every=0.03), stop=stop))
    be = AsteriskBackend(config(port))
    sink = Sink()
    try:
        async with asyncio.timeout(5):
            while True:
                try:
                    await be.start(sink)
                    break
                except PbxError:
                    await asyncio.sleep(0.01)  # the server task is still binding
        done = 0
        for i in range(5):
            try:
                await be.originate(attempt(f"f{i}", "+15551008"), ring_timeout=30, caller_id="D <1>")
            except PbxError:
                await until(lambda: be.connected)  # refused while reconnecting: never reached the PBX
                continue
            await sink.wait(lambda: sink.ended(f"f{i}"))  # noqa: B023
            done += 1
        assert done >= 1
        assert all(e.reason in ("busy", "unknown") for e in sink.events if isinstance(e, Ended))
    finally:
        await be.close()
        stop.set()
        async with asyncio.timeout(5):
            await task


async def test_agent_sessions_lost_in_a_restart_are_called_back_but_a_hung_up_phone_is_not() -> None:
    emu = AmiEmulator(secret=SECRET, time_scale=0.01)
    await emu.start()
    be = AsteriskBackend(config(emu.port))
    sink = Sink()
    await be.start(sink)
    try:
        for agent in ("7", "8"):
            await be.agent_login(agent)
        await emu.restart()  # every channel forgotten, agent sessions included
        await until(lambda: sorted(c.split("-")[0] for c in emu.channels) == ["PJSIP/7", "PJSIP/8"])
        await be.originate(attempt("a", "+15551000"), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: Answered("a", U) in sink.events)
        await be.connect("a", "7")  # the called-back session takes calls again
        await sink.wait(lambda: Connected("a", "7") in sink.events)
        (agent8,) = [c for c in emu.channels if c.startswith("PJSIP/8-")]
        assert emu.remote_hangup(agent8, 16)  # the agent hangs up the phone: that is leaving
        await be.originate(attempt("b", "+15551000"), ring_timeout=30, caller_id="D <1>")
        await sink.wait(lambda: Answered("b", U) in sink.events)
        with pytest.raises(PbxError, match="no session"):
            await be.connect("b", "8")
        assert not any(c.startswith("PJSIP/8-") for c in emu.channels)
        await be.agent_logout("7")
        await until(lambda: not any(c.startswith("PJSIP/7-") for c in emu.channels))
    finally:
        await be.close()
        await emu.close()

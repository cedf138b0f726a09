"""The two AMI transports (``[asterisk] ami_transport``) against the emulator over real TCP: each pitfall
measured in panoramisk 1.4 (issue 3) is shown neutralised, on both, with the same assertions.

panoramisk's ``Manager`` re-sends unanswered actions after a reconnect, keeps reconnecting after a refused
login, never checks its Ping reply, dies when a callback raises, and raises in its read loop on an Originate
without ``Async``. The backend uses only panoramisk's ``AMIProtocol`` (framing and ``Message``) with its own
routing; these tests hold it to that."""

from __future__ import annotations

import asyncio

import pytest
from amitest import SECRET, SECRET_ENV, ami_secret, until  # noqa: F401  (ami_secret: autouse fixture)

from engine.config import CampaignConfig, ConfigError, campaign_from_dict
from engine.models import CallAttempt, Lead
from engine.pbx.asterisk import AmiServer, AsteriskBackend, AsteriskConfig, _PanoramiskLink
from engine.pbx.base import CallEvent, Ended, PbxAuthError, Ringing
from simulations.ami_emulator import AmiEmulator, CallPlan

TRANSPORTS = ["native", "panoramisk"]




@pytest.fixture
async def emu() -> AmiEmulator:
    e = AmiEmulator(secret=SECRET, plan=lambda number, variables: CallPlan("answer", answer_after=60.0,
                                                                           patience=60.0))
    await e.start()
    yield e  # type: ignore[misc]
    await e.close()


def config(port: int, transport: str, **kw: object) -> AsteriskConfig:
    base: dict[str, object] = dict(
        servers=(AmiServer(port=port, secret_env=SECRET_ENV),), trunk="Local/{digits}@dialer-outbound/n",
        action_timeout=1.0, ping_interval=30.0, reconnect_delay=0.02, reconnect_max=0.2, connect_timeout=1.0,
        transport=transport)
    base.update(kw)
    return AsteriskConfig(**base)  # type: ignore[arg-type]


def attempt(call_id: str, phone: str = "+15551000") -> CallAttempt:
    return CallAttempt(call_id, Lead(f"L{call_id}", "camp", phone), "camp", 1)



class Sink:
    def __init__(self, raise_after: bool = False) -> None:
        self.events: list[CallEvent] = []
        self.raise_after = raise_after

    def __call__(self, ev: CallEvent) -> None:
        self.events.append(ev)
        if self.raise_after:
            raise RuntimeError("a buggy sink")

    def ended(self, call_id: str) -> bool:
        return any(isinstance(e, Ended) and e.call_id == call_id for e in self.events)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_lost_acknowledgement_is_never_re_sent_after_the_reconnect(emu: AmiEmulator, transport: str) -> None:
    """The emulator sends ``FullyBooted`` on every login, the moment panoramisk's Manager replays its
    unanswered actions: here the Originate whose acknowledgement was lost reaches the PBX once."""
    be = AsteriskBackend(config(emu.port, transport))
    sink = Sink()
    await be.start(sink)
    try:
        emu.drop_on_originate = 1
        await be.originate(attempt("a"), ring_timeout=30, caller_id="D <1>")  # returns: left to reconciliation
        await until(lambda: be.connected and emu.logins == 2)
        await be.originate(attempt("b"), ring_timeout=30, caller_id="D <1>")
        await until(lambda: Ringing("b") in sink.events)
        assert [o["ChannelId"] for o in emu.originates] == ["a", "b"]
        assert sorted(be.in_flight()) == ["a", "b"]  # "a" was queued by the PBX and is reconciled, not redialled
    finally:
        await be.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_login_raises_once_and_nothing_reconnects(emu: AmiEmulator, transport: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "wrong")
    be = AsteriskBackend(config(emu.port, transport))
    with pytest.raises(PbxAuthError, match="Authentication failed"):
        await be.start(Sink())
    assert be._runner is None  # no supervisor task exists that could reconnect ...
    await asyncio.sleep(0.1)  # ... and no timer either: five reconnect delays later, still one connection
    assert emu.connections == 1 and emu.logins == 0 and not be.connected


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_ping_drops_the_connection_and_logs_in_again(emu: AmiEmulator, transport: str) -> None:
    be = AsteriskBackend(config(emu.port, transport, ping_interval=0.05))
    sink = Sink()
    await be.start(sink)
    try:
        await be.originate(attempt("a"), ring_timeout=30, caller_id="D <1>")
        await until(lambda: Ringing("a") in sink.events)
        emu.ping_refused = True
        await until(lambda: emu.connections >= 2)
        emu.ping_refused = False
        await until(lambda: be.connected and emu.logins >= 2)
        assert be.in_flight() == ["a"]  # reconciled: still on the PBX
        await be.hangup("a")
        await until(lambda: sink.ended("a"))
        assert len(emu.originates) == 1
    finally:
        await be.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_raising_handlers_do_not_cost_the_connection(emu: AmiEmulator, transport: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's sink raises on every event, and the correlator raises on one event: calls still progress
    and end, on the first connection."""
    be = AsteriskBackend(config(emu.port, transport))
    sink = Sink(raise_after=True)
    await be.start(sink)
    try:
        corr = be._links[0].correlator
        real_feed = corr.feed
        broken = {"left": 1}

        def feed_once_broken(msg: object) -> list[CallEvent]:
            if broken["left"] and getattr(msg, "get", lambda _k: None)("Event") == "Newchannel":
                broken["left"] -= 1
                raise KeyError("a correlator bug")
            return real_feed(msg)  # type: ignore[arg-type]

        monkeypatch.setattr(corr, "feed", feed_once_broken)
        for cid in ("a", "b"):
            await be.originate(attempt(cid), ring_timeout=30, caller_id="D <1>")
        await until(lambda: Ringing("a") in sink.events and Ringing("b") in sink.events)
        for cid in ("a", "b"):
            await be.hangup(cid)
        await until(lambda: sink.ended("a") and sink.ended("b"))
        assert broken["left"] == 0
        assert emu.connections == 1 and emu.logins == 1 and be.connected
    finally:
        await be.close()


async def test_panoramisk_transport_survives_an_originate_without_async(emu: AmiEmulator) -> None:
    """panoramisk's own action registry raises ``KeyError('async')`` in its read loop on this reply; ours
    resolves the action like any other and the connection lives on."""
    be = AsteriskBackend(config(emu.port, "panoramisk"))
    await be.start(Sink())
    try:
        link = be._links[0]
        assert isinstance(link, _PanoramiskLink)
        reply = await link.action("Originate", {"Channel": "Bogus/x", "Context": "dialer-customer", "Exten": "s",
                                                "Priority": "1"})
        assert reply.response == "Error"
        pong = await link.action("Ping")
        assert pong.response == "Success" and emu.connections == 1 and be.connected
    finally:
        await be.close()


def test_the_transport_is_chosen_in_the_campaign_and_checked() -> None:
    cfg: CampaignConfig = campaign_from_dict({"campaign": {"id": "c", "backend": "asterisk"},
                                              "asterisk": {"ami_transport": "panoramisk"}})
    be = AsteriskBackend(cfg)
    assert be.cfg.transport == "panoramisk" and isinstance(be._links[0], _PanoramiskLink)
    assert AsteriskBackend(campaign_from_dict({"campaign": {"id": "c"}})).cfg.transport == "native"
    with pytest.raises(ConfigError, match=r"asterisk\.ami_transport"):
        campaign_from_dict({"campaign": {"id": "c"}, "asterisk": {"ami_transport": "starpy"}})
    with pytest.raises(ValueError, match="unknown AMI transport"):
        AsteriskConfig(transport="starpy")

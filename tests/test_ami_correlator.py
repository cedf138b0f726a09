"""Every captured Originate lifecycle through protocol + correlator: exact call events and outcome."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from engine.calls import advance, final_outcome
from engine.models import AnswerKind, CallAttempt, CallState, Lead, Outcome
from engine.pbx.ami.correlator import Correlator
from engine.pbx.ami.protocol import AmiProtocol, Message, drain
from engine.pbx.base import Abandoned, Answered, CallEvent, Connected, Ended, OptOut, Ringing

FIX = Path(__file__).parent / "fixtures" / "ami"
H, M, U = AnswerKind.HUMAN, AnswerKind.MACHINE, AnswerKind.UNKNOWN


def messages(name: str) -> list[Message]:
    p = AmiProtocol()
    raw = (FIX / f"{name}.txt").read_bytes()
    out: list[Message] = []
    for i in range(len(raw)):  # byte at a time, as the wire may deliver it
        p.receive_data(raw[i : i + 1])
        out += [m for m in drain(p) if isinstance(m, Message)]
    return out


def originates(name: str) -> list[Message]:
    p = AmiProtocol("server")
    p.receive_data((FIX / f"{name}.sent.txt").read_bytes())
    return [m for m in drain(p) if isinstance(m, Message) and m.action == "Originate"]


def registered(name: str, *, amd: bool = False) -> Correlator:
    c = Correlator()
    for o in originates(name):
        c.register("c1", action_id=o.action_id or "", channel=o.get("Channel") or "",
                   channel_id=o.get("ChannelId"), other_channel_id=o.get("OtherChannelId"), amd=amd)
    return c


def replay(name: str, *, amd: bool = False) -> tuple[list[CallEvent], Correlator]:
    c = registered(name, amd=amd)
    out: list[CallEvent] = []
    for m in messages(name):
        out += c.feed(m.headers)
    return out, c


def outcome(events: list[CallEvent]) -> Outcome:
    """Drive the engine's own call state machine with the events, as the dialer does."""
    call = CallAttempt("c1", Lead("l1", "k", "+15551000"), "k", 1)
    advance(call, CallState.ORIGINATING, 0.0)
    for ev in events:
        if isinstance(ev, Ringing):
            advance(call, CallState.RINGING, 0.0)
        elif isinstance(ev, Answered):
            call.answer_kind = ev.kind
            advance(call, CallState.ANSWERED_MACHINE if ev.kind == M else CallState.ANSWERED_HUMAN, 0.0)
        elif isinstance(ev, Connected):
            advance(call, CallState.CONNECTED, 0.0)
        elif isinstance(ev, Abandoned):
            advance(call, CallState.ABANDONED, 0.0)
        elif isinstance(ev, Ended):
            last = call.state
            advance(call, CallState.ENDED, 0.0)
            return final_outcome(call, last, ev.cause, ev.reason)
    raise AssertionError("no Ended")


CASES = [
    ("answered", False, [Ringing("c1"), Answered("c1", U), Connected("c1", "100"), Ended("c1", 16, "normal")],
     Outcome.CONNECTED),
    ("answered_channelid", False,
     [Ringing("c1"), Answered("c1", U), Connected("c1", "100"), Ended("c1", 16, "normal")], Outcome.CONNECTED),
    ("queue", False, [Ringing("c1"), Answered("c1", U), Connected("c1", "100"), Ended("c1", 16, "normal")],
     Outcome.CONNECTED),
    ("busy", False, [Ended("c1", 17, "busy")], Outcome.BUSY),
    ("busy_channelid", False, [Ended("c1", 17, "busy")], Outcome.BUSY),
    ("congestion", False, [Ended("c1", 34, "congestion")], Outcome.CONGESTION),
    ("noanswer", False, [Ringing("c1"), Ended("c1", 19, "no_answer")], Outcome.NO_ANSWER),
    ("noanswer_timeout", False, [Ringing("c1"), Ended("c1", 19, "no_answer")], Outcome.NO_ANSWER),
    ("failed", False, [Ended("c1", 0, "failed")], Outcome.FAILED),
    ("cancel", False, [Ringing("c1"), Ended("c1", 16, "normal")], Outcome.FAILED),
    ("amd_human", True, [Ringing("c1"), Answered("c1", H), Ended("c1", 16, "normal")], Outcome.CUSTOMER_HANGUP),
    ("amd_machine", True, [Ringing("c1"), Answered("c1", M), Ended("c1", 16, "normal")], Outcome.MACHINE),
]


@pytest.mark.parametrize(("name", "amd", "expected", "result"), CASES, ids=[c[0] for c in CASES])
def test_transcript_lifecycle(name: str, amd: bool, expected: list[CallEvent], result: Outcome) -> None:
    events, c = replay(name, amd=amd)
    assert events == expected
    assert outcome(events) is result
    assert c.in_flight() == []
    assert all(type(e.cause) is int for e in events if isinstance(e, Ended))


def test_amd_transcripts_without_amd_answer_unknown_at_pickup() -> None:
    events, _ = replay("amd_machine", amd=False)
    assert events == [Ringing("c1"), Answered("c1", U), Ended("c1", 16, "normal")]


def test_malformed_bad_technology_ends_from_originate_response_alone() -> None:
    c = Correlator()
    for o in originates("malformed"):
        c.register(o.action_id or "", action_id=o.action_id or "", channel=o.get("Channel") or "")
    events = [e for m in messages("malformed") for e in c.feed(m.headers)]
    assert events == [Ended("m-6-bad-tech", 0, "failed")]


def test_late_events_after_end_are_ignored() -> None:
    c = registered("busy_channelid")
    msgs = messages("busy_channelid")
    events = [e for m in msgs for e in c.feed(m.headers)]
    assert events == [Ended("c1", 17, "busy")]
    assert [e for m in msgs for e in c.feed(m.headers)] == []


def _key(m: Message) -> bool:
    return m.event in ("OriginateResponse", "Hangup")


@pytest.mark.parametrize(("name", "expected"), [
    ("busy_channelid", [Ended("c1", 17, "busy")]),
    ("failed", [Ended("c1", 0, "failed")]),
    ("noanswer_timeout", [Ringing("c1"), Ended("c1", 19, "no_answer")]),
    ("congestion", [Ended("c1", 34, "congestion")]),
    ("cancel", [Ringing("c1"), Ended("c1", 16, "normal")]),
])
def test_originate_response_position_never_matters(name: str, expected: list[CallEvent]) -> None:
    msgs = messages(name)
    keys = [m for m in msgs if _key(m)]
    rest = [m for m in msgs if not _key(m)]
    assert len(keys) == 3
    for perm in itertools.permutations(keys):
        c = registered(name)
        events = [e for m in [*rest, *perm] for e in c.feed(m.headers)]
        assert events == expected, [m.event for m in perm]


def test_busy_reason_without_causes_still_busy() -> None:
    """Hangups that carry cause 0 (a trunk that says nothing): the OriginateResponse Reason decides."""
    c = Correlator()
    c.register("c1", action_id="a1", channel="Local/5@x/n", channel_id="c1-a", other_channel_id="c1-b")
    feed = [
        {"Event": "Newchannel", "Channel": "Local/5@x-00000001;1", "Uniqueid": "c1-a"},
        {"Event": "Newchannel", "Channel": "Local/5@x-00000001;2", "Uniqueid": "c1-b"},
        {"Event": "Hangup", "Channel": "Local/5@x-00000001;2", "Uniqueid": "c1-b", "Cause": "0"},
        {"Event": "Hangup", "Channel": "Local/5@x-00000001;1", "Uniqueid": "c1-a", "Cause": "0"},
    ]
    assert [e for m in feed for e in c.feed(m)] == []
    assert c.feed({"Event": "OriginateResponse", "ActionID": "a1", "Response": "Failure", "Reason": "5",
                   "Uniqueid": "<unknown>"}) == [Ended("c1", 17, "busy")]


def _answered_up_to_bridge(c: Correlator, amd: bool = False) -> list[CallEvent]:
    c.register("c1", action_id="a1", channel="Local/5@x/n", channel_id="c1-a", other_channel_id="c1-b", amd=amd)
    feed = [
        {"Event": "Newchannel", "Channel": "Local/5@x-00000001;1", "Uniqueid": "c1-a"},
        {"Event": "Newchannel", "Channel": "Local/5@x-00000001;2", "Uniqueid": "c1-b"},
        {"Event": "Newstate", "Channel": "Local/5@x-00000001;1", "Uniqueid": "c1-a", "ChannelStateDesc": "Ringing"},
        {"Event": "Newstate", "Channel": "Local/5@x-00000001;2", "Uniqueid": "c1-b", "ChannelStateDesc": "Up"},
        {"Event": "Newstate", "Channel": "Local/5@x-00000001;1", "Uniqueid": "c1-a", "ChannelStateDesc": "Up"},
        {"Event": "OriginateResponse", "ActionID": "a1", "Response": "Success", "Reason": "4", "Uniqueid": "c1-a"},
    ]
    return [e for m in feed for e in c.feed(m)]


def test_connect_to_registered_agent_session_either_order() -> None:
    for order in (0, 1):
        c = Correlator(agent_channel_re=None)
        assert _answered_up_to_bridge(c) == [Ringing("c1"), Answered("c1", U)]
        c.register_agent("7", "agent-7-1")
        enters = [
            {"Event": "BridgeEnter", "BridgeUniqueid": "b1", "Uniqueid": "c1-a", "Channel": "Local/5@x-00000001;1"},
            {"Event": "BridgeEnter", "BridgeUniqueid": "b1", "Uniqueid": "agent-7-1", "Channel": "PJSIP/7-0001"},
        ]
        if order:
            enters.reverse()
        assert [e for m in enters for e in c.feed(m)] == [Connected("c1", "7")]
        hang = [{"Event": "Hangup", "Uniqueid": "c1-b", "Cause": "16"}, {"Event": "Hangup", "Uniqueid": "c1-a"}]
        assert [e for m in hang for e in c.feed(m)] == [Ended("c1", 16, "normal")]


def test_connect_to_the_agent_the_engine_asked_for() -> None:
    c = Correlator(agent_channel_re=None)
    _answered_up_to_bridge(c)
    c.expect_connect("c1", "ann")
    c.feed({"Event": "BridgeEnter", "BridgeUniqueid": "b", "Uniqueid": "x9", "Channel": "PJSIP/ann-1"})
    assert c.feed({"Event": "BridgeEnter", "BridgeUniqueid": "b", "Uniqueid": "c1-a"}) == [Connected("c1", "ann")]


def test_abandon_by_user_event_then_newexten_once() -> None:
    c = Correlator(abandon_context="dialer-abandon")
    _answered_up_to_bridge(c)
    ab = [
        {"Event": "Newexten", "Uniqueid": "c1-a", "Context": "dialer-abandon", "Application": "Playback"},
        {"Event": "UserEvent", "Uniqueid": "c1-a", "UserEvent": "DialerAbandon"},
        {"Event": "Newexten", "Uniqueid": "c1-b", "Context": "dialer-abandon"},
    ]
    assert [e for m in ab for e in c.feed(m)] == [Abandoned("c1")]


def test_opt_out_after_the_abandon_message_once_then_end() -> None:
    c = Correlator(abandon_context="dialer-abandon")
    _answered_up_to_bridge(c)
    feed = [
        {"Event": "UserEvent", "Uniqueid": "c1-a", "UserEvent": "DialerAbandon"},
        {"Event": "Newexten", "Uniqueid": "c1-a", "Context": "dialer-optout", "Application": "UserEvent"},
        {"Event": "UserEvent", "Uniqueid": "c1-b", "UserEvent": "DialerOptOut"},  # not our dialplan's leg
        {"Event": "UserEvent", "Uniqueid": "c1-a", "UserEvent": "DialerOptOut", "Call": "c1"},
        {"Event": "UserEvent", "Uniqueid": "c1-a", "UserEvent": "DialerOptOut", "Call": "c1"},
        {"Event": "Hangup", "Uniqueid": "c1-a", "Cause": "16"},
        {"Event": "Hangup", "Uniqueid": "c1-b", "Cause": "16"},
    ]
    assert [e for m in feed for e in c.feed(m)] == [Abandoned("c1"), OptOut("c1"), Ended("c1", 16, "normal")]


def test_opt_out_whose_abandon_was_missed_implies_it() -> None:
    """After a reconnect the abandon's events may be lost; the opt-out must still be reported, after it."""
    c = Correlator()
    _answered_up_to_bridge(c)
    assert c.feed({"Event": "UserEvent", "Uniqueid": "c1-a", "UserEvent": "DialerOptOut"}) == [
        Abandoned("c1"), OptOut("c1")]


def test_amd_verdict_once_from_varset_or_user_event() -> None:
    c = Correlator()
    assert _answered_up_to_bridge(c, amd=True) == [Ringing("c1")]
    assert c.feed({"Event": "UserEvent", "UserEvent": "AMDResult", "Uniqueid": "c1-a", "Status": "NOTSURE"}) == [
        Answered("c1", U)]
    assert c.feed({"Event": "VarSet", "Variable": "AMDSTATUS", "Value": "MACHINE", "Uniqueid": "c1-a"}) == []


def test_hangup_during_amd_is_a_live_answer() -> None:
    c = Correlator()
    _answered_up_to_bridge(c, amd=True)
    hang = [{"Event": "Hangup", "Uniqueid": "c1-b", "Cause": "16"}, {"Event": "Hangup", "Uniqueid": "c1-a"}]
    events = [e for m in hang for e in c.feed(m)]
    assert events == [Answered("c1", U), Ended("c1", 16, "normal")]


def test_reconcile_vanished_and_surviving_calls() -> None:
    c = Correlator()
    _answered_up_to_bridge(c)
    c.register("c2", action_id="a2", channel="Local/6@x/n", channel_id="c2-a", other_channel_id="c2-b")
    c.register("c3", action_id="a3", channel="Local/7@x/n", channel_id="c3-a", other_channel_id="c3-b")
    c.feed({"Event": "Newchannel", "Channel": "Local/7@x-00000003;1", "Uniqueid": "c3-a"})
    listing = [m.headers for m in messages("coreshowchannels") if m.event == "CoreShowChannel"]
    # c3 survived the outage, already answered while we were away.
    listing.append({"Event": "CoreShowChannel", "Uniqueid": "c3-a", "Channel": "Local/7@x-00000003;1",
                    "ChannelStateDesc": "Up", "Application": "Wait"})
    events = c.reconcile(listing)
    assert events == [Ended("c1", 0, "unknown"), Ended("c2", 0, "unknown"), Answered("c3", U)]
    assert c.in_flight() == ["c3"]
    assert c.customer_channel("c3") == "Local/7@x-00000003;1"


def test_vanish_and_forget() -> None:
    c = Correlator()
    c.register("c1", action_id="a1", channel="PJSIP/5@trunk", channel_id="c1-a")
    c.register("c2", action_id="a2", channel="PJSIP/6@trunk", channel_id="c2-a")
    assert c.customer_channel("c1") == "c1-a"
    c.forget("c2")
    assert c.vanish("c1") == [Ended("c1", 0, "unknown")]
    assert c.vanish("c1") == [] and c.in_flight() == []


def test_single_trunk_channel_call() -> None:
    c = Correlator()
    c.register("c1", action_id="a1", channel="PJSIP/5551000@trunk", channel_id="c1-a", other_channel_id="c1-b")
    feed = [
        {"Event": "Newchannel", "Channel": "PJSIP/trunk-00000001", "Uniqueid": "c1-a"},
        {"Event": "Newstate", "Channel": "PJSIP/trunk-00000001", "Uniqueid": "c1-a", "ChannelStateDesc": "Ringing"},
        {"Event": "Newstate", "Channel": "PJSIP/trunk-00000001", "Uniqueid": "c1-a", "ChannelStateDesc": "Up"},
        {"Event": "Hangup", "Channel": "PJSIP/trunk-00000001", "Uniqueid": "c1-a", "Cause": "16"},
    ]
    assert [e for m in feed for e in c.feed(m)] == [Ringing("c1"), Answered("c1", U), Ended("c1", 16, "normal")]


def test_interleaved_transcripts_keep_calls_apart() -> None:
    c = Correlator()
    for name, cid in (("answered_channelid", "A"), ("busy_channelid", "B")):
        (o,) = originates(name)
        c.register(cid, action_id=o.action_id or "", channel=o.get("Channel") or "",
                   channel_id=o.get("ChannelId"), other_channel_id=o.get("OtherChannelId"))
    a, b = messages("answered_channelid"), messages("busy_channelid")
    mixed = [m for pair in itertools.zip_longest(a, b) for m in pair if m is not None]
    events = [e for m in mixed for e in c.feed(m.headers)]
    assert [e for e in events if e.call_id == "A"] == [
        Ringing("A"), Answered("A", U), Connected("A", "100"), Ended("A", 16, "normal")]
    assert [e for e in events if e.call_id == "B"] == [Ended("B", 17, "busy")]

"""The sans-IO AMI framer against every captured Asterisk 22 transcript, split at every byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.pbx.ami.protocol import (
    NEED_DATA,
    AmiProtocol,
    Banner,
    Closed,
    Message,
    RemoteProtocolError,
    drain,
    format_action,
    format_frame,
)

FIX = Path(__file__).parent / "fixtures" / "ami"
RECEIVED = sorted(p for p in FIX.glob("*.txt") if not p.name.endswith(".sent.txt")
                  and p.name not in ("README.txt", "panoramisk_stream.txt"))
SENT = sorted(FIX.glob("*.sent.txt"))


def bytewise(raw: bytes, role: str = "client") -> list[object]:
    p, got = AmiProtocol(role), []  # type: ignore[arg-type]
    for i in range(len(raw)):
        p.receive_data(raw[i : i + 1])
        got += drain(p)
    return got


def whole(raw: bytes, role: str = "client") -> list[object]:
    p = AmiProtocol(role)  # type: ignore[arg-type]
    p.receive_data(raw)
    return drain(p)


@pytest.mark.parametrize("path", RECEIVED, ids=lambda p: p.stem)
def test_received_transcript_bytewise_equals_whole(path: Path) -> None:
    raw = path.read_bytes()
    got = bytewise(raw)
    assert got == whole(raw)
    assert got[0] == Banner("11.0.0")
    msgs = [m for m in got[1:] if isinstance(m, Message)]
    assert len(msgs) == len(got) - 1
    # Asterisk ends every frame with CRLF CRLF and sends no junk.
    assert len(msgs) == raw.count(b"\r\n\r\n")
    assert all(not m.junk and (m.event or m.response) for m in msgs)


def test_panoramisk_stream_frames() -> None:
    got = bytewise((FIX / "panoramisk_stream.txt").read_bytes())
    assert got[0] == Banner("11.0.0")
    assert sum(1 for m in got if isinstance(m, Message) and m.event == "OriginateResponse") >= 1


@pytest.mark.parametrize("path", SENT, ids=lambda p: p.stem)
def test_sent_transcript_parses_in_server_role(path: Path) -> None:
    raw = path.read_bytes()
    got = bytewise(raw, "server")
    assert got == whole(raw, "server")
    assert all(isinstance(m, Message) for m in got)
    assert got[0].action in ("Login", "Ping")  # type: ignore[union-attr]


def test_malformed_sent_frames() -> None:
    got = whole((FIX / "malformed.sent.txt").read_bytes(), "server")
    by_id = {m.action_id: m for m in got if isinstance(m, Message)}
    assert by_id["m-2"].action is None and by_id["m-2"].get("Foo") == "bar"
    junk = [m for m in got if isinstance(m, Message) and m.junk]
    assert junk == [Message((), ("this is not a header line",))]
    lf = by_id["m-4-lf-only"]
    assert lf.items == (("Action", "Ping"), ("ActionID", "m-4-lf-only"))


def test_login_and_ping_messages() -> None:
    got = whole((FIX / "login_and_ping.txt").read_bytes())
    login, booted, auth, pong, bye = got[1:]
    assert isinstance(login, Message) and login.response == "Success" and login.action_id == "login-ok-1"
    assert booted.event == "FullyBooted" and auth.event == "SuccessfulAuth"  # type: ignore[union-attr]
    assert pong.get("Ping") == "Pong" and bye.response == "Goodbye"  # type: ignore[union-attr]


def test_repeated_keys_and_variable_view() -> None:
    p = AmiProtocol("server")
    p.receive_data(b"Action: Originate\r\nVariable: A=1\r\nVariable: B=x=y\r\nChanVariable: DIALER_CALL=c1\r\n\r\n")
    (m,) = drain(p)
    assert isinstance(m, Message)
    assert m.get_all("Variable") == ["A=1", "B=x=y"]
    assert m.get("Variable") == "A=1"
    assert m.headers["Variable(B)"] == "x=y"
    assert m.headers["ChanVariable(DIALER_CALL)"] == "c1"


def test_mixed_line_ends_stray_blank_lines_and_junk() -> None:
    p = AmiProtocol()
    p.receive_data(b"Asterisk Call Manager/11.0.0\n\r\n\r\nEvent: A\nKey:\nnot a header\r\nX: y: z\r\n\n")
    assert drain(p) == [Banner("11.0.0"), Message((("Event", "A"), ("Key", ""), ("X", "y: z")), ("not a header",))]
    assert p.next_event() is NEED_DATA


def test_eof_reports_closed_once_and_drops_partial_frame() -> None:
    p = AmiProtocol()
    p.receive_data(b"Asterisk Call Manager/11.0.0\r\nResponse: Error\r\nMessage: Authentication failed\r\n")
    assert drain(p) == [Banner("11.0.0")]
    p.receive_data(b"")
    assert drain(p) == [Closed()]
    assert p.next_event() is NEED_DATA


def test_missing_banner_is_tolerated() -> None:
    p = AmiProtocol()
    p.receive_data(b"Event: X\r\n\r\n")
    assert drain(p) == [Message((("Event", "X"),))]


def test_endless_line_is_a_protocol_error() -> None:
    p = AmiProtocol()
    p.receive_data(b"Asterisk Call Manager/11.0.0\r\n")
    drain(p)
    p.receive_data(b"X: " + b"Y" * 1_100_000)
    with pytest.raises(RemoteProtocolError):
        p.next_event()


def test_format_action_round_trip() -> None:
    raw = format_action("Originate", "a-1", {"Channel": "Local/1@x/n", "Timeout": 30000,
                                              "Variable": ["__DIALER_CALL=c1", "__DIALER_LEAD=l1"]})
    assert raw.endswith(b"\r\n\r\n")
    (m,) = whole(raw, "server")
    assert isinstance(m, Message)
    assert m.items == (("Action", "Originate"), ("ActionID", "a-1"), ("Channel", "Local/1@x/n"),
                       ("Timeout", "30000"), ("Variable", "__DIALER_CALL=c1"), ("Variable", "__DIALER_LEAD=l1"))


@pytest.mark.parametrize("bad", ["x\r\nAction: Hangup", "x\nA: b"])
def test_header_injection_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        format_action("Originate", "a-1", {"CallerID": bad})
    with pytest.raises(ValueError):
        format_frame([("Event", bad)])

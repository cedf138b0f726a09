"""Sans-IO framing of the Asterisk Manager Interface (AMI).

AMI is line-oriented text: on connect the server sends one banner line
(``Asterisk Call Manager/11.0.0``), then both sides exchange frames of
``Key: Value`` lines ended by an empty line. Responses carry the ``ActionID``
of the action they answer; events arrive mixed with them.

This module only turns bytes into frames and frames into bytes, in the shape of
h11: :meth:`AmiProtocol.receive_data` buffers, :meth:`AmiProtocol.next_event`
returns a :class:`Banner`, a :class:`Message`, :data:`NEED_DATA` or, after EOF,
:class:`Closed`. There is no I/O, no clock and no asyncio here, so a captured
transcript replays through it split at any byte, and the same object serves the
backend (client role) and the emulator (server role).

Tolerance is deliberate: Asterisk accepts LF-only frames from clients, and a
proxy or a broken peer may send lines that are not headers. Such lines are
kept aside in :attr:`Message.junk` instead of failing the connection, because a
dialer that drops its AMI link on one odd line would lose track of every call
in flight. Only input that cannot be framed at all (an endless frame) raises
:class:`RemoteProtocolError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

BANNER_PREFIX: Final = "Asterisk Call Manager/"
MAX_LINE: Final = 64 * 1024  # a longer banner line is hostile
MAX_FRAME: Final = 1024 * 1024  # a frame this long without an end is hostile: no AMI message comes near it
EOL: Final = b"\r\n"


class RemoteProtocolError(Exception):
    """The peer sent bytes that cannot be framed as AMI."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`AmiProtocol.next_event` when a whole frame is not buffered yet."""


@dataclass(frozen=True, slots=True)
class Banner:
    """The greeting line a server sends first (``Asterisk Call Manager/<version>``)."""

    version: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed the stream (``receive_data(b"")``); any partial frame is dropped."""


@dataclass(frozen=True, slots=True)
class Message:
    """One AMI frame: an action (server role), a response or an event (client role).

    ``items`` keeps every header in order, repeated keys included (``Variable``
    on an Originate, ``ChanVariable`` on events). ``headers`` is the convenient
    view: the first value of each key, plus one ``ChanVariable(NAME)`` /
    ``Variable(NAME)`` entry per ``NAME=value`` line, so a consumer reads a
    channel variable with one dict lookup. ``junk`` holds lines that were not
    headers.
    """

    items: tuple[tuple[str, str], ...]
    junk: tuple[str, ...] = ()
    headers: dict[str, str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        h: dict[str, str] = {}
        for k, v in self.items:
            if k not in h:
                h[k] = v
            if k in _MULTI_KEYS and "=" in v:
                name, _, value = v.partition("=")
                h.setdefault(f"{k}({name})", value)
        object.__setattr__(self, "headers", h)

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of ``key`` (exact case, as Asterisk spells it)."""
        return self.headers.get(key, default)

    def get_all(self, key: str) -> list[str]:
        """Every value of a key that may repeat, in order."""
        return [v for k, v in self.items if k == key]

    @property
    def event(self) -> str | None:
        return self.headers.get("Event")

    @property
    def response(self) -> str | None:
        return self.headers.get("Response")

    @property
    def action(self) -> str | None:
        return self.headers.get("Action")

    @property
    def action_id(self) -> str | None:
        return self.headers.get("ActionID")


_MULTI_KEYS: Final = frozenset({"Variable", "ChanVariable", "DestChanVariable"})

AmiEvent = Banner | Message | Closed


class AmiProtocol:
    """Incremental AMI framer for one connection.

    ``role="client"`` expects the server's banner first; ``role="server"`` (the
    emulator) parses actions straight away. Frames end at an empty line, with
    CRLF or LF-only line ends in any mix.
    """

    def __init__(self, role: Literal["client", "server"] = "client") -> None:
        self.role = role
        self._buf = bytearray()
        self._pos = 0
        self._banner_pending = role == "client"
        self._items: list[tuple[str, str]] = []
        self._junk: list[str] = []
        self._scan = 0  # where to resume looking for a frame end (bytes before it were searched)
        self._eof = False
        self._closed_reported = False

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed the stream."""
        if not data:
            self._eof = True
            return
        self._buf += data

    def next_event(self) -> AmiEvent | _NeedData:
        """The next complete banner or frame, ``NEED_DATA``, or ``Closed`` once after EOF."""
        if self._banner_pending:
            before = self._pos
            line = self._next_line()
            if line is None:
                return self._need_data()
            self._banner_pending = False
            if line.startswith(BANNER_PREFIX):
                return Banner(line[len(BANNER_PREFIX):].strip())
            self._pos = before  # no banner (e.g. a proxy swallowed it): the line is frame content
        while True:
            frame = self._next_frame()
            if frame is None:
                return self._need_data()
            items, junk = self._items, self._junk
            for line in frame.split("\n"):
                if line.endswith("\r"):
                    line = line[:-1]
                if not line:
                    continue
                key, sep, value = line.partition(":")
                if not sep or not key or " " in key:
                    junk.append(line)
                else:
                    items.append((key, value[1:] if value.startswith(" ") else value))
            if items or junk:
                msg = Message(tuple(self._items), tuple(self._junk))
                self._items, self._junk = [], []
                return msg

    def _need_data(self) -> Closed | _NeedData:
        if self._eof and not self._closed_reported:
            self._closed_reported = True
            self._items, self._junk = [], []
            return Closed()
        return NEED_DATA

    def _next_frame(self) -> str | None:
        """Text up to the next empty line (CRLF or LF), decoded once; None until it is buffered."""
        buf, pos = self._buf, self._pos
        n = len(buf)
        while pos < n and (buf[pos] == 0x0A or (buf[pos] == 0x0D and pos + 1 < n and buf[pos + 1] == 0x0A)):
            pos += 1 if buf[pos] == 0x0A else 2  # stray blank lines between frames
        self._pos = pos
        start = max(pos, self._scan)
        crlf = buf.find(b"\n\r\n", start)
        lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else n)  # bounded: the scan stays linear
        if lf < 0 and crlf < 0:
            if n - pos > MAX_FRAME:
                raise RemoteProtocolError(f"no frame end within {MAX_FRAME} bytes")
            self._scan = max(pos, n - 2)
            self._compact()
            return None
        if crlf < 0 or (0 <= lf < crlf):
            end, skip = lf + 1, 1
        else:
            end, skip = crlf + 1, 2
        text = buf[pos:end].decode("utf-8", "replace")
        self._pos = self._scan = end + skip
        self._compact()
        return text

    def _compact(self) -> None:
        if self._pos > 65536 or (self._pos and self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._scan = max(0, self._scan - self._pos)
            self._pos = 0

    def _next_line(self) -> str | None:
        buf = self._buf
        nl = buf.find(b"\n", self._pos)
        if nl < 0:
            if len(buf) - self._pos > MAX_LINE:
                raise RemoteProtocolError(f"line longer than {MAX_LINE} bytes")
            return None
        end = nl - 1 if nl > self._pos and buf[nl - 1] == 0x0D else nl
        line = buf[self._pos : end].decode("utf-8", "replace")
        self._pos = nl + 1
        return line


# -- serialising ------------------------------------------------------------------------

FieldValue = str | int | float | Sequence[str]


def format_frame(items: Iterable[tuple[str, str]]) -> bytes:
    """Serialise one frame (``Key: Value`` lines, CRLF, blank line) from ordered pairs.

    A key or value carrying CR or LF (a caller ID, a variable) would inject a second
    action into the stream: refused with ``ValueError``.
    """
    out = [f"{k}: {v}\r\n" for k, v in items]
    out.append("\r\n")
    text = "".join(out)
    if text.count("\n") != len(out) or text.count("\r") != len(out):
        raise ValueError("AMI header keys and values cannot contain CR or LF")
    return text.encode("utf-8")


def format_action(action: str, action_id: str, fields: Mapping[str, FieldValue] | None = None) -> bytes:
    """Serialise an action; a list value becomes repeated lines (``Variable: A=1``, ``Variable: B=2``)."""
    items: list[tuple[str, str]] = [("Action", action), ("ActionID", action_id)]
    for k, v in (fields or {}).items():
        if isinstance(v, str):
            items.append((k, v))
        elif isinstance(v, int | float):
            items.append((k, str(v)))
        else:
            items.extend((k, str(x)) for x in v)
    return format_frame(items)


def format_banner(version: str = "11.0.0") -> bytes:
    """The server greeting (emulator role)."""
    return f"{BANNER_PREFIX}{version}\r\n".encode()


def drain(proto: AmiProtocol) -> list[AmiEvent]:
    """Every event currently available (stops at ``NEED_DATA``); handy in tests and loops."""
    out: list[AmiEvent] = []
    while True:
        ev = proto.next_event()
        if isinstance(ev, _NeedData):
            return out
        out.append(ev)
        if isinstance(ev, Closed):
            return out

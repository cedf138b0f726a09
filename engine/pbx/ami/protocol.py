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

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
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


class Message:
    """One AMI frame: an action (server role), a response or an event (client role).

    ``items`` keeps every header in order, repeated keys included (``Variable``
    on an Originate, ``ChanVariable`` on events). ``headers`` is the convenient
    view: the first value of each key, plus one ``ChanVariable(NAME)`` /
    ``Variable(NAME)`` entry per ``NAME=value`` line, so a consumer reads a
    channel variable with one dict lookup. ``junk`` holds lines that were not
    headers.

    Built once per AMI frame, tens of thousands of times a second, so it is a
    plain slotted class and lazy: an event framed in bulk keeps its text
    (``raw``) and its name (``event``, read off the first line) and parses its
    headers only when someone reads them. A real Asterisk sends about five
    events the engine ignores for each one it reads; those are never parsed.
    """

    __slots__ = ("_headers", "_items", "_junk", "_n", "event", "raw")

    def __init__(self, items: Iterable[tuple[str, str]], junk: Iterable[str] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] | None = tuple(items)
        self._junk: tuple[str, ...] = tuple(junk)
        h: dict[str, str] = {}
        for k, v in self._items:
            if k not in h:
                h[k] = v
            if k in _MULTI_KEYS and "=" in v:
                name, _, value = v.partition("=")
                h.setdefault(f"{k}({name})", value)
        self._headers: dict[str, str] | None = h
        self._n = 0
        self.raw: str | None = None
        self.event: str | None = h.get("Event")

    @classmethod
    def _from_headers(cls, headers: dict[str, str], n: int) -> Message:
        """A frame without repeated keys or junk whose first ``n`` dict entries are its lines, in order."""
        m = cls.__new__(cls)
        m._items = None
        m._n = n
        m._junk = ()
        m._headers = headers
        m.raw = None
        m.event = headers.get("Event")
        return m

    @classmethod
    def _lazy(cls, raw: str, event: str) -> Message:
        """An event frame (CRLF lines, first line ``Event: <event>``) parsed on first use."""
        m = cls.__new__(cls)
        m._items = None
        m._n = 0
        m._junk = ()
        m._headers = None
        m.raw = raw
        m.event = event
        return m

    def _parse(self) -> dict[str, str]:
        raw = self.raw or ""
        fast = _fast_headers(raw)
        if fast is not None:
            self._headers, self._n = fast
            return fast[0]
        slow = _slow_message(raw) or Message(())
        self._items, self._junk, self._headers = slow._items, slow._junk, slow._headers
        return slow._headers or {}

    @property
    def headers(self) -> dict[str, str]:
        """First value of each key (plus ``Variable(NAME)`` views); parsed on first use."""
        h = self._headers
        return h if h is not None else self._parse()

    @property
    def junk(self) -> tuple[str, ...]:
        """Lines that were not ``Key: Value`` headers."""
        if self._headers is None:
            self._parse()
        return self._junk

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        """Every header line as ``(key, value)``, in order, repeats included."""
        if self._items is None:
            self._items = tuple(islice(self.headers.items(), self._n))
        return self._items

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.items == other.items and self.junk == other.junk

    def __hash__(self) -> int:
        return hash((self.items, self.junk))

    def __repr__(self) -> str:
        return f"Message(items={self.items!r}, junk={self.junk!r})"

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of ``key`` (exact case, as Asterisk spells it)."""
        return self.headers.get(key, default)

    def get_all(self, key: str) -> list[str]:
        """Every value of a key that may repeat, in order."""
        return [v for k, v in self.items if k == key]

    @property
    def response(self) -> str | None:
        return self.headers.get("Response")

    @property
    def action(self) -> str | None:
        return self.headers.get("Action")

    @property
    def action_id(self) -> str | None:
        if self._headers is None and "ActionID:" not in (self.raw or ""):
            return None  # most events carry none: no parse needed to say so
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
        self._scan = 0  # where to resume looking for a frame end (bytes before it were searched)
        self._eof = False
        self._closed_reported = False
        self._ready: deque[Message] = deque()  # frames parsed in bulk, not handed out yet
        self.skipped = 0  # events ``messages(keep)`` was told to drop (counted, never parsed)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed the stream."""
        if not data:
            self._eof = True
            return
        self._buf += data

    def next_event(self) -> AmiEvent | _NeedData:
        """The next complete banner or frame, ``NEED_DATA``, or ``Closed`` once after EOF."""
        if self._ready:
            return self._ready.popleft()
        if self._banner_pending:
            before = self._pos
            line = self._next_line()
            if line is None:
                return self._need_data()
            self._banner_pending = False
            if line.startswith(BANNER_PREFIX):
                return Banner(line[len(BANNER_PREFIX):].strip())
            self._pos = before  # no banner (e.g. a proxy swallowed it): the line is frame content
        if self._bulk():
            return self._ready.popleft()
        while True:
            frame = self._next_frame()
            if frame is None:
                return self._need_data()
            msg = _slow_message(frame)
            if msg is not None:
                return msg

    def messages(self, keep: Callable[[str, str], bool] | None = None) -> list[Message]:
        """Every complete frame buffered now, in one call (the reader's hot loop); [] when none.

        Unlike :meth:`next_event` it never reports the banner or ``Closed``: call it once the banner
        was read, and check ``next_event`` for ``Closed`` after EOF.

        ``keep(event, raw)``, if given, is asked about each event framed in bulk (its name and its
        text): an event it refuses is counted in :attr:`skipped` and never becomes a ``Message``.
        That is how a consumer that needs one event in five pays almost nothing for the other four.
        """
        if self._banner_pending:
            out: list[Message] = []
            while True:
                ev = self.next_event()
                if isinstance(ev, Message):
                    out.append(ev)
                elif not isinstance(ev, Banner):
                    return out
        self._bulk(keep)
        out = list(self._ready)
        self._ready.clear()
        while True:
            frame = self._next_frame()
            if frame is None:
                return out
            msg = _slow_message(frame)
            if msg is not None:
                out.append(msg)

    def _bulk(self, keep: Callable[[str, str], bool] | None = None) -> bool:
        """Parse every complete frame in the buffer at once when it is all CRLF (as Asterisk sends).

        One decode and one split for the whole chunk instead of a scan per frame. An event is kept as
        text with its name (parsed if and when read); other frames get one ``str.split`` per line and a
        dict. Anything unusual in a frame (a line without ``": "``, a repeated key, a key with a space or
        a colon) goes through the line-by-line path, so both paths give the same messages (the tests
        replay every transcript split at every byte).
        A chunk with a bare LF is left to the line-by-line path entirely: frame ends differ there.
        """
        buf, pos = self._buf, self._pos
        end = buf.rfind(b"\r\n\r\n", max(pos, self._scan - 3))
        if end < pos:
            return False
        chunk = buf[pos:end]
        if chunk.count(b"\n") != chunk.count(b"\r\n"):
            return False
        self._pos = self._scan = end + 4
        ready = self._ready
        lazy = Message._lazy
        skipped = 0
        for frame in chunk.decode("utf-8", "replace").split("\r\n\r\n"):
            if frame.startswith("Event: "):
                nl = frame.find("\r\n")
                name = frame[7:nl] if nl >= 0 else frame[7:]
                if keep is None or keep(name, frame):
                    ready.append(lazy(frame, name))
                else:
                    skipped += 1
                continue
            fast = _fast_headers(frame)
            if fast is not None:
                ready.append(Message._from_headers(*fast))
            else:
                msg = _slow_message(frame)
                if msg is not None:
                    ready.append(msg)
        self.skipped += skipped
        self._compact()
        return bool(ready)

    def _need_data(self) -> Closed | _NeedData:
        if self._eof and not self._closed_reported:
            self._closed_reported = True
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


def _fast_headers(frame: str) -> tuple[dict[str, str], int] | None:
    """Headers of a CRLF frame of plain ``Key: Value`` lines (one ``str.split`` per line), with the
    number of lines; None when anything is unusual (a line without ``": "``, a repeated key, a key with
    a space or a colon, an empty line): :func:`_slow_message` decides those, so both agree."""
    lines = frame.split("\r\n")
    try:
        h = dict([line.split(": ", 1) for line in lines])
    except ValueError:
        return None
    n = len(lines)
    if len(h) != n or "" in h:
        return None
    keys = "".join(h)
    if " " in keys or ":" in keys:
        return None
    for k in _MULTI_KEYS:
        v = h.get(k)
        if v is not None and "=" in v:
            name, _, value = v.partition("=")
            h.setdefault(f"{k}({name})", value)
    return h, n


def _slow_message(frame: str) -> Message | None:
    """A frame parsed line by line, tolerating LF-only ends, junk and repeats; None if it is empty."""
    items: list[tuple[str, str]] = []
    junk: list[str] = []
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
    return Message(items, junk) if items or junk else None


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

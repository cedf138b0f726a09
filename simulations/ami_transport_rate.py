"""Ingest rate of each AMI transport (``[asterisk] ami_transport``), without sockets.

``python -m simulations.ami_transport_rate [--copies N]`` feeds the real Asterisk 22 bytes of an answered
call (``tests/fixtures/ami/answered.txt``), repeated with distinct uniqueids so the correlator tracks every
copy to its end, in 64 KiB reads, through each transport's whole path as the backend runs it: framing,
action routing, the prefilter, the queue and the backend's consumer (correlator, agent watch, sink). The
emulator and the kernel are left out, so the figure is the backend's own ceiling on one core; the flood
(``simulations/flood.py``) measures the native path end to end. Best of three runs per transport.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from engine.pbx.ami.protocol import AmiProtocol, format_banner
from engine.pbx.asterisk import TRANSPORTS, AmiServer, AsteriskBackend, AsteriskConfig, _PanoramiskProtocol
from engine.pbx.base import Connected, Ended

TRANSCRIPT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ami" / "answered.txt"


def answered_calls(copies: int) -> tuple[bytes, list[tuple[str, str, str]]]:
    """The real Asterisk 22 bytes of the answered call ``copies`` times, each copy with uniqueids of its
    own, and (call id, ActionID, Channel) to register each copy with a correlator (also the flood's
    ingest baseline: both measure the same bytes)."""
    raw = TRANSCRIPT.read_bytes()
    body = raw[raw.index(b"\r\n") + 2:]
    stamp = body.split(b"Uniqueid: ", 1)[1].split(b".", 1)[0]  # the capture's uniqueid prefix
    sent = AmiProtocol("server")
    sent.receive_data(TRANSCRIPT.with_name("answered.sent.txt").read_bytes())
    orig = next(m for m in sent.messages() if m.action == "Originate")
    tags = [str(9_000_000_000 + i).encode()[-len(stamp):] for i in range(copies)]
    calls = [(f"c{i}", (orig.action_id or "").replace(stamp.decode(), t.decode()), orig.get("Channel") or "")
             for i, t in enumerate(tags)]
    return b"".join(body.replace(stamp, t) for t in tags), calls


def measure(transport: str, copies: int = 300, chunk: int = 65536) -> dict[str, Any]:
    """Frames/s through one transport's ingest path, and the calls it saw connected and ended."""
    stream, calls = answered_calls(copies)
    frames = stream.count(b"\r\n\r\n")
    pieces = [format_banner(), *(stream[i:i + chunk] for i in range(0, len(stream), chunk))]
    cfg = AsteriskConfig(servers=(AmiServer(),), transport=transport)
    seen = {"ended": 0, "connected": 0}

    def sink(ev: Any) -> None:
        if isinstance(ev, Ended):
            seen["ended"] += 1
        elif isinstance(ev, Connected):
            seen["connected"] += 1

    best = 0.0
    for _ in range(3):
        seen.update(ended=0, connected=0)
        be = AsteriskBackend(cfg)
        be._sink = sink
        link = be._links[0]
        for cid, aid, channel in calls:
            link.correlator.register(cid, action_id=aid, channel=channel)
        if transport == "panoramisk":
            proto = _PanoramiskProtocol(link)  # type: ignore[arg-type]
            proto.connection_made(None)  # type: ignore[arg-type]
            link._protocol = proto  # type: ignore[attr-defined]
        else:
            link._proto = AmiProtocol()
        queue = be._queue
        t0 = time.perf_counter()
        for piece in pieces:
            link.feed(piece)
            while not queue.empty():
                _index, item = queue.get_nowait()
                be._consume_item(link, item)
        best = max(best, frames / (time.perf_counter() - t0))
    if seen["ended"] != copies or seen["connected"] != copies:
        raise RuntimeError(f"{transport}: lost track ({seen} of {copies} calls)")
    return {"transport": transport, "frames_per_s": round(best), "frames": frames, "calls": copies}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=300, help="answered calls in the stream (~100 frames each)")
    args = p.parse_args(argv)
    for transport in TRANSPORTS:
        print(json.dumps(measure(transport, args.copies)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

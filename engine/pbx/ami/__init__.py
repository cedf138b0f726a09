"""Asterisk Manager Interface pieces that do no I/O.

``protocol`` frames bytes into AMI messages and back (sans-IO, h11-style);
``correlator`` turns AMI messages into the engine's call events. The asyncio
side lives in ``engine.pbx.asterisk``; the emulator in ``simulations.ami_emulator``.
"""

from engine.pbx.ami.protocol import (
    NEED_DATA,
    AmiProtocol,
    Banner,
    Closed,
    Message,
    RemoteProtocolError,
    drain,
    format_action,
    format_banner,
    format_frame,
)

__all__ = [
    "NEED_DATA",
    "AmiProtocol",
    "Banner",
    "Closed",
    "Message",
    "RemoteProtocolError",
    "drain",
    "format_action",
    "format_banner",
    "format_frame",
]

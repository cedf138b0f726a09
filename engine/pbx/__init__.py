"""PBX backends: one async interface (``base.PbxBackend``), several implementations."""

from engine.pbx.base import (
    Abandoned,
    Answered,
    CallEvent,
    Connected,
    Ended,
    EventSink,
    OptOut,
    PbxAuthError,
    PbxBackend,
    PbxError,
    Ringing,
)

__all__ = [
    "Abandoned",
    "Answered",
    "CallEvent",
    "Connected",
    "Ended",
    "EventSink",
    "OptOut",
    "PbxAuthError",
    "PbxBackend",
    "PbxError",
    "Ringing",
]

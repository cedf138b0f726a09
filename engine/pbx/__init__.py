"""PBX backends: one async interface (``base.PbxBackend``), several implementations."""

from engine.pbx.base import (
    Abandoned,
    AgentSession,
    Answered,
    CallEvent,
    Connected,
    Ended,
    EventSink,
    OptOut,
    PbxAuthError,
    PbxBackend,
    PbxError,
    PbxEvent,
    PbxFailed,
    Ringing,
)

__all__ = [
    "Abandoned",
    "AgentSession",
    "Answered",
    "CallEvent",
    "Connected",
    "Ended",
    "EventSink",
    "OptOut",
    "PbxAuthError",
    "PbxBackend",
    "PbxError",
    "PbxEvent",
    "PbxFailed",
    "Ringing",
]

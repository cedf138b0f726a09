"""Structured logging: JSON lines in production, readable lines in a terminal.

Every log line from a call carries its campaign, call and lead ids (bound by
the dialer). Phone numbers are never logged whole: any ``phone`` field is
masked here as a last line of defence.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from engine.models import mask_phone


def _mask(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in ("phone", "number", "to"):
        value = event.get(key)
        if isinstance(value, str) and value.lstrip("+").isdigit():
            event[key] = mask_phone(value)
    return event


def configure(level: str = "info", json: bool | None = None, stream: Any = None) -> None:
    """Set up structlog once per process; ``json`` defaults to "not a terminal"."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask,
    ]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )

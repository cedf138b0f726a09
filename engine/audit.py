"""Append-only audit log of every read or change of lead data: who, what, when, why.

Entries are JSON lines, each carrying the SHA-256 of the previous entry, so a
removed or edited line breaks the chain and ``verify`` says where. The log
holds lead ids and field names, never the personal data itself.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    actor: str  # user or agent id, or "engine"
    role: str
    action: str  # view | update | export | delete
    lead_id: str
    fields: tuple[str, ...]
    reason: str


class AuditLog:
    """One JSONL file per deployment (or per campaign); appends are flushed at once."""

    def __init__(self, path: str | Path, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._last = self._tail_hash()

    def _tail_hash(self) -> str:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return GENESIS
        with self.path.open("rb") as f:
            last = f.read().splitlines()[-1]
        return hashlib.sha256(last).hexdigest()

    def record(self, *, actor: str, role: str, action: str, lead_id: str, fields: tuple[str, ...] | list[str],
               reason: str) -> AuditEntry:
        if not reason:
            raise ValueError("every access to lead data needs a reason")
        entry = AuditEntry(self._clock(), actor, role, action, lead_id, tuple(fields), reason)
        with self._lock:
            line = json.dumps({"at": entry.at, "actor": actor, "role": role, "action": action, "lead_id": lead_id,
                               "fields": list(entry.fields), "reason": reason, "prev": self._last},
                              separators=(",", ":"), sort_keys=True).encode()
            with self.path.open("ab") as f:
                f.write(line + b"\n")
            self._last = hashlib.sha256(line).hexdigest()
        return entry

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def verify(self) -> int | None:
        """None if the chain is intact, else the 1-based line where it breaks."""
        prev = GENESIS
        if not self.path.exists():
            return None
        for n, line in enumerate(self.path.read_bytes().splitlines(), start=1):
            try:
                if json.loads(line)["prev"] != prev:
                    return n
            except (ValueError, KeyError):
                return n
            prev = hashlib.sha256(line).hexdigest()
        return None

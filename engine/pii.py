"""Keyed blind index of phone numbers.

The store must be able to say "this number is on the DNC list" or "this number
was called twice today" without holding the number itself. A keyed HMAC of the
E.164 string, truncated to 63 bits, gives an integer that is stable for one
deployment key, useless without it, and small enough for Redis integer sets.
Truncation means two numbers may share an index; every use of the index only
*blocks* (DNC, caps, locks), so a collision can stop a dial but never allow one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

_DEV_KEY = b"dialer-engine development index key - not for production"


class BlindIndex:
    """Maps an E.164 number to a 63-bit integer under a secret key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("blind index key must be at least 16 bytes")
        self._key = key

    def __call__(self, phone: str) -> int:
        digest = hmac.new(self._key, phone.encode("ascii"), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") >> 1

    @property
    def is_development(self) -> bool:
        """True on the built-in development key (fine for a demo, never for a shared store)."""
        return hmac.compare_digest(self._key, _DEV_KEY)

    @classmethod
    def from_env(cls, var: str = "DIALER_INDEX_KEY", file_var: str = "DIALER_INDEX_KEY_FILE") -> BlindIndex:
        """Key from ``$DIALER_INDEX_KEY`` (hex) or the file named by ``$DIALER_INDEX_KEY_FILE``.

        Falls back to a fixed development key so the demo runs out of the box;
        production deployments must set one (``dialer run`` refuses a Redis store without it).
        """
        if os.environ.get(var):
            return cls(bytes.fromhex(os.environ[var]))
        if os.environ.get(file_var):
            return cls(bytes.fromhex(Path(os.environ[file_var]).read_text().strip()))
        return cls(_DEV_KEY)

"""Field encryption for personal data at rest (the phone number in a stored lead record).

The store keys everything by the blind index (``engine.pii``); the one place the
plain number is needed is the dial itself, so the lead record keeps it only as
AES-256-GCM ciphertext, decrypted when the lead is handed out.

Token format: ``<key id>:<base64url(nonce[12] || ciphertext || tag[16])>``. The
key id is the first 8 hex digits of SHA-256 of the key, so it names a key
without revealing it and needs no configuration. The associated data binds a
ciphertext to its record (the store uses campaign and blind index): a token copied onto another
lead does not decrypt.

Keys: ``$DIALER_DATA_KEY`` (hex, 32 bytes) or the file named by
``$DIALER_DATA_KEY_FILE``; either may hold several keys separated by commas or
whitespace. The first encrypts; every one of them decrypts. Without either, a
fixed development key is used so the demo runs out of the box (like
``engine.pii``); production deployments must set one.

Rotation, with no downtime:

1. put the new key first and keep the old one after it
   (``DIALER_DATA_KEY=<new>,<old>``) and restart the nodes: new records are
   written under the new key, old ones still decrypt;
2. re-encrypt the old records: ``dialer store reencrypt CAMPAIGN.toml``
   (``RedisStore.reencrypt(campaign_id)``) rewrites
   every lead whose token does not carry the current key id
   (``FieldCipher.needs_rotation`` tells them apart);
3. once nothing carries the old key id, drop the old key from the list.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_DEV_KEY = hashlib.sha256(b"dialer-engine development data key - not for production").digest()
_NONCE = 12


class DecryptError(Exception):
    """A token that no configured key opens (unknown key id, tampered, or bound to another record)."""


def key_id(key: bytes) -> str:
    """The public name of a key: 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


class FieldCipher:
    """AES-256-GCM for single fields, with a key id on every token so keys can rotate."""

    __slots__ = ("_current", "_keys")

    def __init__(self, keys: bytes | Sequence[bytes]) -> None:
        """``keys``: one 32-byte key, or several, the first being the one that encrypts."""
        key_list = [keys] if isinstance(keys, bytes) else list(keys)
        if not key_list:
            raise ValueError("at least one data key is required")
        for k in key_list:
            if len(k) != 32:
                raise ValueError(f"a data key must be 32 bytes (AES-256), got {len(k)}")
        self._keys = {key_id(k): AESGCM(k) for k in key_list}
        self._current = key_id(key_list[0])

    @property
    def current_key_id(self) -> str:
        return self._current

    def encrypt(self, plaintext: str, context: str = "") -> str:
        """A token for ``plaintext``, bound to ``context`` (e.g. ``"campaign/lead"``)."""
        nonce = os.urandom(_NONCE)
        sealed = self._keys[self._current].encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return f"{self._current}:{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"

    def decrypt(self, token: str, context: str = "") -> str:
        """The plaintext of a token made by ``encrypt`` with the same ``context``; DecryptError otherwise."""
        kid, sep, body = token.partition(":")
        aead = self._keys.get(kid)
        if not sep or aead is None:
            raise DecryptError(f"no configured data key has id {kid!r}")
        try:
            raw = base64.urlsafe_b64decode(body.encode("ascii"))
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode("utf-8")).decode("utf-8")
        except Exception as exc:  # InvalidTag, bad base64: never say more than "does not open"
            raise DecryptError(f"token under key {kid} does not decrypt for this record") from exc

    def needs_rotation(self, token: str) -> bool:
        """True when the token was written under a key other than the current one."""
        return not token.startswith(self._current + ":")

    @classmethod
    def from_env(cls, var: str = "DIALER_DATA_KEY", file_var: str = "DIALER_DATA_KEY_FILE") -> FieldCipher:
        """Keys from ``$DIALER_DATA_KEY`` or the file ``$DIALER_DATA_KEY_FILE`` (hex, first encrypts),
        else the development key."""
        text = os.environ.get(var) or ""
        if not text and os.environ.get(file_var):
            text = Path(os.environ[file_var]).read_text()
        if not text.strip():
            return cls(_DEV_KEY)
        return cls([bytes.fromhex(part) for part in re.split(r"[\s,]+", text.strip()) if part])

    @property
    def is_development(self) -> bool:
        """True when running on the built-in development key (``dialer check`` should warn)."""
        return self._current == key_id(_DEV_KEY)

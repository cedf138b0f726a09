"""HTTPS and WSS for the agent API: the server's TLS context from ``[agents] tls_cert`` and ``tls_key``.

Tokens travel in every request, so anything but loopback needs TLS: either a proxy in front, or the
engine itself with a certificate and key in PEM files. The files are read when the server starts (and
by ``dialer check`` / ``dialer run`` before anything dials), so an unreadable or mismatched pair stops
the campaign at once with the field named, instead of failing the first agent's handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from engine.config import AgentsSection


class TlsError(ValueError):
    """A TLS file that cannot be used; ``field`` is ``tls_cert`` or ``tls_key``, ``reason`` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"agents.{field}: {message}")
        self.field = field
        self.reason = message


def _read(field: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def problems(section: AgentsSection) -> list[TlsError]:
    """What is wrong with each TLS file, all of them (``dialer check`` lists every one); empty if both are
    readable and are what they claim to be: a PEM certificate, and an unencrypted PEM private key."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if section.tls_cert is None or section.tls_key is None:
        return []
    found: list[TlsError] = []
    try:
        x509.load_pem_x509_certificate(_read("tls_cert", section.tls_cert))
    except TlsError as exc:
        found.append(exc)
    except ValueError:
        found.append(TlsError("tls_cert", f"{section.tls_cert} is not a PEM certificate "
                              "(-----BEGIN CERTIFICATE-----)"))
    try:
        serialization.load_pem_private_key(_read("tls_key", section.tls_key), password=None)
    except TlsError as exc:
        found.append(exc)
    except TypeError:
        found.append(TlsError("tls_key", f"{section.tls_key} is encrypted: give the key unencrypted, in a file "
                              "only the engine's user can read"))
    except (ValueError, UnsupportedAlgorithm):
        found.append(TlsError("tls_key", f"{section.tls_key} is not a PEM private key "
                              "(-----BEGIN ... PRIVATE KEY-----)"))
    return found


def server_context(section: AgentsSection) -> ssl.SSLContext | None:
    """The TLS context the agent API serves with, or None when ``tls_cert``/``tls_key`` are not set."""
    if section.tls_cert is None or section.tls_key is None:
        return None
    found = problems(section)
    if found:
        raise found[0]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(section.tls_cert, section.tls_key)
    except ssl.SSLError as exc:
        raise TlsError("tls_key", f"the key in {section.tls_key} does not belong to the "
                       f"certificate in {section.tls_cert} ({exc.reason or exc})") from None
    return ctx

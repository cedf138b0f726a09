"""TLS in the engine: with ``[agents] tls_cert`` and ``tls_key`` the agent API speaks HTTPS and WSS only.

A self-signed certificate is made here (``cryptography``); the client trusts exactly that certificate,
signs in and reads its event stream over real TLS; plain HTTP to the same port gets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import Script, campaign, human
from test_agent_api import INDEX, auth, floor, next_event, preview_dialer, the_lead

from engine.agent_api.tls import TlsError, server_context
from engine.config import AgentsSection, ConfigError, load_campaign
from engine.store.memory import MemoryStore


def self_signed(directory: Path, name: str = "agents") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its private key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dialer agent API test ({name})")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


async def test_https_and_wss_with_a_certificate_the_client_trusts(tmp_path):
    cert, key = self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with floor(tmp_path, {"L1": human(after=0.05, talk=3600)}, leads=[the_lead()], client_ssl=trusting,
                     agents={"tls_cert": str(cert), "tls_key": str(key)}) as f:
        assert f.base.startswith("https://127.0.0.1:")
        ws = await f.events("A1")  # wss://, the token in the header
        assert ws.get_extra_info("ssl_object") is not None
        status, me = await f.call("POST", "/login", "A1")
        assert status == 200 and me["state"] == "paused"
        assert (await next_event(ws, "state"))["state"] == "paused"
        await f.call("POST", "/ready", "A1")
        offer = await next_event(ws, "preview")  # a whole call's events come over TLS
        await f.call("POST", f"/previews/{offer['offer_id']}/accept", "A1")
        connected = await next_event(ws, "call_connected")
        await f.call("POST", f"/calls/{connected['call_id']}/hangup", "A1")
        await next_event(ws, "wrap_up")
        await f.call("POST", f"/calls/{connected['call_id']}/disposition", "A1", {"disposition": "sale"})
        await next_event(ws, "call_done")

        port = f.desk.port
        async with aiohttp.ClientSession() as plain:
            # Plain HTTP to the TLS port: no reply, the connection is dropped.
            with pytest.raises(aiohttp.ClientError):
                async with plain.post(f"http://127.0.0.1:{port}/api/v1/login", headers=auth("A1")) as r:
                    await r.read()
            with pytest.raises(aiohttp.ClientError):
                await plain.ws_connect(f"ws://127.0.0.1:{port}/api/v1/events", headers=auth("A1"))
            # HTTPS without trusting this certificate: refused by the client's own verification.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await plain.get(f"https://127.0.0.1:{port}/api/v1/me", headers=auth("A1"))
        await f.stop()


def test_tls_cert_and_key_go_together_and_the_error_names_the_field(tmp_path):
    for given, missing in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
        path = tmp_path / f"{given}.toml"
        path.write_text(f'[campaign]\nid = "t"\n\n[agents]\ndesk = "api"\n{given} = "/etc/dialer/x.pem"\n')
        with pytest.raises(ConfigError) as err:
            load_campaign(path)
        assert f"{path}:4: agents: {missing}: set together with {given}" in str(err.value)
    with pytest.raises(ConfigError, match="tls_cert: give the path of a PEM file"):
        campaign(agents={"desk": "api", "tls_cert": " ", "tls_key": "k.pem"})
    assert campaign(agents={"desk": "api"}).agents.tls_cert is None


def test_the_tls_files_are_checked_with_the_field_named(tmp_path):
    cert, key = self_signed(tmp_path)
    other_cert, other_key = self_signed(tmp_path, "other")
    assert isinstance(server_context(AgentsSection(tls_cert=str(cert), tls_key=str(key))), ssl.SSLContext)
    assert server_context(AgentsSection()) is None
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem file\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    cases = [
        ((tmp_path / "missing.crt", key), "tls_cert", "cannot read"),
        ((cert, tmp_path / "missing.key"), "tls_key", "cannot read"),
        ((garbage, key), "tls_cert", "is not a PEM certificate"),
        ((cert, garbage), "tls_key", "is not a PEM private key"),
        ((cert, encrypted), "tls_key", "is encrypted"),
        ((cert, other_key), "tls_key", "does not belong to the certificate"),
    ]
    for (c, k), field, why in cases:
        with pytest.raises(TlsError) as err:
            server_context(AgentsSection(tls_cert=str(c), tls_key=str(k)))
        assert err.value.field == field and why in err.value.reason, (field, str(err.value))
        assert str(err.value).startswith(f"agents.{field}: ")
    assert other_cert.exists()


async def test_a_bad_tls_file_stops_the_campaign_at_start(tmp_path):
    cert, _ = self_signed(tmp_path)
    cfg = campaign(campaign={"id": "t", "mode": "preview"},
                   agents={"desk": "api", "port": 0, "tls_cert": str(cert), "tls_key": str(tmp_path / "missing.key")})
    dialer = preview_dialer(cfg, MemoryStore(index=INDEX), Script({}), tmp_path)
    with pytest.raises(ExceptionGroup) as err:
        await dialer.run()
    [problem] = err.value.exceptions
    assert isinstance(problem, TlsError) and problem.field == "tls_key"
    assert str(problem).startswith("agents.tls_key: cannot read ")


async def _served_certificate(port: int, trusting: ssl.SSLContext) -> bytes:
    """The certificate (DER) a new TLS connection to the agent API is given."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=trusting), 10.0)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    del reader
    return der


def _der(cert: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)


async def _tls_reloaded(f: Any, before: int) -> None:
    """Until the server has taken (or refused) one more certificate reload."""
    for _ in range(500):
        if f.desk.server.tls_reloads > before:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the certificate was not reloaded")


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    cert, key = self_signed(live)
    old_der = _der(cert)
    renewed_cert, renewed_key = self_signed(tmp_path, "renewed")
    _, stray_key = self_signed(tmp_path, "stray")
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + renewed_cert.read_bytes())
    trusting = ssl.create_default_context(cafile=str(both))
    async with floor(tmp_path, {}, leads=[the_lead()], client_ssl=trusting,
                     agents={"tls_cert": str(cert), "tls_key": str(key)}) as f:
        server, port = f.desk.server, f.desk.port
        assert await _served_certificate(port, trusting) == old_der
        ws = await f.events("A1")  # a stream opened before the renewal stays open through it

        # Half a renewal (the new certificate, the old key): refused, the pair in use still served.
        before = server.tls_reloads
        cert.write_bytes(renewed_cert.read_bytes())
        key.write_bytes(stray_key.read_bytes())
        server.reload_tokens()  # SIGHUP
        await _tls_reloaded(f, before)
        assert await _served_certificate(port, trusting) == old_der
        refused = [e for e in f.audit.entries() if e["action"] == "tls_reload_refused"]
        assert refused and "does not belong to the certificate" in refused[-1]["reason"]

        # The renewal completed: noticed by the watcher alone, served from the next connection on.
        before = server.tls_reloads
        key.write_bytes(renewed_key.read_bytes())
        await _tls_reloaded(f, before)
        assert await _served_certificate(port, trusting) == _der(renewed_cert)
        assert [e["action"] for e in f.audit.entries()][-1] == "tls_reload"
        status, me = await f.call("POST", "/login", "A1")
        assert status == 200 and me["state"] == "paused"
        assert (await next_event(ws, "state"))["state"] == "paused"  # the old stream still delivers
        await f.stop()

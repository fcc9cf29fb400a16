"""Helpers for the security tests: a throwaway CA, private brokers started from scripts/brokers,
a round trip and an expected refusal through unimq."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import ipaddress
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import unimq
from unimq.errors import UnimqError

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path  #: unencrypted PKCS#8
    other_ca: Path  #: a CA that did not sign the server's certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_pki(root: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost, and an unrelated CA, under ``root``."""
    ca_key, ca_cert = _ca("unimq test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (root / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (root / "server.pem").write_bytes(cert.public_bytes(pem))
    (root / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (root / "other-ca.pem").write_bytes(_ca("someone else")[1].public_bytes(pem))
    return Pki(root / "ca.pem", root / "server.pem", root / "server.key", root / "other-ca.pem")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unavailable(problem: str) -> NoReturn:
    """Like a missing broker (tests/conftest.py): a failure in CI, a skip locally."""
    if os.environ.get("CI") == "true":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


def scripts_brokers() -> Any:
    """scripts/brokers.py as a module: its broker classes start private instances for a test."""
    spec = importlib.util.spec_from_file_location("unimq_scripts_brokers", ROOT / "scripts" / "brokers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def running(broker: Any, timeout: float = 60.0) -> Iterator[None]:
    """Start a private scripts/brokers instance, wait until it serves (≤ ``timeout`` s), stop it after."""
    broker.start_timeout = timeout
    broker.stop_timeout = 15.0
    started = time.monotonic()
    broker.spawn()
    try:
        while not broker.startup_done(started):
            time.sleep(0.2)
        print(f"{broker.name} private instance up in {time.monotonic() - started:.1f}s")
        yield
    finally:
        broker.stop()


async def roundtrip(url: str, receive_timeout: float = 10.0) -> None:
    """Ensure, send, receive and ack one message, delete the destination; bounded in time."""
    dest = f"sec-{uuid.uuid4().hex[:8]}"
    async with asyncio.timeout(receive_timeout + 20), unimq.connect(url) as broker:
        await broker.ensure(dest)
        await broker.producer(dest).send(b"secure")
        async with broker.consumer(dest) as reader:
            delivery = await reader.receive(timeout=receive_timeout)
            assert delivery is not None and delivery.message.body == b"secure"
            await delivery.ack()
        await broker.delete(dest)


async def refused(url: str, *words: str, secrets: tuple[str, ...], kind: type[UnimqError] = UnimqError,
                  **options: Any) -> UnimqError:
    """Connecting and sending fail within 30 s with a ``kind`` naming one of ``words`` and none of ``secrets``."""
    with pytest.raises(kind) as info:
        async with asyncio.timeout(30), unimq.connect(url, **options) as broker:
            await broker.producer(f"sec-{uuid.uuid4().hex[:8]}", retry=None).send(b"x")
    text = str(info.value).lower()
    assert any(w.lower() in text for w in words), f"{info.value!r} names none of {words}"
    assert not any(secret in str(info.value) or secret in repr(info.value) for secret in secrets)
    print(f"refused as expected: {info.value!r}"[:300])
    return info.value

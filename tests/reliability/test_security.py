"""Security options exercised against brokers the tests start themselves, with a throwaway CA.

Redis: an ACL user over TLS (``rediss://``). NATS: user/password over TLS, and a token. Each
server binds 127.0.0.1 on a free port, lives only for its test, and is killed afterwards.
What is not covered here (Kafka SASL/SCRAM and TLS, RabbitMQ TLS) is listed in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import unimq
from unimq import registry
from unimq.errors import UnimqError

PASSWORD = f"pw-{uuid.uuid4().hex[:10]}"
TOKEN = f"tok-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost, and an unrelated CA."""
    root = tmp_path_factory.mktemp("pki")
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[list[str], int], None]]:
    """``server(argv, port)``: start a broker process, wait (≤ 15 s) for its port; killed after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], port: int) -> None:
        if shutil.which(argv[0]) is None:
            pytest.fail(f"{argv[0]} is not installed (scripts/brokers up installs it)")
        log = open(tmp_path / f"{Path(argv[0]).name}-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (tmp_path / f"{Path(argv[0]).name}-{port}.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"{argv[0]} did not listen on {port} within 15 s"
                time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _roundtrip(url: str) -> None:
    dest = f"sec-{uuid.uuid4().hex[:8]}"
    async with asyncio.timeout(30), unimq.connect(url) as broker:
        await broker.ensure(dest)
        await broker.producer(dest).send(b"secure")
        async with broker.consumer(dest) as reader:
            delivery = await reader.receive(timeout=10)
            assert delivery is not None and delivery.message.body == b"secure"
            await delivery.ack()
        await broker.delete(dest)


async def _refused(url: str, *words: str) -> UnimqError:
    """Connecting and sending must fail with a UnimqError naming one of ``words``, within 30 s."""
    options: dict[str, Any] = {"connect_attempts": 1} if url.startswith(("nats", "tls")) else {}
    with pytest.raises(UnimqError) as info:
        async with asyncio.timeout(30), unimq.connect(url, **options) as broker:
            await broker.producer(f"sec-{uuid.uuid4().hex[:8]}", retry=None).send(b"x")
    text = str(info.value).lower()
    assert any(w.lower() in text for w in words), f"{info.value!r} names none of {words}"
    assert PASSWORD not in str(info.value) and TOKEN not in str(info.value)
    print(f"refused as expected: {info.value!r}"[:300])
    return info.value


# Redis: ACL user over TLS ---------------------------------------------------------------------

needs_redis = pytest.mark.skipif("rediss" not in registry.installed(), reason="unimq-redis is not installed")


@needs_redis
async def test_redis_acl_user_over_tls(pki: Pki, server: Callable[[list[str], int], None], tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "redis.conf").write_text(
        f"bind 127.0.0.1\nport 0\ntls-port {port}\ntls-cert-file {pki.cert}\ntls-key-file {pki.key}\n"
        f"tls-ca-cert-file {pki.ca}\ntls-auth-clients no\nsave \"\"\nappendonly no\ndir {tmp_path}\n"
        "user default off\n"
        f"user alice on >{PASSWORD} ~sec-* &* +@all\n"
    )
    server(["redis-server", str(tmp_path / "redis.conf")], port)
    base = f"127.0.0.1:{port}/0?ssl_ca_certs={pki.ca}"
    await _roundtrip(f"rediss://alice:{PASSWORD}@{base}")
    await _refused(f"rediss://alice:wrong-{PASSWORD}@{base}", "WRONGPASS", "invalid username-password", "auth")
    await _refused(f"rediss://alice:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={pki.other_ca}",
                   "certificate", "ssl", "tls")
    await _refused(f"redis://alice:{PASSWORD}@127.0.0.1:{port}/0", "connection", "closed", "reset", "timeout")
    # The ACL limits alice to keys sec-*: another destination is refused, and says so.
    async with asyncio.timeout(30), unimq.connect(f"rediss://alice:{PASSWORD}@{base}") as broker:
        with pytest.raises(UnimqError, match=r"(?i)noperm|permission"):
            await broker.producer("forbidden-dest", retry=None).send(b"x")


# NATS: user/password over TLS, and a token ----------------------------------------------------

needs_nats = pytest.mark.skipif("nats" not in registry.installed(), reason="unimq-nats is not installed")


@needs_nats
async def test_nats_user_password_over_tls(pki: Pki, server: Callable[[list[str], int], None], tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "nats.conf").write_text(
        f'host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: "{tmp_path / "js"}", max_file_store: 64MB }}\n'
        f'authorization {{ user: alice, password: "{PASSWORD}" }}\n'
        f'tls {{ cert_file: "{pki.cert}", key_file: "{pki.key}", timeout: 2 }}\n'
    )
    server(["nats-server", "-c", str(tmp_path / "nats.conf")], port)
    await _roundtrip(f"tls://alice:{PASSWORD}@127.0.0.1:{port}?ca={pki.ca}")
    await _refused(f"tls://alice:wrong@127.0.0.1:{port}?ca={pki.ca}", "authorization", "auth")
    await _refused(f"tls://alice:{PASSWORD}@127.0.0.1:{port}?ca={pki.other_ca}", "certificate", "ssl", "tls")


@needs_nats
async def test_nats_token(server: Callable[[list[str], int], None], tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "nats.conf").write_text(
        f'host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: "{tmp_path / "js"}", max_file_store: 64MB }}\n'
        f'authorization {{ token: "{TOKEN}" }}\n'
    )
    server(["nats-server", "-c", str(tmp_path / "nats.conf")], port)
    await _roundtrip(f"nats://127.0.0.1:{port}?token={TOKEN}")
    await _refused(f"nats://127.0.0.1:{port}?token=wrong-{TOKEN}", "authorization", "auth")
    await _refused(f"nats://127.0.0.1:{port}", "authorization", "auth")

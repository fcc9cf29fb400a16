"""Security options exercised against brokers the tests start themselves, with a throwaway CA.

Redis: an ACL user over TLS (``rediss://``). NATS: user/password over TLS, and a token. Each
server binds 127.0.0.1 on a free port, lives only for its test, and is killed afterwards.
Kafka (SASL/SCRAM, TLS) and RabbitMQ (TLS) are in test_security_kafka.py and test_security_rabbitmq.py.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from security_support import Pki, free_port, refused, roundtrip, scripts_brokers

import unimq
from unimq import registry
from unimq.errors import UnimqError

PASSWORD = f"pw-{uuid.uuid4().hex[:10]}"
TOKEN = f"tok-{uuid.uuid4().hex[:10]}"


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


async def _refused(url: str, *words: str, kind: type[UnimqError] = UnimqError) -> UnimqError:
    options: dict[str, Any] = {"connect_attempts": 1} if url.startswith(("nats", "tls")) else {}
    return await refused(url, *words, secrets=(PASSWORD, TOKEN), kind=kind, **options)


# Redis: ACL user over TLS ---------------------------------------------------------------------

needs_redis = pytest.mark.skipif("rediss" not in registry.installed(), reason="unimq-redis is not installed")


@needs_redis
async def test_redis_acl_user_over_tls(pki: Pki, server: Callable[[list[str], int], None], tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "redis.conf").write_text(
        f"bind 127.0.0.1\nport 0\ntls-port {port}\ntls-cert-file {pki.cert}\ntls-key-file {pki.key}\n"
        f"tls-ca-cert-file {pki.ca}\ntls-auth-clients no\nsave \"\"\nappendonly no\ndir {tmp_path}\n"
        "user default off\n"
        f"user alice on >{PASSWORD} ~sec-* &* +@all\n"
    )
    server(["redis-server", str(tmp_path / "redis.conf")], port)
    base = f"127.0.0.1:{port}/0?ssl_ca_certs={pki.ca}"
    await roundtrip(f"rediss://alice:{PASSWORD}@{base}")
    await _refused(f"rediss://alice:wrong-{PASSWORD}@{base}", "WRONGPASS", "invalid username-password", "auth",
                   kind=unimq.AuthenticationError)
    await _refused(f"rediss://alice:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={pki.other_ca}",
                   "certificate", "ssl", "tls")
    await _refused(f"redis://alice:{PASSWORD}@127.0.0.1:{port}/0", "connection", "closed", "reset", "timeout")
    # The ACL limits alice to keys sec-*: another destination is refused, and says so.
    async with asyncio.timeout(30), unimq.connect(f"rediss://alice:{PASSWORD}@{base}") as broker:
        with pytest.raises(UnimqError, match=r"(?i)noperm|permission"):
            await broker.producer("forbidden-dest", retry=None).send(b"x")


# NATS: user/password over TLS, and a token ----------------------------------------------------

needs_nats = pytest.mark.skipif("nats" not in registry.installed(), reason="unimq-nats is not installed")


def nats_server() -> str:
    """The nats-server scripts/brokers builds (built now if it is not there yet)."""
    nats = scripts_brokers().Nats()
    nats.install()
    return str(nats.binary)


@needs_nats
async def test_nats_user_password_over_tls(pki: Pki, server: Callable[[list[str], int], None], tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "nats.conf").write_text(
        f'host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: "{tmp_path / "js"}", max_file_store: 64MB }}\n'
        f'authorization {{ user: alice, password: "{PASSWORD}" }}\n'
        f'tls {{ cert_file: "{pki.cert}", key_file: "{pki.key}", timeout: 2 }}\n'
    )
    server([nats_server(), "-c", str(tmp_path / "nats.conf")], port)
    await roundtrip(f"tls://alice:{PASSWORD}@127.0.0.1:{port}?ca={pki.ca}")
    await _refused(f"tls://alice:wrong@127.0.0.1:{port}?ca={pki.ca}", "authorization", "auth",
                   kind=unimq.AuthenticationError)
    await _refused(f"tls://alice:{PASSWORD}@127.0.0.1:{port}?ca={pki.other_ca}", "certificate", "ssl", "tls")


@needs_nats
async def test_nats_token(server: Callable[[list[str], int], None], tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "nats.conf").write_text(
        f'host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: "{tmp_path / "js"}", max_file_store: 64MB }}\n'
        f'authorization {{ token: "{TOKEN}" }}\n'
    )
    server([nats_server(), "-c", str(tmp_path / "nats.conf")], port)
    await roundtrip(f"nats://127.0.0.1:{port}?token={TOKEN}")
    await roundtrip(f"nats://{TOKEN}@127.0.0.1:{port}")  # the NATS token URL form: a token, not a user
    await _refused(f"nats://127.0.0.1:{port}?token=wrong-{TOKEN}", "authorization", "auth",
                   kind=unimq.AuthenticationError)
    await _refused(f"nats://wrong-{TOKEN}@127.0.0.1:{port}", "authorization", "auth",
                   kind=unimq.AuthenticationError)
    await _refused(f"nats://127.0.0.1:{port}", "authorization", "auth")

"""Cluster URLs (docs/reliability.md "Clusters"): a host that does not answer is skipped and logged
once; no host answering is a BrokerConnectionError naming the hosts and never the password; a
single-node Redis URL pointing at a Redis Cluster node is a ConfigError saying what to change."""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any

import pytest

import unimq
from unimq.errors import BrokerConnectionError, ConfigError

pytestmark = pytest.mark.cluster
SECRET = "not-the-password-" + uuid.uuid4().hex[:6]


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _hosts(url: str) -> str:
    return url.split("://", 1)[1].split("@")[-1].split("/")[0].split("?")[0]


def _with_hosts(url: str, hosts: str) -> str:
    return url.replace(_hosts(url), hosts, 1)


@pytest.mark.parametrize("backend", ["rabbitmq-cluster", "nats-cluster", "kafka-cluster"])
async def test_a_dead_host_is_skipped(cluster: Any, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"127.0.0.1:{_dead_port()}"
    url = _with_hosts(cluster.url, f"{dead},{_hosts(cluster.url)}")
    dest = f"urls-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING):
        async with unimq.connect(url) as broker:
            await broker.ensure(dest)
            await broker.producer(dest).send(b"x")
            await broker.delete(dest)
    if backend == "rabbitmq-cluster":
        notes = [r for r in caplog.records if r.name == "unimq.rabbitmq" and dead in r.getMessage()]
        assert len(notes) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("backend", ["rabbitmq-cluster", "nats-cluster", "kafka-cluster"])
async def test_no_host_answering_names_the_hosts(cluster: Any, backend: str) -> None:
    dead = [f"127.0.0.1:{_dead_port()}" for _ in range(2)]
    url = _with_hosts(cluster.url, ",".join(dead))
    if backend == "rabbitmq-cluster":
        url = url.replace("guest:guest@", f"guest:{SECRET}@")
    with pytest.raises(BrokerConnectionError) as caught:
        async with unimq.connect(url) as broker:
            await broker.producer("urls-none").send(b"x")
    text = str(caught.value)
    assert dead[0] in text
    assert SECRET not in text


@pytest.mark.parametrize("backend", ["redis-cluster"])
async def test_a_single_node_redis_url_on_a_cluster_node_is_refused(cluster: Any, backend: str) -> None:
    with pytest.raises(ConfigError, match=r"Redis Cluster node.*standalone.*redis\+cluster://"):
        async with unimq.connect(f"redis://127.0.0.1:{cluster.nodes[0].port}/0") as broker:
            await broker.producer("urls-none").send(b"x")


@pytest.mark.parametrize("backend", ["redis-cluster"])
async def test_redis_cluster_dead_hosts(cluster: Any, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    """A dead seed is skipped and logged once; no seed answering names the hosts, not the password."""
    dead = f"127.0.0.1:{_dead_port()}"
    dest = f"urls-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING):
        async with unimq.connect(_with_hosts(cluster.url, f"{dead},{_hosts(cluster.url)}")) as broker:
            await broker.ensure(dest)
            await broker.producer(dest).send(b"x")
            await broker.delete(dest)
    notes = [r for r in caplog.records if r.name == "unimq.redis" and dead in r.getMessage()]
    assert len(notes) == 1, [r.getMessage() for r in caplog.records]
    nobody = [f"127.0.0.1:{_dead_port()}" for _ in range(2)]
    with pytest.raises(BrokerConnectionError) as caught:
        await unimq.connect(f"redis+cluster://user:{SECRET}@{','.join(nobody)}")
    assert nobody[0] in str(caught.value) and SECRET not in str(caught.value)

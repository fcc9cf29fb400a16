"""Redis Cluster (``redis+cluster://``): key placement, URL errors, a destination and the idempotency store."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from unimq_redis import RedisDriver
from unimq_redis.driver import RedisOptions
from unimq_redis.idempotency import RedisStore

import unimq
from unimq.errors import BrokerConnectionError, ConfigError
from unimq.idempotency import Claim
from unimq.url import parse_url


def _driver(url: str, prefix: str = "") -> RedisDriver:
    return RedisDriver(parse_url(url), RedisOptions(prefix=prefix))


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("prefix", "name"), [("", "orders"), ("app:", "orders"), ("", "a{b"), ("", "orders:dlq")])
def test_every_key_of_a_destination_shares_the_stream_slot(prefix: str, name: str) -> None:
    driver = _driver("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", prefix)
    stream = driver.key(name)
    assert stream == prefix + name  # the stream keeps the name other Redis clients use
    aux = [driver.key(name, s) for s in (":delayed", ":delayed:g", ":config", ":dedup:m-1")]
    assert aux[2] == "{" + prefix + name + "}:config"
    assert {key_slot(k.encode()) for k in aux} == {key_slot(stream.encode())}


def test_a_hash_tagged_name_keeps_the_standalone_key_names() -> None:
    cluster, single = _driver("redis+cluster://127.0.0.1:7000", "{app}:"), _driver("redis://127.0.0.1/0", "{app}:")
    for suffix in ("", ":delayed", ":config", ":dedup:x"):
        assert cluster.key("orders", suffix) == single.key("orders", suffix)


def test_standalone_key_names_are_unchanged() -> None:
    driver = _driver("redis://127.0.0.1/0", "app:")
    assert [driver.key("o", s) for s in ("", ":dlq", ":delayed:g", ":config")] == [
        "app:o", "app:o:dlq", "app:o:delayed:g", "app:o:config"]


def test_a_name_that_cannot_share_a_slot_is_refused() -> None:
    with pytest.raises(ConfigError, match="hash tag"):
        _driver("redis+cluster://127.0.0.1:7000").key("a}b", ":config")


def test_cluster_url_errors() -> None:
    with pytest.raises(ConfigError, match="database 0 only"):
        _driver("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(ConfigError, match=r"redis\+cluster://"):
        _driver("redis://127.0.0.1:7000,127.0.0.1:7001/0")


async def test_no_host_answering_names_the_hosts_not_the_password() -> None:
    dead = [f"127.0.0.1:{_dead_port()}" for _ in range(2)]
    with pytest.raises(BrokerConnectionError) as caught:
        await unimq.connect(f"redis+cluster://u:hunter2secret@{','.join(dead)}")
    assert dead[0] in str(caught.value) and dead[1] in str(caught.value)
    assert "hunter2secret" not in str(caught.value) and caught.value.retryable


async def test_a_cluster_url_on_a_standalone_redis_is_refused(redis_url: str) -> None:
    host = parse_url(redis_url)
    with pytest.raises(ConfigError, match=r"standalone Redis.*redis://"):
        await unimq.connect(f"redis+cluster://{host.host}:{host.port}")


@pytest.mark.needs_broker("redis-cluster")
async def test_a_destination_on_a_cluster(broker_url: Callable[[str], str]) -> None:
    url = broker_url("redis-cluster")
    hosts = url.split("://", 1)[1].split("?")[0]
    dest = f"t-rc-{uuid.uuid4().hex[:10]}"
    async with unimq.connect(f"redis+cluster://127.0.0.1:{_dead_port()},{hosts}", maintenance_interval=0.1) as broker:
        await broker.ensure(dest, groups=("g",), dead_letter=True, deduplication=60)
        producer = broker.producer(dest)
        await producer.send(b"once", message_id="m-1")
        await producer.send(b"once", message_id="m-1")
        await producer.send_many([b"a", b"b"])
        assert dest in await broker.destinations() and f"{dest}:dlq" in await broker.destinations()
        async with broker.consumer(dest, "g") as consumer:
            got = await consumer.receive_many(10, 2.0)
            assert [d.message.body for d in got] == [b"once", b"a", b"b"]
            await got[0].reject("bad")
            for delivery in got[1:]:
                await delivery.ack()
        async with broker.consumer(f"{dest}:dlq") as dlq:
            assert [d.message.body for d in await dlq.receive_many(5, 2.0)] == [b"once"]
        await broker.delete(dest)
        assert dest not in await broker.destinations()
    plain = RedisCluster.from_url("redis://" + hosts.split(",")[0])
    try:
        leftovers = [k async for k in plain.scan_iter(match=f"*{dest}*")]
    finally:
        await plain.aclose()
    assert leftovers == []


@pytest.mark.needs_broker("redis-cluster")
async def test_the_idempotency_store_on_a_cluster(broker_url: Callable[[str], str]) -> None:
    store = RedisStore(broker_url("redis-cluster"), prefix=f"t-rc-once-{uuid.uuid4().hex[:8]}:")
    try:
        assert (await store.claim("k", "w1"))[0] is Claim.CLAIMED
        assert (await store.claim("k", "w2"))[0] is Claim.BUSY
        assert await store.commit("k", "w1") and await store.processed("k")
        assert (await store.claim("k", "w2"))[0] is Claim.DONE
    finally:
        await store._redis.delete(store.prefix + "k")
        await store.close()

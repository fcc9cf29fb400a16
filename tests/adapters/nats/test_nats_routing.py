"""Native routing on NATS JetStream (``?routing=subjects``), on a private nats-server: a routing
subject is the NATS subject ``<dest>.<subject>`` and a group's durable filters on its pattern, so the
server never delivers what the group does not want. The durables' own counts (``num_pending``,
``delivered``) are read with plain nats-py: they would be higher if only the core filtered."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.js import JetStreamContext, api
from nats_support import free_port, private_server
from unimq_nats.mapping import stream_name

import unimq

SUBJECTS = ("orders.eu.created", "orders.us.created", "orders.eu.paid", "billing.eu.created", "orders")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private JetStream nats-server on a free port."""
    store = tmp_path_factory.mktemp("nats-routing")
    port = free_port()
    with private_server(["-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)], port, store / "nats.log"):
        yield f"nats://127.0.0.1:{port}"


@pytest.fixture
async def routed(server: str) -> AsyncIterator[unimq.Broker]:
    async with unimq.connect(server + "?routing=subjects") as broker:
        yield broker


@pytest.fixture
async def js(server: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(server)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
def dest() -> str:
    return f"rt.{uuid.uuid4().hex[:8]}"


async def send_all(broker: unimq.Broker, dest: str) -> None:
    producer = broker.producer(dest)
    for subject in SUBJECTS:
        await producer.send(subject.encode(), subject=subject)
    await producer.send(b"no subject")


async def narrow(broker: unimq.Broker, dest: str, group: str, subject: str | None) -> None:
    """Open and close a consumer: the durable's filter it leaves is what the test checks."""
    async with broker.consumer(dest, group, subject=subject):
        pass


async def drain(broker: unimq.Broker, dest: str, group: str, subject: str | None) -> list[bytes]:
    """Everything the group receives, acked, until nothing comes for 0.5 s."""
    got = []
    async with broker.consumer(dest, group, subject=subject) as consumer:
        while (delivery := await consumer.receive(timeout=0.5)) is not None:
            got.append(delivery.message.body)
            await delivery.ack()
    return sorted(got)


async def durable(js: JetStreamContext, dest: str, group: str) -> api.ConsumerInfo:
    info: api.ConsumerInfo = await js.consumer_info(stream_name(dest), group)
    return info


async def test_two_patterns_get_their_share_and_the_server_delivers_only_that(
        routed: unimq.Broker, js: JetStreamContext, dest: str) -> None:
    await routed.ensure(dest, groups=("eu", "created"))
    await narrow(routed, dest, "eu", "orders.eu.*")
    await narrow(routed, dest, "created", "orders.*.created")
    await send_all(routed, dest)
    stream = await js.stream_info(stream_name(dest), subjects_filter=">")
    assert stream.config.subjects == [dest, f"{dest}.>"]
    assert stream.state.subjects == {dest: 1, **{f"{dest}.{s}": 1 for s in SUBJECTS}}
    assert (await durable(js, dest, "eu")).num_pending == 2
    assert (await durable(js, dest, "created")).num_pending == 2
    assert await drain(routed, dest, "eu", "orders.eu.*") == [b"orders.eu.created", b"orders.eu.paid"]
    assert await drain(routed, dest, "created", "orders.*.created") == [b"orders.eu.created", b"orders.us.created"]
    for group in ("eu", "created"):
        info = await durable(js, dest, group)
        assert info.delivered is not None and info.delivered.consumer_seq == 2, group
    await routed.delete(dest)


async def test_a_hash_at_the_end_and_in_the_middle(routed: unimq.Broker, js: JetStreamContext, dest: str) -> None:
    """``orders.#`` filters [<dest>.orders, <dest>.orders.>] (the zero-token case included); ``#.created``
    has no NATS form: the durable takes every routed message and the core keeps the matching ones."""
    await routed.ensure(dest, groups=("tail", "mid"))
    await narrow(routed, dest, "tail", "orders.#")
    await narrow(routed, dest, "mid", "#.created")
    await send_all(routed, dest)
    tail = await durable(js, dest, "tail")
    assert sorted(tail.config.filter_subjects or []) == [f"{dest}.orders", f"{dest}.orders.>"]
    assert tail.num_pending == 4
    assert (await durable(js, dest, "mid")).config.filter_subject == f"{dest}.>"
    assert await drain(routed, dest, "tail", "orders.#") == sorted(s.encode() for s in SUBJECTS if s[0] == "o")
    assert await drain(routed, dest, "mid", "#.created") == [
        b"billing.eu.created", b"orders.eu.created", b"orders.us.created"]
    await routed.delete(dest)


async def test_a_group_without_subject_gets_everything(routed: unimq.Broker, js: JetStreamContext, dest: str) -> None:
    await routed.ensure(dest, groups=("all",))
    await send_all(routed, dest)
    assert await drain(routed, dest, "all", None) == sorted([b"no subject", *(s.encode() for s in SUBJECTS)])
    await routed.delete(dest)


async def test_a_plain_nats_publisher_reaches_a_matching_group(
        routed: unimq.Broker, js: JetStreamContext, dest: str) -> None:
    await routed.ensure(dest, groups=("eu",))
    await narrow(routed, dest, "eu", "orders.eu.*")
    await js.publish(f"{dest}.orders.eu.x", b"raw")
    await js.publish(f"{dest}.orders.us.x", b"other")
    async with routed.consumer(dest, "eu", subject="orders.eu.*") as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None and got.message.body == b"raw" and got.message.subject == "orders.eu.x"
        await got.ack()
        assert await consumer.receive(timeout=0.3) is None
    await routed.delete(dest)


async def test_the_last_consumer_to_open_sets_the_filter(
        routed: unimq.Broker, js: JetStreamContext, dest: str) -> None:
    await routed.ensure(dest, groups=("g",))
    assert (await durable(js, dest, "g")).config.filter_subject is None
    await narrow(routed, dest, "g", "orders.eu.*")
    await narrow(routed, dest, "g", "orders.us.#")
    assert sorted((await durable(js, dest, "g")).config.filter_subjects or []) == [
        f"{dest}.orders.us", f"{dest}.orders.us.>"]
    await routed.ensure(dest, groups=("g",))
    assert (await durable(js, dest, "g")).config.filter_subjects
    await narrow(routed, dest, "g", None)
    info = await durable(js, dest, "g")
    assert not info.config.filter_subject and not info.config.filter_subjects
    await routed.delete(dest)


async def test_dead_letters_keep_their_subject_outside_the_destination(
        routed: unimq.Broker, js: JetStreamContext, dest: str) -> None:
    await routed.ensure(dest, groups=("eu",))
    assert routed.dead_letter_destination(dest) == f"{dest}-dlq"
    await routed.producer(dest).send(b"bad", subject="orders.eu.created")
    async with routed.consumer(dest, "eu", subject="orders.eu.*") as consumer:
        got = await consumer.receive(timeout=5)
        assert got is not None
        await got.reject("broken")
    stream = await js.stream_info(stream_name(f"{dest}-dlq"), subjects_filter=">")
    assert stream.state.subjects == {f"{dest}-dlq.orders.eu.created": 1}
    async with routed.consumer(f"{dest}-dlq") as dead:
        copy = await dead.receive(timeout=5)
        assert copy is not None and copy.message.subject == "orders.eu.created"
        await copy.ack()
    await routed.delete(dest)


async def test_without_the_option_nothing_changes_and_the_modes_do_not_mix(
        server: str, routed: unimq.Broker, js: JetStreamContext, dest: str) -> None:
    async with unimq.connect(server) as plain:
        assert not plain.capabilities.routing.is_native and routed.capabilities.routing.is_native
        await plain.ensure(dest, groups=("eu",))
        await narrow(plain, dest, "eu", "orders.eu.*")
        await send_all(plain, dest)
        stream = await js.stream_info(stream_name(dest), subjects_filter=">")
        assert stream.config.subjects == [dest] and stream.state.subjects == {dest: 6}
        eu = await durable(js, dest, "eu")
        assert eu.config.filter_subject == dest and eu.num_pending == 6
        assert plain.dead_letter_destination(dest) == f"{dest}.dlq"
        assert await drain(plain, dest, "eu", "orders.eu.*") == [b"orders.eu.created", b"orders.eu.paid"]
        with pytest.raises(unimq.ConfigError, match=r"made without \?routing=subjects"):
            await routed.ensure(dest)
        with pytest.raises(unimq.PublishError, match=r"made without \?routing=subjects"):
            await routed.producer(dest).send(b"x", subject="orders.eu.created")
        await plain.ensure(f"{dest}-r.child")
        with pytest.raises(unimq.ConfigError, match=r"cannot create stream .* subjects overlap"):
            await routed.ensure(f"{dest}-r")
        await routed.ensure(f"{dest}-s")
        with pytest.raises(unimq.PublishError, match=r"connect with \?routing=subjects"):
            await plain.producer(f"{dest}-s").send(b"x")
        for name in (dest, f"{dest}-r.child"):
            await plain.delete(name)
        await routed.delete(f"{dest}-s")


@pytest.mark.parametrize("query", ["routing=subjects&stream=MINE", "routing=subjects&jetstream=false"])
async def test_routing_needs_a_stream_per_destination(server: str, query: str) -> None:
    with pytest.raises(unimq.ConfigError, match="routing=subjects needs JetStream and a stream per destination"):
        async with unimq.connect(f"{server}?{query}"):
            pass


async def test_an_unknown_routing_mode_is_refused(server: str) -> None:
    with pytest.raises(unimq.ConfigError, match="option 'routing'"):
        async with unimq.connect(f"{server}?routing=wildcards"):
            pass

"""Queue operations on every backend: dead letters with their reasons, redrive without loss, purge, health."""

from __future__ import annotations

import pytest

import unimq
from unimq.reliability import DEAD_LETTER_REASON
from unimq.testing.brokers import Timing
from unimq.testing.conformance.support import bodies, collect, collect_all, queue
from unimq.testing.plugin import Names

pytestmark = pytest.mark.asyncio


async def _reject_all(broker: unimq.Broker, dest: str, group: str | None, sent: list[bytes],
                      timing: Timing) -> None:
    async with broker.consumer(dest, group) as consumer:
        for delivery in await collect(consumer, len(sent), timing, ack=False):
            await delivery.reject(reason=f"bad {delivery.message.body.decode()}")


@pytest.mark.requires("dead_letter")
async def test_dead_letters_list_reasons_and_redrive_moves_them_back(broker: unimq.Broker, names: Names,
                                                                    timing: Timing) -> None:
    dest, group = await queue(broker, names)
    sent = bodies(3, "dl")
    await broker.producer(dest).send_many(sent)
    await _reject_all(broker, dest, group, sent, timing)

    letters = await broker.dead_letters(dest, count=10)
    assert sorted(letter.message.body for letter in letters) == sorted(sent)
    for letter in letters:
        assert letter.reason == f"bad {letter.message.body.decode()}"
        assert letter.source in (dest, None)

    report = await broker.redrive(dest, filter=lambda letter: letter.message.body != b"dl-2")
    assert (report.moved, report.failed) == (2, 0), report
    async with broker.consumer(dest, group) as consumer:
        back = await collect_all(consumer, [b"dl-0", b"dl-1"], timing)
    # A redriven message starts again: no dead-letter headers (its attempt count restarts where unimq
    # counts it; a broker that counts receives itself, like SQS, counts the copy as a new message).
    assert not any(DEAD_LETTER_REASON in d.message.headers for d in back)
    assert {d.message.message_id for d in back} <= {letter.message.message_id for letter in letters}
    remaining = await broker.dead_letters(dest, count=10)
    assert [letter.message.body for letter in remaining] == [b"dl-2"]


@pytest.mark.requires("dead_letter")
async def test_purge_empties_a_destination_and_its_dead_letters(broker: unimq.Broker, names: Names,
                                                                timing: Timing) -> None:
    dest, group = await queue(broker, names)
    await broker.producer(dest).send_many(bodies(3, "bad"))
    await _reject_all(broker, dest, group, bodies(3, "bad"), timing)
    await broker.producer(dest).send_many(bodies(5, "p"))
    assert await broker.purge(dest, group) == 5
    assert await broker.purge(dest, dead_letters=True) == 3
    async with broker.consumer(dest, group) as consumer:
        assert await consumer.receive(timeout=timing.quiet) is None
    assert await broker.dead_letters(dest) == []


async def test_health_answers(broker: unimq.Broker) -> None:
    health = await broker.health()
    assert health.ok, health.error
    assert health.rtt_ms is not None and health.rtt_ms >= 0


@pytest.mark.requires("dead_letter", "deduplication")
async def test_redrive_is_not_swallowed_by_deduplication(broker: unimq.Broker, names: Names,
                                                         timing: Timing) -> None:
    """A redriven copy keeps its message id but gets its own de-duplication key: not dropped as a repeat."""
    caps = broker.capabilities_for(names.dest)
    window = min(60.0, caps.deduplication.limit or 60.0)
    try:
        dest, group = await queue(broker, names, deduplication=window)
    except unimq.CapabilityError as exc:
        pytest.skip(f"ensure(deduplication=) refused here: {exc}")
    await broker.producer(dest).send(b"again")
    await _reject_all(broker, dest, group, [b"again"], timing)
    report = await broker.redrive(dest)
    assert report.moved == 1, report
    async with broker.consumer(dest, group) as consumer:
        await collect_all(consumer, [b"again"], timing)

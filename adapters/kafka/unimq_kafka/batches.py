"""``send_many`` as whole record batches, one future per batch instead of one per record.

``AIOKafkaProducer.send()`` runs several Python layers per record (metadata wait, partitioner,
accumulator, a future); for a batch the adapter fills aiokafka's ``BatchBuilder`` itself (one call
into its C record builder per record) and hands each full builder to ``send_batch``. Records are
partitioned as aiokafka's ``send()`` would: by the key's murmur2 hash (same partition as every
other Kafka client for that key), unkeyed ones sticking to one partition per batch, as the Java
client's sticky partitioner does. A batch's outcome is the outcome of each record in it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]

from unimq.message import Message
from unimq_kafka.mapping import timestamp_ms, to_headers, to_key

_partitioner = DefaultPartitioner()


async def publish_batches(
    producer: Any, topic: str, messages: Sequence[Message], failed: Callable[[BaseException], BaseException],
) -> list[BaseException | None]:
    """Send ``messages`` to ``topic``; per message, None or the (mapped by ``failed``) error."""
    partitions = sorted(await producer.partitions_for(topic))
    results: list[BaseException | None] = [None] * len(messages)
    open_batches: dict[int, tuple[Any, list[int]]] = {}  # partition -> (builder, message indexes)
    submitted: list[tuple[asyncio.Future[Any], list[int]]] = []
    by_key: dict[bytes, int] = {}
    sticky = random.choice(partitions)

    async def submit(partition: int) -> None:
        builder, members = open_batches.pop(partition)
        builder.close()  # a closed builder is sent at once, without lingering
        try:
            submitted.append((await producer.send_batch(builder, topic, partition=partition), members))
        except Exception as exc:
            for index in members:
                results[index] = failed(exc)

    for index, message in enumerate(messages):
        key = to_key(message)
        if key is None:
            partition = sticky
        else:
            partition = by_key.get(key, -1)
            if partition < 0:
                partition = by_key[key] = _partitioner(key, partitions, partitions)
        body, headers, timestamp = message.body, to_headers(message), timestamp_ms(message)
        entry = open_batches.get(partition) or open_batches.setdefault(partition, (producer.create_batch(), []))
        if entry[0].append(timestamp=timestamp, key=key, value=body, headers=headers) is None:
            added = False
            if entry[1]:  # the batch is full: send it, then start the next one with this record
                await submit(partition)
                if key is None:
                    sticky = partition = random.choice(partitions)
                entry = open_batches.setdefault(partition, (producer.create_batch(), []))
                added = entry[0].append(timestamp=timestamp, key=key, value=body, headers=headers) is not None
            if not added:  # larger than a batch on its own: send() sizes a batch for it, or says why not
                try:
                    future = await producer.send(topic, body, key=key, partition=partition,
                                                 timestamp_ms=timestamp, headers=headers)
                except Exception as exc:
                    results[index] = failed(exc)
                else:
                    submitted.append((future, [index]))
                continue
        entry[1].append(index)
    for partition, (_, members) in list(open_batches.items()):
        if members:
            await submit(partition)
    if submitted:
        await asyncio.wait([future for future, _ in submitted])
    for future, members in submitted:
        error: BaseException | None = asyncio.CancelledError() if future.cancelled() else future.exception()
        if error is not None:
            for index in members:
                results[index] = failed(error)
    return results

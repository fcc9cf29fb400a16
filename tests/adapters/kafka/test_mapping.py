"""Record → Message on the consumer's hot path, without a broker."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from unimq_kafka.mapping import from_record

from unimq.message import Message


def _record(headers: list[tuple[str, bytes | None]], offset: int = 7, timestamp: int | None = 1_700_000_000_123,
            key: bytes | None = b"k") -> ConsumerRecord:
    return ConsumerRecord("t", 2, offset, timestamp, 0, key, b"body", None, 4, 0, headers)


def test_message_fields_are_in_the_order_from_record_passes_them() -> None:
    names = [f.name for f in dataclasses.fields(Message)][:8]
    assert names == ["body", "key", "headers", "message_id", "correlation_id", "reply_to", "content_type",
                     "timestamp"]


def test_mapped_and_application_headers() -> None:
    message = from_record(_record([("message-id", b"m1"), ("correlation-id", b"c1"), ("reply-to", b"r"),
                                   ("content-type", b"application/json"), ("x", b"1"), ("empty", None)]))
    assert (message.body, message.key, message.message_id) == (b"body", "k", "m1")
    assert (message.correlation_id, message.reply_to, message.content_type) == ("c1", "r", "application/json")
    assert message.headers == {"x": "1", "empty": ""}
    assert message.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


def test_stable_id_and_timestamps_per_record() -> None:
    first = from_record(_record([], offset=7, key=None))
    assert first.message_id == "t-2-7" and first.key is None
    same = from_record(_record([], offset=8))
    later = from_record(_record([], offset=9, timestamp=1_700_000_001_000))
    assert same.timestamp == first.timestamp
    assert later.timestamp == datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC)
    assert from_record(_record([], timestamp=None)).timestamp is None

"""Message ↔ Kafka record: the value is the body, untouched; metadata travels in Kafka headers.

Header names are plain, lower-case and hyphenated (like the core's ``content-encoding``), so
non-unimq applications can read and write them: ``message-id``, ``correlation-id``,
``reply-to``, ``content-type``. Header values are UTF-8; undecodable bytes round-trip through
``surrogateescape``. A record without ``message-id`` gets the stable id ``<topic>-<partition>-<offset>``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from unimq.message import Message
from unimq.reliability import EXPIRES_AT, NOT_BEFORE, epoch_ms_after

MESSAGE_ID = "message-id"
CORRELATION_ID = "correlation-id"
REPLY_TO = "reply-to"
CONTENT_TYPE = "content-type"
#: Where a dead-lettered record came from (in addition to the core's reason/source/group headers).
DEAD_LETTER_TOPIC = "x-unimq-dead-letter-topic"
DEAD_LETTER_PARTITION = "x-unimq-dead-letter-partition"
DEAD_LETTER_OFFSET = "x-unimq-dead-letter-offset"

MAPPED = frozenset((MESSAGE_ID, CORRELATION_ID, REPLY_TO, CONTENT_TYPE))
_ENC = "utf-8"
_ERR = "surrogateescape"

RecordHeaders = list[tuple[str, bytes]]


def to_headers(message: Message) -> RecordHeaders:
    """Kafka headers for ``message``: mapped fields first, then the application's headers."""
    out: RecordHeaders = [(MESSAGE_ID, message.message_id.encode(_ENC, _ERR))]
    if message.correlation_id is not None:
        out.append((CORRELATION_ID, message.correlation_id.encode(_ENC, _ERR)))
    if message.reply_to is not None:
        out.append((REPLY_TO, message.reply_to.encode(_ENC, _ERR)))
    if message.content_type is not None:
        out.append((CONTENT_TYPE, message.content_type.encode(_ENC, _ERR)))
    if message.headers:
        out += [(k, v.encode(_ENC, _ERR)) for k, v in message.headers.items() if k not in MAPPED]
    if message.delay is not None and message.delay.total_seconds() > 0:
        out.append((NOT_BEFORE, b"%d" % epoch_ms_after(message.delay.total_seconds())))
    if message.ttl is not None:
        out.append((EXPIRES_AT, b"%d" % epoch_ms_after(message.ttl.total_seconds())))
    return out


def to_key(message: Message) -> bytes | None:
    return None if message.key is None else message.key.encode(_ENC, _ERR)


def timestamp_ms(message: Message) -> int | None:
    return None if message.timestamp is None else int(message.timestamp.timestamp() * 1000)


def from_record(record: Any) -> Message:
    """A Message from an aiokafka ConsumerRecord. Duplicate header keys: the last one wins.

    The per-record hot path of every consumer: the common header (``message-id``) is tested
    first, Message is built positionally (its field order is pinned by a test), and the
    timestamp of the previous record is reused when it has the same millisecond.
    """
    headers: dict[str, str] = {}
    message_id = correlation_id = reply_to = content_type = None
    for name, raw in record.headers:
        value = raw.decode(_ENC, _ERR) if raw is not None else ""
        if name == MESSAGE_ID:
            message_id = value
        elif name not in MAPPED:
            headers[name] = value
        elif name == CORRELATION_ID:
            correlation_id = value
        elif name == REPLY_TO:
            reply_to = value
        else:
            content_type = value
    key = record.key
    value = record.value
    return Message(
        value if value is not None else b"",
        key.decode(_ENC, _ERR) if key is not None else None,
        headers,
        message_id or f"{record.topic}-{record.partition}-{record.offset}",
        correlation_id,
        reply_to,
        content_type,
        _timestamp(record.timestamp),
    )


#: The last (epoch ms, datetime) converted, in a one-slot list: a tuple swapped whole, so threads
#: never see a mismatched pair.
_last: list[tuple[int, datetime]] = [(0, datetime.fromtimestamp(0, UTC))]


def _timestamp(ms: int | None) -> datetime | None:
    """UTC datetime of epoch ``ms``; records of one producer batch mostly share the millisecond."""
    if ms is None:
        return None
    last = _last[0]
    if ms == last[0]:
        return last[1]
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    _last[0] = (ms, dt)
    return dt


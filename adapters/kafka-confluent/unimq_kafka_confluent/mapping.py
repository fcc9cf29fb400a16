"""Message ← confluent-kafka record: the reading side of :mod:`unimq_kafka.mapping`, same header
names, for librdkafka's ``Message`` (methods, not attributes). Writing uses ``unimq_kafka.mapping``
unchanged (``to_headers``, ``to_key``, ``timestamp_ms``), so both drivers put the same bytes on the wire.
"""

from __future__ import annotations

from typing import Any

from unimq_kafka.mapping import CORRELATION_ID, MAPPED, MESSAGE_ID, REPLY_TO, _timestamp

from unimq.message import Message

_ENC = "utf-8"
_ERR = "surrogateescape"
#: Timestamp types without a time (librdkafka's TIMESTAMP_NOT_AVAILABLE).
_NO_TIMESTAMP = 0


def from_message(record: Any, topic: str, partition: int, offset: int) -> Message:
    """A Message from a confluent_kafka.Message; the per-record hot path. Every ``record.x()`` is a
    C call, so the reader passes in what it read already; the common ``message-id`` header is
    tested first, the previous record's timestamp reused, the Message built positionally."""
    headers: dict[str, str] = {}
    message_id = correlation_id = reply_to = content_type = None
    raw_headers = record.headers()
    if raw_headers:
        for name, raw in raw_headers:
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
    key = record.key()
    value = record.value()
    kind, ms = record.timestamp()
    return Message(
        value if value is not None else b"",
        key.decode(_ENC, _ERR) if key is not None else None,
        headers,
        message_id or f"{topic}-{partition}-{offset}",
        correlation_id,
        reply_to,
        content_type,
        None if kind == _NO_TIMESTAMP else _timestamp(ms),
    )

"""The NATS mapping: names, headers ↔ :class:`~unimq.message.Message`, capability declarations."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta
from typing import Any

from unimq.capabilities import Capabilities, emulated, native, none
from unimq.errors import ConfigError
from unimq.message import Message
from unimq.patterns import SUBJECT
from unimq.reliability import EXPIRES_AT, NOT_BEFORE, dedup_key, epoch_ms, epoch_ms_after

#: Header names unimq's fields travel in. ``message_id`` travels as JetStream's de-duplication header
#: ``Nats-Msg-Id`` on destinations ensured with ``deduplication=``, else as ``Message-Id``: the server's
#: duplicate tracking costs a quarter of the publish rate, and memory:// does not de-duplicate either.
MSG_ID = "Nats-Msg-Id"
PLAIN_MSG_ID = "Message-Id"
CONTENT_TYPE = "Content-Type"
CORRELATION_ID = "Correlation-Id"
REPLY_TO = "Reply-To"
KEY = "Message-Key"
#: Prefix of the stream/durable description where unimq records what ensure() asked for.
MARKER = "unimq "
DEFAULT_DURABLE = "default"
#: nats-py's inbox subjects: request() reads replies there (core NATS); publish() sends to one core.
INBOX_PREFIX = "_INBOX."
#: Bytes of a message's max_payload kept for its headers: the declared max_message_bytes is the rest.
HEADER_RESERVE = 8 * 1024

#: NATS headers are MIME-like ASCII. A value that is not plain printable ASCII travels as an RFC 2047
#: encoded word (``=?utf-8?b?...?=``); a key that is not an HTTP token as ``x-unimq-u8-<base64url>``.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KEY_PREFIX = "x-unimq-u8-"
_PLAIN_VALUE = re.compile(r"([!-~]([ -~]*[!-~])?)?")
_ENCODED = re.compile(r"=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=")
_SUBJECT = re.compile(r"[^\s*>.]+(\.[^\s*>.]+)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def check_subject(destination: str) -> str:
    """A destination is a literal subject: no wildcards, no empty tokens, no whitespace."""
    if not _SUBJECT.fullmatch(destination):
        raise ConfigError(
            f"nats: destination {destination!r} is not a literal NATS subject "
            "(dot-separated tokens without spaces, '*' or '>')"
        )
    return destination


def routed_subject(destination: str, subject: str) -> str:
    """``?routing=subjects``: where a message with routing subject ``subject`` is published."""
    routed = f"{destination}.{subject}"
    if not _SUBJECT.fullmatch(routed):
        raise ConfigError(f"nats: routing subject {subject!r} is not made of NATS subject tokens; "
                          "send it with send(subject=...), which checks it")
    return routed


def routing_filters(destination: str, pattern: str | None) -> list[str]:
    """``?routing=subjects``: the filter subjects of a group's durable; [] = the whole stream.

    ``*`` is NATS's ``*``; a trailing ``#`` (zero or more tokens) is the subject before it and that
    subject + ``.>``; a ``#`` elsewhere has no NATS form, so the durable takes every routed message
    (``<destination>.>``) and the core filter does the rest.
    """
    if pattern is None:
        return []
    tokens = pattern.split(".")
    if "#" in tokens[:-1] or tokens == ["#"]:
        return [f"{destination}.>"]
    if tokens[-1] == "#":
        base = ".".join([destination, *tokens[:-1]])
        return [base, f"{base}.>"]
    return [".".join([destination, *tokens])]


def with_subject(destination: str, subject: str, headers: dict[str, str] | None) -> dict[str, str] | None:
    """``?routing=subjects``: a message stored under ``<destination>.<s>`` has routing subject ``s``,
    also when a plain NATS client published it without the header."""
    if len(subject) <= len(destination):
        return headers
    return {**(headers or {}), SUBJECT: subject[len(destination) + 1:]}


def stream_name(destination: str) -> str:
    """The stream unimq creates for a destination: ``UNIMQ_`` + the subject with ``.`` etc. → ``_``."""
    return "UNIMQ_" + _UNSAFE.sub("_", destination)


def durable_name(group: str | None) -> str:
    """The durable pull consumer of a group (consumer names cannot hold ``.``, ``*``, ``>``, spaces)."""
    return _UNSAFE.sub("_", group) if group else DEFAULT_DURABLE


def describe(settings: dict[str, Any]) -> str:
    return MARKER + json.dumps(settings, sort_keys=True)


def described(description: str | None) -> dict[str, Any]:
    """What ensure() recorded in a stream or durable description (empty if not unimq's)."""
    if not description or not description.startswith(MARKER):
        return {}
    try:
        value = json.loads(description[len(MARKER):])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _encode(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def _encode_key(key: str) -> str:
    return _KEY_PREFIX + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_key(key: str) -> str:
    if not key.startswith(_KEY_PREFIX):
        return key
    data = key[len(_KEY_PREFIX):]
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode(errors="replace")


def _decode(text: str) -> str:
    match = _ENCODED.fullmatch(text)
    return base64.b64decode(match.group(1)).decode(errors="replace") if match else text


def to_headers(message: Message, dedup: bool) -> dict[str, str]:
    headers = {
        (k if _TOKEN.fullmatch(k) else _encode_key(k)): (v if _PLAIN_VALUE.fullmatch(v) else _encode(v))
        for k, v in message.headers.items()
    } if message.headers else {}
    key = dedup_key(message) if dedup else message.message_id
    headers[MSG_ID if dedup else PLAIN_MSG_ID] = key
    if key != message.message_id:  # a redriven copy: its id travels beside its own dedup key
        headers[PLAIN_MSG_ID] = message.message_id
    if message.content_type:
        headers[CONTENT_TYPE] = message.content_type
    if message.correlation_id:
        headers[CORRELATION_ID] = message.correlation_id
    if message.reply_to:
        headers[REPLY_TO] = message.reply_to
    if message.key is not None:
        headers[KEY] = message.key
    if message.delay is not None and message.delay.total_seconds() > 0:
        headers[NOT_BEFORE] = str(epoch_ms_after(message.delay.total_seconds()))
    if message.ttl is not None:
        headers[EXPIRES_AT] = str(epoch_ms_after(message.ttl.total_seconds()))
    return headers


def to_message(data: bytes, headers: dict[str, str] | None, fallback_id: str, timestamp: datetime | None) -> Message:
    """Rebuild a Message; a message from a plain client without ``Nats-Msg-Id`` gets ``fallback_id``."""
    if not headers:
        return Message(body=data, message_id=fallback_id, timestamp=timestamp)
    headers = {_decode_key(k): _decode(v) for k, v in headers.items()} if _has_encoded(headers) else dict(headers)
    message_id = headers.pop(PLAIN_MSG_ID, None) or headers.pop(MSG_ID, None) or fallback_id
    headers.pop(MSG_ID, None)
    ttl = None
    expires = epoch_ms(headers, EXPIRES_AT)
    headers.pop(EXPIRES_AT, None)
    if expires and timestamp is not None:
        ttl = timedelta(milliseconds=max(0, expires - int(timestamp.timestamp() * 1000)))
    return Message(
        body=data, headers=headers, message_id=message_id, key=headers.pop(KEY, None),
        correlation_id=headers.pop(CORRELATION_ID, None), reply_to=headers.pop(REPLY_TO, None),
        content_type=headers.pop(CONTENT_TYPE, None), timestamp=timestamp, ttl=ttl,
    )


def _has_encoded(headers: dict[str, str]) -> bool:
    return any(k.startswith(_KEY_PREFIX) or v.startswith("=?") for k, v in headers.items())


def jetstream_capabilities(max_message_bytes: int, max_batch: int, routing: bool = False) -> Capabilities:
    return Capabilities(
        backend="nats",
        persistence=native(note="JetStream stream, file storage by default (?storage=memory)"),
        fanout=native(note="one durable pull consumer per group"),
        competing_consumers=native(note="consumers of a group share its durable"),
        ordering="none",
        ordering_note="a destination's stream is ordered and one consumer of a group gets it in order, but "
                      "competing consumers and redeliveries interleave, even per key",
        delayed_delivery=emulated(note="x-unimq-not-before header; a consumer that receives the message early "
                                       "naks it with the remaining delay (server 2.12 scheduling not used)"),
        nack_delay=native(note="nak with delay"),
        dead_letter=emulated(note=f"reject = copy to <destination>{'-' if routing else '.'}dlq (reason in "
                                  "x-unimq-dead-letter-reason) then ack; past max_deliveries the copy is made on "
                                  "the next receipt"),
        priority=none("JetStream has no priorities; use a destination per priority"),
        message_ttl=emulated(note="x-unimq-expires-at header; an expired message is acked and dropped on receipt "
                                  "and stays in the stream until its retention removes it"),
        deduplication=native(note="on destinations ensured with deduplication=: Nats-Msg-Id = message_id "
                                  "within the stream's duplicate_window"),
        replay=native(note="start= maps to the durable's deliver policy (all/new/by time/by sequence)"),
        lock_extension=native(note="in_progress resets ack_wait; longer extensions are renewed every "
                                   "ack_wait/2 until settled"),
        peek=native(note="stream reads from the default durable's ack floor"),
        batch_send=native(limit=max_batch, note="pipelined publishes, acks awaited together; not atomic"),
        headers=native(),
        transactions=none(),
        listing=native(note="the literal subjects of every stream"),
        partitions=none("no partitions: competing consumers of a group scale out"),
        replication=native(limit=5, note="num_replicas of the stream"),
        fifo=none("competing consumers and redeliveries interleave: use one consumer for stream order"),
        sessions=none("use a destination (subject) per session"),
        retention=native(note="max_age of the stream"),
        lock_timeout=native(note="ack_wait of the group's durable; recorded in the stream description "
                                 "for durables created later"),
        max_deliveries=emulated(note="recorded in the durable's (and stream's) description; past it the core "
                                     "dead-letters on receipt (JetStream's max_deliver would only stop redelivery)"),
        new_group_backlog=native(note="a new durable delivers everything in the stream (start= chooses otherwise)"),
        routing=native(note="?routing=subjects: a message with a subject is published to <destination>.<subject>, "
                            "a group's durable filters on its pattern (a # that is not last: on <destination>.>); "
                            "header filters and the core's check stay") if routing else
        emulated(note="the core filters on receipt: a group receives and acks what it does not want; "
                      "?routing=subjects makes subject patterns native (durable filter subjects)"),
        max_message_bytes=max_message_bytes,
    )


def core_capabilities(max_message_bytes: int, max_batch: int) -> Capabilities:
    return Capabilities(
        backend="nats-core",
        persistence=none("at-most-once: a message with no subscriber, or one lost with a connection, is gone"),
        fanout=native(note="one queue group per group"),
        competing_consumers=native(note="queue group members"),
        ordering="none",
        ordering_note="publish order of one connection reaches one subscriber in order; queue group members "
                      "interleave, even per key",
        delayed_delivery=none(),
        nack_delay=none(),
        dead_letter=none(),
        priority=none(),
        message_ttl=none(),
        deduplication=none(),
        replay=none(),
        lock_extension=none(),
        peek=none(),
        batch_send=native(limit=max_batch, note="written then flushed once; 'accepted' = the server read them"),
        headers=native(),
        transactions=none(),
        listing=none("core NATS keeps no list of subjects"),
        new_group_backlog=none("nothing is stored: a group receives what is sent while it is subscribed"),
        max_message_bytes=max_message_bytes,
    )

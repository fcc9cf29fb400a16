"""Message ↔ stream fields. No envelope: the body is one field, metadata are prefixed fields.

* ``body`` — the application's bytes, untouched.
* ``h:<name>`` — one application header (``x-unimq-*`` reserved headers included).
* ``p:<name>`` — a message property: ``p:id``, ``p:key``, ``p:correlation-id``, ``p:reply-to``,
  ``p:content-type``, ``p:ts`` (epoch ms, only when the sender set a timestamp or the message was
  delayed) and ``p:expires`` (epoch ms, the emulated TTL).

Entries written by other clients: with a ``body`` field, every other unprefixed field becomes a
header; without one, a single field's value is the body, and several fields all become headers
(empty body). ``message_id`` defaults to the entry id and ``timestamp`` to the id's time.
"""

from __future__ import annotations

import struct
import time
import uuid
from datetime import UTC, datetime

from unimq.message import Message

BODY = "body"
HEADER = "h:"
PROPERTY = "p:"
ID = "p:id"
KEY = "p:key"
CORRELATION_ID = "p:correlation-id"
REPLY_TO = "p:reply-to"
CONTENT_TYPE = "p:content-type"
TIMESTAMP = "p:ts"
EXPIRES = "p:expires"

_BODY = BODY.encode()
_PROPS = {
    b"p:id": "message_id",
    b"p:key": "key",
    b"p:correlation-id": "correlation_id",
    b"p:reply-to": "reply_to",
    b"p:content-type": "content_type",
}

Fields = dict[str, bytes | str]


def now_ms() -> int:
    return int(time.time() * 1000)


def to_fields(message: Message, stamp: bool = False) -> Fields:
    """The stream fields of ``message``; ``stamp`` records its timestamp (delayed sends need it)."""
    fields: Fields = {BODY: message.body, ID: message.message_id}
    if message.key is not None:
        fields[KEY] = message.key
    if message.correlation_id is not None:
        fields[CORRELATION_ID] = message.correlation_id
    if message.reply_to is not None:
        fields[REPLY_TO] = message.reply_to
    if message.content_type is not None:
        fields[CONTENT_TYPE] = message.content_type
    if message.timestamp is not None:
        fields[TIMESTAMP] = str(int(message.timestamp.timestamp() * 1000))
    elif stamp:
        fields[TIMESTAMP] = str(now_ms())
    if message.ttl is not None:
        fields[EXPIRES] = str(now_ms() + int(message.ttl.total_seconds() * 1000))
    for name, value in message.headers.items():
        fields[HEADER + name] = value
    return fields


def from_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[Message, int]:
    """The message of a stream entry and its expiry in epoch ms (0 = none)."""
    body = fields.get(_BODY)
    if body is None and len(fields) == 1:
        body = next(iter(fields.values()))
        fields = {}
    message = Message(body=body or b"")
    headers = message.headers
    expires = 0
    stamp = None
    for raw, value in fields.items():
        if raw == _BODY:
            continue
        prop = _PROPS.get(raw)
        if prop is not None:
            setattr(message, prop, value.decode(errors="replace"))
        elif raw.startswith(b"h:"):
            headers[raw[2:].decode(errors="replace")] = value.decode(errors="replace")
        elif raw == b"p:ts":
            stamp = _int(value)
        elif raw == b"p:expires":
            expires = _int(value)
        elif not raw.startswith(b"p:"):
            headers[raw.decode(errors="replace")] = value.decode(errors="replace")
    text_id = entry_id.decode()
    if ID.encode() not in fields:
        message.message_id = text_id
    ms = stamp or int(text_id.partition("-")[0])
    message.timestamp = datetime.fromtimestamp(ms / 1000, UTC)
    return message, expires


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def pack_scheduled(fields: Fields) -> bytes:
    """A delayed message as a sorted-set member: a msgpack array [nonce, name, value, ...].

    The Lua mover unpacks it with ``cmsgpack`` and XADDs the fields; the nonce keeps two equal
    messages distinct members.
    """
    items: list[bytes] = [uuid.uuid4().bytes]
    for name, value in fields.items():
        items.append(name.encode())
        items.append(value.encode() if isinstance(value, str) else value)
    out = [_header(len(items), 0x90, 15, 0xDC, 0xDD)]
    for item in items:
        out.append(_header(len(item), 0xA0, 31, 0xDA, 0xDB, str8=True))
        out.append(item)
    return b"".join(out)


def _header(n: int, fix: int, fix_max: int, code16: int, code32: int, str8: bool = False) -> bytes:
    if n <= fix_max:
        return bytes([fix | n])
    if str8 and n <= 0xFF:
        return bytes([0xD9, n])
    if n <= 0xFFFF:
        return struct.pack(">BH", code16, n)
    return struct.pack(">BI", code32, n)

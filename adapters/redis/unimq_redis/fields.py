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

import functools
import struct
import time
import uuid
from datetime import UTC, datetime

from unimq.message import Message
from unimq.reliability import epoch_ms_after

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

_BODY = BODY_FIELD = BODY.encode()
_ID = ID_FIELD = ID.encode()
_KEY = KEY.encode()
_CORRELATION_ID = CORRELATION_ID.encode()
_REPLY_TO = REPLY_TO.encode()
_CONTENT_TYPE = CONTENT_TYPE.encode()
_TIMESTAMP = TIMESTAMP.encode()
_EXPIRES = EXPIRES.encode()
_PROPS = {
    _KEY: "key",
    _CORRELATION_ID: "correlation_id",
    _REPLY_TO: "reply_to",
    _CONTENT_TYPE: "content_type",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def to_fields(message: Message, stamp: bool = False) -> list[bytes]:
    """The stream fields of ``message`` as [name, value, ...], ready for XADD.

    ``stamp`` records the timestamp even when the sender left it unset (delayed sends need it).
    """
    fields = [_BODY, message.body, _ID, message.message_id.encode()]
    if message.key is not None:
        fields += (_KEY, message.key.encode())
    if message.correlation_id is not None:
        fields += (_CORRELATION_ID, message.correlation_id.encode())
    if message.reply_to is not None:
        fields += (_REPLY_TO, message.reply_to.encode())
    if message.content_type is not None:
        fields += (_CONTENT_TYPE, message.content_type.encode())
    if message.timestamp is not None:
        fields += (_TIMESTAMP, b"%d" % int(message.timestamp.timestamp() * 1000))
    elif stamp:
        fields += (_TIMESTAMP, b"%d" % now_ms())
    if message.ttl is not None:
        fields += (_EXPIRES, b"%d" % epoch_ms_after(message.ttl.total_seconds()))
    for name, value in message.headers.items():
        fields += ((HEADER + name).encode(), value.encode())
    return fields


def from_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[Message, int]:
    """The message of a stream entry and its expiry in epoch ms (0 = none).

    The per-message hot path of every receive: an entry unimq wrote with no metadata beyond
    ``body`` and ``p:id`` skips the field loop entirely.
    """
    others = len(fields)
    body = fields.get(_BODY)
    if body is not None:
        others -= 1
    elif others == 1:
        body = next(iter(fields.values()))
        fields, others = {}, 0
    raw_id = fields.get(_ID)
    if raw_id is not None:
        others -= 1
    message = Message(body=body or b"", message_id=raw_id.decode(errors="replace") if raw_id else entry_id.decode())
    expires = 0
    stamp = 0
    if others:
        headers = message.headers
        for raw, value in fields.items():
            if raw in (_BODY, _ID):
                continue
            prop = _PROPS.get(raw)
            if prop is not None:
                setattr(message, prop, value.decode(errors="replace"))
            elif raw.startswith(b"h:"):
                headers[raw[2:].decode(errors="replace")] = value.decode(errors="replace")
            elif raw == _TIMESTAMP:
                stamp = _int(value)
            elif raw == _EXPIRES:
                expires = _int(value)
            elif not raw.startswith(b"p:"):
                headers[raw.decode(errors="replace")] = value.decode(errors="replace")
    message.timestamp = entry_time(b"%d" % stamp if stamp else entry_id.partition(b"-")[0])
    return message, expires


def from_flat(entry_id: bytes, flat: list[bytes]) -> tuple[Message, dict[bytes, bytes], int]:
    """:func:`from_entry` of a raw reply's [field, value, ...] list; also returns the fields as a dict.

    An entry unimq wrote for a message with no metadata (``body``, ``p:id``) is read directly.
    """
    if len(flat) == 4 and flat[0] == _BODY and flat[2] == _ID:
        body, raw_id = flat[1], flat[3]
        # Positional (cheaper than keywords on this path); tests/adapters/redis/test_fields.py checks it.
        message = Message(body, None, {}, raw_id.decode(errors="replace") if raw_id else entry_id.decode(),
                          None, None, None, entry_time(entry_id.partition(b"-")[0]))
        return message, {_BODY: body, _ID: raw_id}, 0
    it = iter(flat)
    fields = dict(zip(it, it, strict=True))
    message, expires = from_entry(entry_id, fields)
    return message, fields, expires


@functools.lru_cache(maxsize=256)
def entry_time(ms: bytes) -> datetime:
    """Epoch ms (an entry id's time part) as an aware datetime, cached: the entries of one batch
    mostly share their millisecond."""
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def pack_scheduled(fields: list[bytes]) -> bytes:
    """A delayed message as a sorted-set member: a msgpack array [nonce, name, value, ...].

    The Lua mover unpacks it with ``cmsgpack`` and XADDs the fields; the nonce keeps two equal
    messages distinct members.
    """
    items = [uuid.uuid4().bytes, *fields]
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

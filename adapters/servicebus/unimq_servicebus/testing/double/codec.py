"""AMQP 1.0 message sections: split, inspect and re-assemble without re-encoding the body.

Why not ``proton.Message``? Service Bus promises that a message comes back exactly as it was sent,
and ``proton.Message`` cannot represent everything the SDK can send (several data sections in
one body, an ``amqp-sequence`` body, a footer). So the double keeps the *bytes* of the immutable
sections (properties, application-properties, body, footer) and only decodes and rebuilds the
sections the broker owns: the header (for ``delivery-count``) and the message annotations (for the
``x-opt-*`` broker properties).

A stored message is therefore ``header + message-annotations + <original bytes>``; building a
delivery costs two small encodes.
"""

from __future__ import annotations

import operator
import time
from typing import Any

from proton import Data, Described, symbol, timestamp, ubyte, uint, ulong

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78

BODY_SECTIONS = (DATA, AMQP_SEQUENCE, AMQP_VALUE)

# Message annotations the broker owns (the names the SDK reads, see azure/servicebus/_common/constants.py).
SEQUENCE_NUMBER = symbol("x-opt-sequence-number")
ENQUEUED_TIME = symbol("x-opt-enqueued-time")
LOCK_TOKEN = symbol("x-opt-lock-token")
LOCKED_UNTIL = symbol("x-opt-locked-until")
MESSAGE_STATE = symbol("x-opt-message-state")
SCHEDULED_ENQUEUE_TIME = symbol("x-opt-scheduled-enqueue-time")
PARTITION_KEY = symbol("x-opt-partition-key")
DEADLETTER_SOURCE = symbol("x-opt-deadletter-source")

# Values of x-opt-message-state.
ACTIVE, DEFERRED, SCHEDULED = 0, 1, 2


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the unit of every AMQP timestamp."""
    return int(time.time() * 1000)


def split_sections(raw: bytes) -> list[tuple[int, Any, bytes]]:
    """Split an encoded message into ``(descriptor code, decoded value, raw bytes)`` per section.

    Raises ``ValueError`` when ``raw`` is not a well-formed sequence of AMQP message sections.
    """
    sections = []
    data = Data()
    view = bytes(raw)
    pos = 0
    while pos < len(view):
        data.clear()
        try:
            consumed = data.decode(view[pos:])
        except Exception as exc:  # proton raises DataException, subclasses vary by version
            raise ValueError(f"undecodable AMQP section at byte {pos}") from exc
        if consumed <= 0:
            raise ValueError(f"undecodable AMQP section at byte {pos}")
        data.rewind()
        data.next()
        value = data.get_object()
        if not isinstance(value, Described) or not isinstance(value.descriptor, int):
            raise ValueError("not an AMQP message section")
        code = int(value.descriptor)
        if not HEADER <= code <= FOOTER:
            raise ValueError(f"unknown section descriptor 0x{code:x}")
        sections.append((code, _owned(value.value), view[pos:pos + consumed]))
        pos += consumed
    return sections


def _owned(value: Any) -> Any:
    """Copy binaries out of proton's decode buffer (its memoryviews die with the next decode)."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, dict):
        return type(value)((_owned(k), _owned(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_owned(v) for v in value]
    if isinstance(value, Described):
        return Described(value.descriptor, _owned(value.value))
    return value


def _encode(code: int, value: Any) -> bytes:
    data = Data()
    data.put_object(Described(ulong(code), value))
    return data.encode()


def unpack_transfer(raw: bytes) -> list[list[tuple[int, Any, bytes]]]:
    """Return the messages carried by one transfer: one, or several for an SDK batch.

    The SDK sends ``ServiceBusMessageBatch`` as one AMQP message of format 0x80013700 whose data
    sections each hold a complete encoded message. python-qpid-proton does not expose the
    transfer's message-format, so a batch is recognised by shape: no application-properties,
    only data sections in the body, and every data section decodes as a whole message with a body.
    (A single message whose payload is itself an encoded AMQP message would be misread as a batch;
    see docs/servicebus-double.md.)
    """
    sections = split_sections(raw)
    codes = [code for code, _, _ in sections]
    data_sections = [value for code, value, _ in sections if code == DATA]
    looks_like_batch = (
        data_sections
        and APPLICATION_PROPERTIES not in codes
        and not any(code in (AMQP_SEQUENCE, AMQP_VALUE) for code in codes)
    )
    if looks_like_batch:
        inner = []
        for payload in data_sections:
            try:
                parts = split_sections(bytes(payload))
            except ValueError:
                break
            if not any(code in BODY_SECTIONS for code, _, _ in parts):
                break
            inner.append(parts)
        else:
            return inner
    return [sections]


class StoredMessage:
    """One message held by an entity.

    ``tail`` holds the original bytes of every section after the message annotations; only
    ``header``, ``annotations`` and (when dead-lettering) the application properties are rebuilt.
    """

    __slots__ = (
        "annotations",
        "app_properties",
        "app_raw",
        "delivery_count",
        "enqueued_ms",
        "expires_ms",
        "header",
        "message_id",
        "properties",
        "properties_raw",
        "scheduled_ms",
        "seq",
        "session_id",
        "size",
        "state",
        "tail_after_app",
    )

    def __init__(self, sections: list[tuple[int, Any, bytes]]):
        self.seq = 0
        self.header: list[Any] = [None, None, None, None, None]
        self.annotations: dict[Any, Any] = {}
        self.properties: list[Any] = []
        self.properties_raw = b""
        self.app_raw = b""
        self.app_properties: dict[Any, Any] | None = None
        tail = []
        for code, value, raw in sections:
            if code == HEADER:
                self.header = (list(value) + [None] * 5)[:5]
            elif code == DELIVERY_ANNOTATIONS:
                continue  # hop-by-hop: not stored, as on the real broker
            elif code == MESSAGE_ANNOTATIONS:
                self.annotations = dict(value or {})
            elif code == PROPERTIES:
                self.properties = list(value or [])
                self.properties_raw = raw
            elif code == APPLICATION_PROPERTIES:
                self.app_properties = value
                self.app_raw = raw
            else:
                tail.append(raw)
        self.tail_after_app = b"".join(tail)
        props = self.properties + [None] * (13 - len(self.properties))
        self.message_id = None if props[0] is None else str(props[0])
        self.session_id = None if props[10] is None else str(props[10])
        self.delivery_count = int(self.header[4] or 0)
        self.enqueued_ms = 0
        self.expires_ms: int | None = None
        self.state = ACTIVE
        self.scheduled_ms: int | None = None
        scheduled = self.annotations.get(SCHEDULED_ENQUEUE_TIME)
        if scheduled is not None:
            self.scheduled_ms = _to_ms(scheduled)
        self.size = len(self.properties_raw) + len(self.app_raw) + len(self.tail_after_app)

    @property
    def ttl_ms(self) -> int | None:
        ttl = self.header[2]
        return None if ttl is None else int(ttl)

    def copy(self) -> StoredMessage:
        """A shallow copy for topic fan-out: the raw sections are immutable and shared."""
        clone = StoredMessage.__new__(StoredMessage)
        for name in StoredMessage.__slots__:
            setattr(clone, name, getattr(self, name))
        clone.header = list(self.header)
        clone.annotations = dict(self.annotations)
        return clone

    def set_application_property(self, key: str, value: Any) -> None:
        """Add an application property (dead-letter reason/description), re-encoding that section."""
        props = dict(self.app_properties or {})
        props[key] = value
        self.app_properties = props
        self.app_raw = _encode(APPLICATION_PROPERTIES, props)

    def encode(self, lock_token: Any = None, locked_until_ms: int | None = None) -> bytes:
        """The bytes of this message as a delivery (or a peek result) would carry them."""
        header = list(self.header)
        header[4] = uint(self.delivery_count)
        if header[2] is not None:
            header[2] = uint(int(header[2]))
        if header[1] is not None:
            header[1] = ubyte(int(header[1]))
        annotations = dict(self.annotations)
        annotations[SEQUENCE_NUMBER] = self.seq
        annotations[ENQUEUED_TIME] = timestamp(self.enqueued_ms)
        annotations[MESSAGE_STATE] = self.state
        if lock_token is not None:
            annotations[LOCK_TOKEN] = lock_token
        if locked_until_ms is not None:
            annotations[LOCKED_UNTIL] = timestamp(locked_until_ms)
        if self.state == SCHEDULED and self.scheduled_ms is not None:
            annotations[SCHEDULED_ENQUEUE_TIME] = timestamp(self.scheduled_ms)
        return b"".join((
            _encode(HEADER, header),
            _encode(MESSAGE_ANNOTATIONS, annotations),
            self.properties_raw,
            self.app_raw,
            self.tail_after_app,
        ))


#: Persistence: a message as the tuple of its slots, which pickles several times faster than the object.
message_fields = operator.attrgetter(*StoredMessage.__slots__)


def message_from_fields(values: tuple[Any, ...]) -> StoredMessage:
    """The inverse of :data:`message_fields`."""
    message = StoredMessage.__new__(StoredMessage)
    for name, value in zip(StoredMessage.__slots__, values, strict=True):
        setattr(message, name, value)
    return message


def _to_ms(value: Any) -> int:
    """AMQP timestamps decode as ``proton.timestamp`` (ms); accept datetimes defensively."""
    if hasattr(value, "timestamp") and callable(value.timestamp):
        return int(value.timestamp() * 1000)
    return int(value)

"""unimq Message ↔ SQS message: body, MessageAttributes, FIFO group and de-duplication ids.

SQS allows 10 MessageAttributes per message. unimq's own properties (message_id on standard
queues, key on standard queues, correlation_id, reply_to, content_type, TTL expiry and the
reserved ``x-unimq-*`` headers) travel packed as compact JSON in ONE String attribute, ``unimq``,
and only when there is something to carry. Each application header is its own String attribute
when SQS can represent it; a header SQS cannot (a name outside ``A-Za-z0-9_-.``, an ``AWS.``
prefix, an empty value, control characters) travels in the ``unimq`` attribute's ``headers``.
Bodies are text in SQS: a body that is not valid SQS text (UTF-8 without control characters) is
sent base64-encoded and marked in the ``unimq`` attribute, so bytes still round-trip exactly; an
empty body (which SQS refuses) is sent as one space, marked the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from unimq.errors import CapabilityError, MessageTooLarge
from unimq.message import Message
from unimq.reliability import DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, HEADER_PREFIX, dedup_key, epoch_ms_after

#: The one attribute carrying unimq's properties as JSON.
META = "unimq"
MAX_ATTRIBUTES = 10
#: Header slots left to the application when the ``unimq`` attribute is present (the worst case).
USER_ATTRIBUTES = MAX_ATTRIBUTES - 1
STRING = "String"
#: System attributes a consumer asks for (not "All": less for botocore to parse per message).
SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp", "DeadLetterQueueSourceArn"]
FIFO_SYSTEM_ATTRIBUTES = [*SYSTEM_ATTRIBUTES, "MessageGroupId", "MessageDeduplicationId"]

_ATTR_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,256}")
_FIFO_ID = re.compile(r"[\x21-\x7e]{1,128}")
# Characters SQS accepts in a body or attribute value (the XML 1.0 set).
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: The ASCII bytes of that set: tab, newline, carriage return and 0x20-0x7F.
_SQS_ASCII = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x80)])
_PROPERTIES = ("correlation_id", "reply_to", "content_type")
#: One encoder for every message: ``json.dumps`` with options builds a new JSONEncoder per call.
_dump_meta = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def sqs_text(data: bytes) -> str | None:
    """``data`` as SQS-legal text, or None when it must be base64-encoded."""
    if data.isascii():
        # The common case, checked in C without a regex scan (~8x faster for 1 KiB).
        return None if data.translate(None, _SQS_ASCII) else data.decode("ascii")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    return None if _NOT_SQS_TEXT.search(text) else text


def check_attribute_name(name: str) -> str | None:
    """Why SQS would refuse ``name`` as a MessageAttribute name, or None."""
    if not _ATTR_NAME.fullmatch(name):
        return "names are 1-256 characters of A-Z a-z 0-9 _ - ."
    if name.startswith(".") or name.endswith(".") or ".." in name:
        return "names cannot start or end with '.' or contain '..'"
    if name.lower().startswith(("aws.", "amazon.")):
        return "names cannot start with 'AWS.' or 'Amazon.'"
    if name == META:
        return f"'{META}' is reserved for unimq's properties"
    return None


def encode(
    message: Message, *, fifo: bool, default_group: str, max_bytes: int
) -> tuple[dict[str, Any], int]:
    """The SendMessageBatch entry (without ``Id``) for ``message`` and its size as SQS counts it.

    Raises :class:`CapabilityError` past SQS's attribute count and :class:`MessageTooLarge` past
    ``max_bytes`` (body plus attribute names, types and values), before any network call.
    """
    meta: dict[str, Any] = {}
    attributes: dict[str, dict[str, str]] = {}
    packed_headers: dict[str, str] = {}
    size = 0
    for name, value in message.headers.items():
        if name.startswith(HEADER_PREFIX):
            meta[name] = value
        elif check_attribute_name(name) is not None or not value or _NOT_SQS_TEXT.search(value):
            packed_headers[name] = value  # SQS cannot name or hold it as an attribute
        else:
            attributes[name] = {"DataType": STRING, "StringValue": value}
            size += len(name.encode()) + len(STRING) + len(value.encode())
    if packed_headers:
        meta["headers"] = packed_headers
    text = sqs_text(message.body)
    if not message.body:
        text = " "  # SQS refuses an empty MessageBody
        meta["body_encoding"] = "empty"
    elif text is None:
        text = base64.b64encode(message.body).decode()
        meta["body_encoding"] = "base64"
    entry: dict[str, Any] = {"MessageBody": text}
    if fifo:
        group = message.key if message.key is not None else default_group
        dedup = dedup_key(message)
        for label, value in (("key (MessageGroupId)", group), ("message_id (MessageDeduplicationId)", dedup)):
            if not _FIFO_ID.fullmatch(value):
                raise CapabilityError(
                    f"sqs FIFO cannot use {label} {value[:140]!r}: it must be 1-128 printable ASCII characters "
                    "without spaces."
                )
        entry["MessageGroupId"] = group
        entry["MessageDeduplicationId"] = dedup
        if dedup != message.message_id:  # a redriven copy: its id travels beside its own dedup key
            meta["message_id"] = message.message_id
    else:
        meta["message_id"] = message.message_id
        if message.key is not None:
            meta["key"] = message.key
        if message.delay is not None and message.delay.total_seconds() > 0:
            entry["DelaySeconds"] = min(900, round(message.delay.total_seconds()))
    for prop in _PROPERTIES:
        value = getattr(message, prop)
        if value is not None:
            meta[prop] = value
    if message.ttl is not None:
        meta["expires"] = epoch_ms_after(message.ttl.total_seconds())
    if meta:
        packed = _dump_meta(meta)
        attributes[META] = {"DataType": STRING, "StringValue": packed}
        size += len(META) + len(STRING) + len(packed.encode())
    if len(attributes) > MAX_ATTRIBUTES:
        users = len(attributes) - (META in attributes)
        room = MAX_ATTRIBUTES - (META in attributes)
        raise CapabilityError(
            f"sqs cannot carry the {users} headers of message {message.message_id}: SQS allows "
            f"{MAX_ATTRIBUTES} MessageAttributes and unimq needs {MAX_ATTRIBUTES - room} for its properties, "
            f"so at most {room} headers fit. Merge headers, or move metadata into the body."
        )
    if attributes:
        entry["MessageAttributes"] = attributes
    size += len(text) if "body_encoding" in meta else len(message.body)
    if size > max_bytes:
        raise MessageTooLarge(
            f"message {message.message_id} is {size} bytes on the wire (body"
            f"{' base64-encoded' if 'body_encoding' in meta else ''} plus attributes); sqs accepts at most "
            f"{max_bytes}. Store large payloads elsewhere (e.g. S3) and send a reference."
        )
    return entry, size


def decode(raw: dict[str, Any], default_group: str) -> tuple[Message, int, float | None]:
    """(message, receive count, expiry epoch seconds or None) from a ReceiveMessage entry."""
    system: dict[str, str] = raw.get("Attributes") or {}
    headers: dict[str, str] = {}
    meta: dict[str, Any] = {}
    for name, attr in (raw.get("MessageAttributes") or {}).items():
        if "StringValue" in attr:
            value = attr["StringValue"]
        else:
            binary = attr.get("BinaryValue", b"")
            if isinstance(binary, str):  # base64 text on the wire: ``native`` gets bytes, as from boto3
                value, attr["BinaryValue"] = binary, base64.b64decode(binary)
            else:
                value = base64.b64encode(binary).decode()
        if name == META:
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                meta = parsed
                continue
        headers[name] = value
    body_text: str = raw.get("Body", "")
    body = body_text.encode()
    if meta.get("body_encoding") == "empty":
        body = b""
    elif meta.get("body_encoding") == "base64":
        try:
            body = base64.b64decode(body_text, validate=True)
        except (binascii.Error, ValueError):
            body = body_text.encode()
    for name, value in meta.items():
        if name.startswith(HEADER_PREFIX):
            headers[name] = str(value)
    packed = meta.get("headers")
    if isinstance(packed, dict):
        headers.update({str(k): str(v) for k, v in packed.items()})
    source = system.get("DeadLetterQueueSourceArn")
    if source and DEAD_LETTER_REASON not in headers:
        # Moved by the RedrivePolicy, which records no reason: say what happened.
        headers[DEAD_LETTER_REASON] = "received more than the source queue's maxReceiveCount without being deleted"
        headers[DEAD_LETTER_SOURCE] = source.rsplit(":", 1)[-1]
    key = meta.get("key")
    group = system.get("MessageGroupId")
    if group is not None and group != default_group:
        key = group
    message_id = meta.get("message_id") or system.get("MessageDeduplicationId") or raw.get("MessageId", "")
    sent = system.get("SentTimestamp")
    message = Message(
        body=body,
        key=key,
        headers=headers,
        message_id=str(message_id),
        correlation_id=meta.get("correlation_id"),
        reply_to=meta.get("reply_to"),
        content_type=meta.get("content_type"),
        timestamp=datetime.fromtimestamp(int(sent) / 1000, UTC) if sent else None,
    )
    expires = meta.get("expires")
    if isinstance(expires, int):
        message.ttl = timedelta(seconds=max(0.0, expires / 1000 - time.time()))
        return message, int(system.get("ApproximateReceiveCount", "1")), expires / 1000
    return message, int(system.get("ApproximateReceiveCount", "1")), None

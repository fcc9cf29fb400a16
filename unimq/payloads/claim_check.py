"""Claim-check: a body too large for the broker goes to an object store; the message carries a reference.

Wire format (version 1), so any client can resolve a reference:

- header ``x-unimq-claim-check``: the object's URI (``s3://bucket/key``, ``azblob://account/container/key``,
  ``file:///dir/key``); its presence marks the message as a reference;
- body: UTF-8 JSON ``{"v": 1, "uri": …, "key": …, "size": N, "sha256": "<hex>"}`` — ``key`` is the
  object's key inside the store, ``size`` and ``sha256`` describe the stored bytes;
- every other field and header (``content_type``, ``content-encoding``, ``x-unimq-key-id``…)
  describes the stored body, unchanged.

The object is written before the message is sent (a failed upload fails the send, nothing is
published) and deleted only after the broker accepted the ack (``delete_after_ack``); a message
that is dead-lettered, nacked or never processed keeps its object.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from unimq.errors import ConfigError, MessageTooLarge, PublishError, UnimqError
from unimq.message import Delivery, Message
from unimq.middleware import Middleware
from unimq.payloads.stores import Store

if TYPE_CHECKING:
    from unimq.broker import Broker

log = logging.getLogger("unimq.payloads")

HEADER = "x-unimq-claim-check"
VERSION = 1


class ReferenceError(ValueError):
    """A claim-check reference that cannot be used (malformed, or its object changed)."""


def reference_body(store: Store, key: str, data: bytes) -> bytes:
    """The JSON body that stands for ``data`` stored under ``key``."""
    doc = {"v": VERSION, "uri": store.uri(key), "key": key, "size": len(data),
           "sha256": hashlib.sha256(data).hexdigest()}
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_reference(body: bytes) -> dict[str, Any]:
    """The reference document of a claim-checked message body; :class:`ReferenceError` if malformed."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ReferenceError("claim-check reference body is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise ReferenceError(f"claim-check reference version {doc.get('v') if isinstance(doc, dict) else None!r} "
                             f"is not {VERSION}; upgrade this consumer")
    if not isinstance(doc.get("key"), str) or not isinstance(doc.get("size"), int) \
            or not isinstance(doc.get("sha256"), str):
        raise ReferenceError("claim-check reference lacks key, size or sha256")
    return doc


async def resolve(store: Store, body: bytes, max_bytes: int | None = None) -> bytes:
    """The stored body a reference points to, checked against its size and digest.

    ``max_bytes`` refuses (``MessageTooLarge``) an object bigger than that before downloading it.
    """
    doc = parse_reference(body)
    key = store.check_key(doc["key"])
    if max_bytes is not None and doc["size"] > max_bytes:
        raise MessageTooLarge(f"claim-check object {store.uri(key)} holds {doc['size']} bytes; the limit here "
                              f"is {max_bytes}")
    data = await store.get(key)
    if len(data) != doc["size"] or hashlib.sha256(data).hexdigest() != doc["sha256"]:
        raise ReferenceError(f"claim-check object {store.uri(key)} does not match its reference (size or "
                             "sha256 differ): it was overwritten or the reference was forged")
    return data


class ClaimCheck(Middleware):
    """Send bodies over ``threshold`` bytes (or over the destination's limit) by reference.

    Register it where both producers and consumers see it: ``broker.use(ClaimCheck(store,
    broker=broker))``, or per producer/consumer with ``middlewares=[...]``. ``broker`` lets it read
    each destination's size limit: ``threshold`` (default: that limit) may not exceed it. Without
    ``broker``, ``threshold`` is required. ``delete_after_ack=False`` leaves objects to a lifecycle
    rule of the store: use it when several groups read the same message (fan-out), since the first
    group's ack would otherwise delete the object the others still need. A reference to an object
    over ``max_object_bytes`` (default 1 GiB) is dead-lettered without downloading it.
    """

    def __init__(
        self,
        store: Store,
        threshold: int | None = None,
        *,
        delete_after_ack: bool = True,
        broker: Broker | None = None,
        max_object_bytes: int = 1024 * 1024 * 1024,
    ) -> None:
        if not isinstance(store, Store):
            raise ConfigError(f"ClaimCheck needs a unimq.payloads store (FileStore, S3Store, AzureBlobStore), "
                              f"got {type(store).__name__}")
        if threshold is not None and (not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0):
            raise ConfigError(f"ClaimCheck threshold must be an int >= 0 (bytes), got {threshold!r}")
        if not isinstance(max_object_bytes, int) or max_object_bytes < 1:
            raise ConfigError(f"ClaimCheck max_object_bytes must be an int >= 1, got {max_object_bytes!r}")
        if threshold is None and broker is None:
            raise ConfigError("ClaimCheck: pass threshold= (bytes) or broker= (to use each destination's size limit)")
        if broker is not None:
            limit = broker.capabilities.max_message_bytes
            if threshold is not None and threshold > limit:
                raise ConfigError(f"ClaimCheck threshold={threshold} is above {broker.backend}'s limit of {limit} "
                                  f"bytes per message: use a threshold <= {limit}")
        self.store = store
        self.threshold = threshold
        self.delete_after_ack = delete_after_ack
        self.max_object_bytes = max_object_bytes
        self._broker = broker
        self._limits: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"ClaimCheck({self.store!r}, threshold={self.threshold}, delete_after_ack={self.delete_after_ack})"

    def _limit(self, destination: str) -> int | None:
        """The largest body sent inline to ``destination``."""
        limit = self._limits.get(destination)
        if limit is None:
            if self._broker is None:
                return self.threshold
            backend = self._broker.capabilities_for(destination).max_message_bytes
            limit = self._limits[destination] = backend if self.threshold is None else min(self.threshold, backend)
        return limit

    async def on_publish(self, destination: str, message: Message) -> Message:
        if HEADER in message.headers:
            if _is_reference(message):
                return message  # a reference forwarded as it is (a bridge, a redrive)
            # A resolved message sent again: the header is stale, the body is the payload.
            message = replace(message, headers={k: v for k, v in message.headers.items() if k != HEADER})
        limit = self._limit(destination)
        if limit is None or len(message.body) <= limit:
            return message
        key = self.store.new_key()
        try:
            await self.store.put(key, message.body)
        except UnimqError as exc:
            raise PublishError(f"claim-check upload of message {message.message_id} to {self.store.location} "
                               f"failed, nothing was sent: {exc}", messages=[message],
                               retryable=exc.retryable) from exc
        return replace(message, body=reference_body(self.store, key, message.body),
                       headers={**message.headers, HEADER: self.store.uri(key)})

    async def on_receive(self, destination: str, delivery: Delivery) -> None:
        message = delivery.message
        if HEADER in message.headers:
            delivery.message = replace(message, body=await resolve(self.store, message.body, self.max_object_bytes))

    async def on_acked(self, destination: str, deliveries: Sequence[Delivery]) -> None:
        if not self.delete_after_ack:
            return
        for delivery in deliveries:
            if HEADER in delivery.message.headers:
                key = _key_of(delivery.message.headers[HEADER], self.store)
                if key is not None:
                    await self.store.delete(key)


def _is_reference(message: Message) -> bool:
    """Whether ``message``'s body is the reference its header names (not a resolved body)."""
    if len(message.body) > 4096:
        return False
    try:
        return parse_reference(message.body).get("uri") == message.headers[HEADER]
    except ReferenceError:
        return False


def _key_of(uri: str, store: Store) -> str | None:
    """The key of ``uri`` in ``store`` (None when the URI points elsewhere: never delete that)."""
    key = store.prefix + uri[-32:]
    if store.uri(key) != uri:
        log.warning("claim-check object %s is not in %s; not deleting it", uri, store.location)
        return None
    return key

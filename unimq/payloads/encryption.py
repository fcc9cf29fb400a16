"""Payload encryption: AES-GCM with key ids and rotation, bound to the message id and destination.

Wire format (version 1):

- header ``x-unimq-key-id``: the id of the key that encrypted the body (its presence marks the
  body as encrypted);
- body: ``0x01`` (format version) ‖ 12-byte random nonce ‖ AES-GCM ciphertext ‖ 16-byte tag;
- associated data: ``b"unimq/aes-gcm/1\\n" + key_id + "\\n" + message_id + "\\n" + destination``
  (UTF-8), so a body copied onto another message, destination or key id does not decrypt.

A dead-lettered copy is checked against its source destination (``x-unimq-dead-letter-source``),
so a dead-letter destination is readable with the same keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

from unimq.errors import ConfigError
from unimq.message import Delivery, Message
from unimq.middleware import Middleware
from unimq.reliability import DEAD_LETTER_SOURCE

KEY_ID = "x-unimq-key-id"
FORMAT = 1
NONCE = 12
TAG = 16


class DecryptionError(ValueError):
    """A body that cannot be decrypted here: unknown key id, tampered, or bound to another message."""


def associated_data(key_id: str, message_id: str, destination: str) -> bytes:
    return f"unimq/aes-gcm/{FORMAT}\n{key_id}\n{message_id}\n{destination}".encode()


class Encrypted(Middleware):
    """Encrypts bodies with the ``current`` key; decrypts with whichever known key the header names.

    ``keys`` maps key ids to 16, 24 or 32 raw bytes (AES-128/192/256). Rotate by adding the new key,
    making it ``current``, and removing the old one once no message encrypted with it remains.
    ``bind_destination=False`` binds the message id only: for bridges that move encrypted messages
    to a destination of another name. Keys never appear in a repr, error or log line.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str, *, bind_destination: bool = True) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigError("Encrypted needs the cryptography package: pip install 'unimq[crypto]'") from None
        if not isinstance(keys, Mapping) or not keys:
            raise ConfigError("Encrypted(keys=...) must map key ids (str) to keys (bytes); it is empty")
        ciphers = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not key_id or not key_id.isascii() or not key_id.isprintable() \
                    or "\n" in key_id or len(key_id) > 64:
                raise ConfigError(f"key id {str(key_id)[:64]!r} must be a printable ASCII str of 1-64 characters")
            if not isinstance(key, bytes | bytearray):
                raise ConfigError(f"key {key_id!r} must be bytes (16, 24 or 32 random bytes), got {type(key).__name__}")
            if len(key) < 16:
                raise ConfigError(f"key {key_id!r} has {len(key) * 8} bits; AES-GCM needs at least 128: use "
                                  "os.urandom(32)")
            if len(key) not in (16, 24, 32):
                raise ConfigError(f"key {key_id!r} has {len(key)} bytes; use 16, 24 or 32 (AES-128/192/256)")
            ciphers[key_id] = AESGCM(bytes(key))
        if current not in ciphers:
            raise ConfigError(f"current={str(current)[:64]!r} is not one of the key ids {sorted(ciphers)}")
        self._ciphers = ciphers
        self.current = current
        self.bind_destination = bind_destination

    def __repr__(self) -> str:
        return f"Encrypted(key_ids={sorted(self._ciphers)}, current={self.current!r})"

    def _aad(self, key_id: str, message: Message, destination: str) -> bytes:
        return associated_data(key_id, message.message_id, destination if self.bind_destination else "")

    async def on_publish(self, destination: str, message: Message) -> Message:
        if KEY_ID in message.headers:
            raise ConfigError(f"message {message.message_id} already carries {KEY_ID}: its body is ciphertext "
                              "(send it through a producer without Encrypted)")
        nonce = os.urandom(NONCE)
        sealed = self._ciphers[self.current].encrypt(nonce, message.body, self._aad(self.current, message, destination))
        return replace(message, body=bytes([FORMAT]) + nonce + sealed,
                       headers={**message.headers, KEY_ID: self.current})

    async def on_receive(self, destination: str, delivery: Delivery) -> None:
        message = delivery.message
        key_id = message.headers.get(KEY_ID)
        if key_id is None:
            return
        source = message.headers.get(DEAD_LETTER_SOURCE, destination)
        headers = {k: v for k, v in message.headers.items() if k != KEY_ID}  # it describes the plaintext now
        delivery.message = replace(message, body=self.decrypt(message, source), headers=headers)

    def decrypt(self, message: Message, destination: str) -> bytes:
        """The plaintext of an encrypted ``message`` received from ``destination``."""
        from cryptography.exceptions import InvalidTag

        key_id = message.headers.get(KEY_ID, "")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(f"message {message.message_id} is encrypted with key id {key_id[:64]!r}, which this "
                                  f"consumer does not have (it has {sorted(self._ciphers)}); add that key")
        body = message.body
        if len(body) < 1 + NONCE + TAG or body[0] != FORMAT:
            raise DecryptionError(f"message {message.message_id} is not an encrypted body of format {FORMAT}")
        try:
            return cipher.decrypt(body[1:1 + NONCE], body[1 + NONCE:], self._aad(key_id, message, destination))
        except InvalidTag:
            raise DecryptionError(
                f"message {message.message_id} does not decrypt with key {key_id!r}: tampered, or encrypted for "
                f"another message id or destination than {destination!r}") from None

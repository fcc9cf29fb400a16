"""Payload codecs: raw bytes, JSON, pydantic models, msgpack (optional), and compression.

A codec turns an application value into body bytes and back, and names its content type. Never
pickle: a queue is a trust boundary. Compression wraps any codec and marks the message with a
``content-encoding`` header, which consumers honour whatever codec they use.
"""

from __future__ import annotations

import gzip
import json
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

CONTENT_ENCODING = "content-encoding"


class Codec(Protocol):
    content_type: str | None
    content_encoding: str | None

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class RawCodec:
    """Bytes in, bytes out."""

    content_type: str | None = None
    content_encoding: str | None = None

    def encode(self, value: Any) -> bytes:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        raise TypeError(f"RawCodec sends bytes or str, got {type(value).__name__}; pass schema= or codec=JsonCodec()")

    def decode(self, data: bytes) -> Any:
        return data


class JsonCodec:
    content_type: str | None = "application/json"
    content_encoding: str | None = None

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class ModelCodec(Generic[M]):
    """A pydantic model as JSON. Decoding validates; a failure dead-letters the message."""

    content_type: str | None = "application/json"
    content_encoding: str | None = None

    def __init__(self, schema: type[M]) -> None:
        self.schema = schema

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, self.schema):
            value = self.schema.model_validate(value)
        encoded: str = value.model_dump_json()
        return encoded.encode()

    def decode(self, data: bytes) -> M:
        return self.schema.model_validate_json(data)


class MsgpackCodec:
    """msgpack, when the optional ``msgpack`` package is installed."""

    content_type: str | None = "application/msgpack"
    content_encoding: str | None = None

    def __init__(self) -> None:
        import msgpack

        self._msgpack = msgpack

    def encode(self, value: Any) -> bytes:
        return bytes(self._msgpack.packb(value, use_bin_type=True))

    def decode(self, data: bytes) -> Any:
        return self._msgpack.unpackb(data, raw=False)


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=6)
    if encoding == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    raise ValueError(f"unknown content-encoding {encoding!r}; use 'gzip' or 'zstd'")


def decompress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "zstd":
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30))
    raise ValueError(f"unknown content-encoding {encoding!r}")


class Compressed:
    """Wraps a codec: compresses after encoding, and marks the message so receivers decompress."""

    def __init__(self, inner: Codec, encoding: str = "gzip") -> None:
        compress(b"", encoding)  # fail now, not on the first send, if zstd is missing
        self.inner = inner
        self.content_type = inner.content_type
        self.content_encoding: str | None = encoding

    def encode(self, value: Any) -> bytes:
        return compress(self.inner.encode(value), self.content_encoding or "gzip")

    def decode(self, data: bytes) -> Any:
        return self.inner.decode(data)


def codec_for(schema: type[BaseModel] | None, codec: Codec | None) -> Codec:
    if schema is not None and codec is not None:
        raise ValueError("pass schema= or codec=, not both")
    if schema is not None:
        return ModelCodec(schema)
    return codec if codec is not None else RawCodec()

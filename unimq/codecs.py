"""Payload codecs: raw bytes, JSON, pydantic models, msgpack (optional), and compression.

A codec turns an application value into body bytes and back, and names its content type. Never
pickle: a queue is a trust boundary. Compression wraps any codec and marks the message with a
``content-encoding`` header, which consumers honour whatever codec they use.

Encoding is the sender's side: a value a codec cannot encode is a :class:`ConfigError` (the
original exception chained). Decoding errors stay native: the consumer dead-letters the message
with them as the reason. Decompression is streamed and stops at a size bound, so a small
compressed body cannot become gigabytes in memory.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from unimq.errors import ConfigError, MessageTooLarge

M = TypeVar("M", bound=BaseModel)

CONTENT_ENCODING = "content-encoding"
#: Bytes decompressed per step: the memory a decompression holds beyond its output.
_CHUNK = 64 * 1024


def _cannot_encode(codec: str, exc: Exception) -> ConfigError:
    """A one-line ConfigError for a value ``codec`` cannot encode."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(value)'}: {err['msg']}" for err in exc.errors()[:5]
        )
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        detail = f"{exc.title} does not validate: {problems}{more}"
    elif isinstance(exc, UnicodeEncodeError):
        detail = (f"text holds a character UTF-8 cannot encode ({exc.reason}, at position {exc.start}), "
                  "e.g. a lone surrogate")
    else:
        detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return ConfigError(f"{codec} cannot encode the body: {detail}")


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
            try:
                return value.encode()
            except UnicodeEncodeError as exc:
                raise _cannot_encode("RawCodec", exc) from exc
        raise ConfigError(f"RawCodec sends bytes or str, got {type(value).__name__}; "
                          "pass schema= or codec=JsonCodec()")

    def decode(self, data: bytes) -> Any:
        return data


class JsonCodec:
    content_type: str | None = "application/json"
    content_encoding: str | None = None

    def encode(self, value: Any) -> bytes:
        """JSON as the standard has it: NaN and infinities are refused, not written as bare words."""
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _cannot_encode("JsonCodec", exc) from exc

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class ModelCodec(Generic[M]):
    """A pydantic model as JSON. Decoding validates; a failure dead-letters the message."""

    content_type: str | None = "application/json"
    content_encoding: str | None = None

    def __init__(self, schema: type[M]) -> None:
        self.schema = schema

    def encode(self, value: Any) -> bytes:
        try:
            if not isinstance(value, self.schema):
                value = self.schema.model_validate(value)
            encoded: str = value.model_dump_json()
            return encoded.encode()
        except (ValidationError, TypeError, ValueError, OverflowError) as exc:
            raise _cannot_encode(f"ModelCodec({self.schema.__name__})", exc) from exc

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
        try:
            return bytes(self._msgpack.packb(value, use_bin_type=True))
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _cannot_encode("MsgpackCodec", exc) from exc

    def decode(self, data: bytes) -> Any:
        return self._msgpack.unpackb(data, raw=False)


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=6)
    if encoding == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    raise ConfigError(f"unknown content-encoding {encoding!r}; use 'gzip' or 'zstd'")


def decompress(data: bytes, encoding: str, max_size: int | None = None) -> bytes:
    """Decompress ``data``, streaming; more than ``max_size`` bytes of output is MessageTooLarge.

    ``None`` means no bound. Memory stays within ``max_size`` plus one chunk, whatever the ratio.
    """
    if encoding == "gzip":
        return _gunzip(data, max_size)
    if encoding == "zstd":
        return _unzstd(data, max_size)
    raise ValueError(f"unknown content-encoding {encoding!r}")


def _too_large(encoding: str, max_size: int) -> MessageTooLarge:
    return MessageTooLarge(f"the {encoding} body decompresses to more than {max_size} bytes (the consumer's "
                           "bound on decompressed size)")


def _gunzip(data: bytes, max_size: int | None) -> bytes:
    """gzip, every member, as :func:`gzip.decompress` reads it, but bounded."""
    out = bytearray()
    pending = data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not inflater.eof:
            room = _CHUNK if max_size is None else min(_CHUNK, max_size + 1 - len(out))
            chunk = inflater.decompress(pending, room)
            pending = inflater.unconsumed_tail
            out += chunk
            if max_size is not None and len(out) > max_size:
                raise _too_large("gzip", max_size)
            if not chunk and not pending and not inflater.eof:
                raise EOFError("compressed gzip data ended before the end-of-stream marker")
        pending = inflater.unused_data.lstrip(b"\x00")
        if not pending:
            return bytes(out)


def _unzstd(data: bytes, max_size: int | None) -> bytes:
    import zstandard

    out = bytearray()
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
        while chunk := reader.read(_CHUNK if max_size is None else min(_CHUNK, max_size + 1 - len(out))):
            out += chunk
            if max_size is not None and len(out) > max_size:
                raise _too_large("zstd", max_size)
    return bytes(out)


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
        raise ConfigError("pass schema= or codec=, not both")
    if schema is not None:
        return ModelCodec(schema)
    return codec if codec is not None else RawCodec()

"""Schema versioning: a version header from the pydantic model, upcasters for older versions.

The producer stamps ``x-unimq-schema-version: N`` (N = the model's ``__version__`` class variable,
or ``version=``). A consumer with the same middleware turns older bodies into the current shape
with the upcasters registered for them (``1 → 2``, ``2 → 3``… each takes and returns the decoded
JSON object), before the codec validates it against the model. A body from a newer producer is
dead-lettered with the reason (``on_newer="dead_letter"``), or nacked to wait for this consumer's
upgrade (``on_newer="nack"``: a middleware :class:`~unimq.middleware.Nack`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel

from unimq.codecs import CONTENT_ENCODING, decompress
from unimq.errors import ConfigError
from unimq.message import Delivery, Message
from unimq.middleware import Middleware, Nack

HEADER = "x-unimq-schema-version"
#: Bound on a decompressed body being upcast (the consumer's own bound applies after).
MAX_UPCAST_BYTES = 64 * 1024 * 1024

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class SchemaVersionError(ValueError):
    """A body whose schema version this consumer cannot read (newer, or no upcaster from it)."""


def model_version(model: type[BaseModel]) -> int:
    version = getattr(model, "__version__", None)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{model.__name__} needs a schema version: add `__version__: ClassVar[int] = 1` to the "
                          "model, or pass version=")
    return version


class Versioned(Middleware):
    """Stamps and upcasts the schema version of ``model``'s payloads.

    ``upcasters`` maps a version to the function lifting a body of that version to the next one; a
    body without the header counts as ``unversioned`` (default 1, None = refuse it).
    """

    def __init__(
        self,
        model: type[BaseModel],
        *,
        version: int | None = None,
        upcasters: Mapping[int, Upcaster] | None = None,
        unversioned: int | None = 1,
        on_newer: Literal["dead_letter", "nack"] = "dead_letter",
        nack_delay: float = 60.0,
    ) -> None:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"Versioned needs a pydantic model class, got {model!r}")
        self.model = model
        self.version = model_version(model) if version is None else version
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise ConfigError(f"version must be an int >= 1, got {version!r}")
        if on_newer not in ("dead_letter", "nack"):
            raise ConfigError(f"on_newer must be 'dead_letter' or 'nack', got {on_newer!r}")
        self.on_newer = on_newer
        self.nack_delay = nack_delay
        self.unversioned = unversioned
        self._upcasters: dict[int, Upcaster] = {}
        for source, upcaster in (upcasters or {}).items():
            self.upcaster(source)(upcaster)

    def __repr__(self) -> str:
        return f"Versioned({self.model.__name__}, version={self.version}, upcasters={sorted(self._upcasters)})"

    def upcaster(self, source: int) -> Callable[[Upcaster], Upcaster]:
        """Register (as a decorator too) the function lifting version ``source`` to ``source + 1``."""
        if not isinstance(source, int) or isinstance(source, bool) or not 1 <= source < self.version:
            raise ConfigError(f"an upcaster lifts a version from 1 to {self.version - 1} to the next one; "
                              f"got {source!r} for {self.model.__name__} v{self.version}")

        def register(function: Upcaster) -> Upcaster:
            if not callable(function):
                raise ConfigError(f"upcaster for v{source} must be callable, got {type(function).__name__}")
            self._upcasters[source] = function
            return function

        return register

    async def on_publish(self, destination: str, message: Message) -> Message:
        return replace(message, headers={**message.headers, HEADER: str(self.version)})

    async def on_receive(self, destination: str, delivery: Delivery) -> None:
        message = delivery.message
        raw = message.headers.get(HEADER)
        if raw is None:
            if self.unversioned is None:
                raise SchemaVersionError(f"message has no {HEADER} header and unversioned bodies are refused")
            version = self.unversioned
        elif raw.isdigit() and raw.isascii():
            version = int(raw)
        else:
            raise SchemaVersionError(f"{HEADER} {raw[:20]!r} is not a version number")
        if version == self.version:
            return
        if version > self.version:
            reason = (f"{self.model.__name__} v{version} is newer than this consumer's v{self.version}; "
                      "upgrade the consumer")
            if self.on_newer == "nack":
                raise Nack(self.nack_delay, reason)
            raise SchemaVersionError(reason)
        delivery.message = self.upcast(message, version)

    def upcast(self, message: Message, version: int) -> Message:
        """``message`` (a JSON body of ``version``) lifted to the current version."""
        missing = [v for v in range(version, self.version) if v not in self._upcasters]
        if missing:
            raise SchemaVersionError(f"no upcaster from {self.model.__name__} v{missing[0]} to v{missing[0] + 1}; "
                                     "register one with Versioned(upcasters=...)")
        body = message.body
        headers = dict(message.headers)
        encoding = headers.pop(CONTENT_ENCODING, None)
        if encoding:
            body = decompress(body, encoding, MAX_UPCAST_BYTES)
        data = json.loads(body)
        for step in range(version, self.version):
            data = self._upcasters[step](data)
            if not isinstance(data, dict):
                raise SchemaVersionError(f"the upcaster from v{step} returned {type(data).__name__}, not a dict")
        headers[HEADER] = str(self.version)
        return replace(message, body=json.dumps(data, separators=(",", ":")).encode(), headers=headers)

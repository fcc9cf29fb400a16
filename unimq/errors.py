"""One error hierarchy for every backend.

Every error a user sees is a :class:`UnimqError`. Driver exceptions are wrapped (the native one
is chained as ``__cause__``), and every message passes through :func:`scrub` so that no password,
SAS key or token registered with :func:`register_secret` can appear in it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unimq.message import Message

_SECRETS: set[str] = set()
_SECRET_PATTERNS = re.compile(
    r"(?i)((?:password|passwd|pwd|secret|token|sharedaccesskey|sas_key|sasl_password|"
    r"aws_secret_access_key|secret_access_key|auth_token|nkey_seed)\s*[=:]\s*)([^;&\s'\"]+)"
)
REDACTED = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret so that it is scrubbed from every error message and log line."""
    if value and len(value) >= 3:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    """Remove registered secrets and ``key=value`` credentials from ``text``."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _SECRET_PATTERNS.sub(lambda m: m.group(1) + REDACTED, text)


class ScrubSecrets(logging.Filter):
    """A logging filter that scrubs secrets from records: for client libraries that log them.

    Attach it to each logger that may log a credential (a filter on a logger applies only to
    records logged to that very logger), e.g. ``scrub_loggers("botocore")``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_SCRUBBER = ScrubSecrets()


def scrub_loggers(prefix: str) -> None:
    """Attach :class:`ScrubSecrets` to the logger ``prefix`` and every existing logger below it."""
    names = [prefix, *(n for n in logging.root.manager.loggerDict if n.startswith(prefix + "."))]
    for name in names:
        logger = logging.getLogger(name)
        if _SCRUBBER not in logger.filters:
            logger.addFilter(_SCRUBBER)


class UnimqError(Exception):
    """Base of every unimq error. ``retryable`` says whether trying again may succeed."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(scrub(message))
        if retryable is not None:
            self.retryable = retryable


class ConfigError(UnimqError):
    """A URL, query parameter or option is wrong; the message names it and the valid choices."""


class CapabilityError(UnimqError):
    """The backend cannot honour an option; the message says which and what to do instead."""

    @classmethod
    def unsupported(cls, backend: str, option: str, capability: str, instead: str) -> CapabilityError:
        return cls(
            f"{backend} cannot honour {option}: its '{capability}' capability is 'none'. {instead}"
        )


class ConnectionError(UnimqError):
    """The broker cannot be reached or the connection was lost."""

    retryable = True


class PublishError(UnimqError):
    """Some messages of a send were not accepted. ``results`` holds, per message, ``None`` or the error."""

    def __init__(
        self,
        message: str,
        *,
        messages: Sequence[Message] = (),
        results: Sequence[BaseException | None] = (),
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.messages = list(messages)
        self.results = list(results)

    @property
    def failed(self) -> list[tuple[Message, BaseException]]:
        return [(m, r) for m, r in zip(self.messages, self.results, strict=True) if r is not None]


class MessageTooLarge(UnimqError):
    """The message exceeds the backend's size limit; checked before any network call."""


class NotFound(UnimqError):
    """The destination or group does not exist (and the backend does not create it)."""


class Closed(UnimqError):
    """The broker, producer or consumer was closed."""


class Timeout(UnimqError):
    """An operation did not finish in time."""

    retryable = True


def wrap(exc: BaseException, context: str) -> UnimqError:
    """Map a driver exception to the hierarchy by its generic type; adapters refine this."""
    if isinstance(exc, UnimqError):
        return exc
    detail = f"{context}: {type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return Timeout(detail)
    if isinstance(exc, OSError):
        return ConnectionError(detail)
    return UnimqError(detail)

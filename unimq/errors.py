"""One error hierarchy for every backend.

Every error a user sees is a :class:`UnimqError`. Driver exceptions are wrapped (the native one
is chained as ``__cause__``), and every message passes through :func:`scrub`.

Secrets are known structurally: :func:`unimq.url.parse_url` finds the secret parts of each URL
(password, NATS token, secret query values, the key inside a connection string) and keeps them
in a :class:`Secrets` scope owned by that URL (and by what carries its key, e.g. a driver).
:func:`scrub` masks the secrets of every live scope plus ``key=value`` credentials; a scope ends
when its URL is garbage collected, so nothing accumulates for the life of the process.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from unimq.message import Message

REDACTED = "***"
#: Shorter values are not searched for in free text (they would mask innocent words).
MIN_SECRET = 8
_NAME = (r"[A-Za-z0-9_-]*(?:password|passwd|pwd|secret|token|sharedaccesskey|sharedaccesssignature|"
         r"sas_key|nkey_seed|secret_access_key)")
#: ``name=value``, quoted ``'name': 'value'`` and header-line ``name:value`` credentials as client
#: libraries log them. The name must end in a credential word (so ``SharedAccessKeyName=`` is not
#: one) and start a word; a bare ``name:`` counts only at the start of a line (an HTTP header).
_SECRET_PATTERN = re.compile(
    rf"(?im)(?<![A-Za-z0-9_-])(?:({_NAME})(\s*=\s*)|([\"']{_NAME}[\"']\s*:\s*)|^({_NAME}:)(?=[^\s:@]+(?:\s|$)))"
    r"(\"[^\"]*\"|'[^']*'|[^\s;&'\",)}\]]+)"
)


class Secrets:
    """The secret values of one URL (and of the options given with it): a scope for :func:`scrub`."""

    __slots__ = ("__weakref__", "_pattern", "_values")

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for value in values:
            self.add(value)

    def add(self, value: str | None) -> None:
        """Add ``value`` and its percent-encoded forms (error texts may quote the encoded URL).

        Only values that cannot be an everyday word are searched for in free text: at least
        :data:`MIN_SECRET` characters, and not all letters in one case (``queue``, ``Password``).
        Shorter or word-like secrets are still masked wherever they are known structurally (the
        URL's ``redacted()``), just not hunted for in other text, where they would mask that word.
        """
        if not value or len(value) < MIN_SECRET or (value.isalpha() and (value.islower() or value.isupper()
                                                                          or value.istitle())):
            return
        for form in (value, quote(value, safe=""), quote_plus(value, safe=""), quote(value)):
            if form not in self._values:
                self._values.add(form)
                self._pattern = None

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def __bool__(self) -> bool:
        return bool(self._values)

    def __repr__(self) -> str:
        return f"Secrets({len(self._values)} values)"

    def scrub(self, text: str) -> str:
        """Mask every value in one pass, longest first (a secret that is a prefix of another cannot
        leave the other's tail, whatever the order the values were added in)."""
        if not self._values:
            return text
        if self._pattern is None:
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(value) for value in ordered))
        return self._pattern.sub(REDACTED, text)


#: Every live scope (weakly held: a scope ends with the objects that own it).
_LIVE: weakref.WeakSet[Secrets] = weakref.WeakSet()
#: The scope of the URL most recently parsed in this context, for :func:`register_secret`.
_CURRENT: ContextVar[weakref.ref[Secrets] | None] = ContextVar("unimq_secret_scope", default=None)


def enter_scope(secrets: Secrets) -> None:
    """Make ``secrets`` live (scrubbed from every error) and the target of :func:`register_secret`
    in this context."""
    _LIVE.add(secrets)
    _CURRENT.set(weakref.ref(secrets))


#: Secrets registered in this context with no live URL to own them (a database password).
_UNOWNED: ContextVar[Secrets | None] = ContextVar("unimq_unowned_secrets", default=None)


def register_secret(value: str | None) -> None:
    """Add ``value`` to the scope of the URL most recently parsed in this context.

    For adapters with secrets that come from keyword options rather than the URL (``connect``
    parses the URL, then builds the driver, in one context). With no live URL in this context the
    value goes to a scope of the context itself, which ends with the context (an ``asyncio.run``,
    a task), not with the process.
    """
    ref = _CURRENT.get()
    scope = ref() if ref is not None else None
    if scope is None:
        scope = _UNOWNED.get()
        if scope is None:
            scope = Secrets()
            _UNOWNED.set(scope)
            _LIVE.add(scope)
    scope.add(value)


def scrub_pattern(text: str) -> str:
    """Mask the values of ``password=...``-style credentials in ``text``."""

    def mask(m: re.Match[str]) -> str:
        value = m.group(5)
        quoted = value[:1] if value[:1] in "'\"" and len(value) > 1 else ""
        prefix = m.group(1) + m.group(2) if m.group(1) else m.group(3) or m.group(4)
        return f"{prefix}{quoted}{REDACTED}{quoted}"

    return _SECRET_PATTERN.sub(mask, text)


def scrub(text: str, scopes: Iterable[Secrets] | None = None) -> str:
    """Remove the secrets of ``scopes`` (default: every live one) and ``key=value`` credentials."""
    for secrets in list(_LIVE) if scopes is None else scopes:
        text = secrets.scrub(text)
    return scrub_pattern(text)


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


class AuthenticationError(ConfigError):
    """The broker refused the credentials (wrong user, password, key or token). Not retryable."""


class PermissionDenied(ConfigError):
    """The credentials are valid but not allowed to do this (ACL, missing claim). Not retryable."""


class BrokerConnectionError(UnimqError):
    """The broker cannot be reached or the connection was lost. Retryable."""

    retryable = True


#: Deprecated alias of :class:`BrokerConnectionError` (it shadowed the builtin); kept for one release.
ConnectionError = BrokerConnectionError


class Throttled(UnimqError):
    """The broker asked the client to slow down (quota, rate limit). Retryable after a pause."""

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


#: One row of a driver's error table: a client-library exception type, the unimq class it becomes,
#: and optionally a test on the exception (for clients that signal several causes with one type).
ErrorRule = tuple[type[BaseException], type[UnimqError]] | tuple[
    type[BaseException], type[UnimqError], Callable[[BaseException], bool]
]

#: The classification every driver table follows, the same on every backend:
#:
#: ================================  =========================  =========
#: cause                             class                      retryable
#: ================================  =========================  =========
#: wrong credentials                 AuthenticationError        no
#: authenticated but not allowed     PermissionDenied           no
#: host unreachable, connection lost BrokerConnectionError      yes
#: unknown destination or group      NotFound                   no
#: broker asks to slow down          Throttled                  yes
#: message over the broker's limit   MessageTooLarge            no
#: operation timed out               Timeout                    yes
#: anything else                     UnimqError                 no
#: ================================  =========================  =========
GENERIC_ERRORS: tuple[ErrorRule, ...] = (
    (TimeoutError, Timeout),
    (PermissionError, PermissionDenied),
    (OSError, BrokerConnectionError),
)


def wrap(exc: BaseException, context: str, table: Sequence[ErrorRule] = ()) -> UnimqError:
    """Map a client-library exception through ``table`` (first match wins), then the generic rows."""
    if isinstance(exc, UnimqError):
        return exc
    detail = f"{context}: {type(exc).__name__}: {exc}"
    for rule in (*table, *GENERIC_ERRORS):
        if isinstance(exc, rule[0]) and (len(rule) == 2 or rule[2](exc)):
            return rule[1](detail)
    return UnimqError(detail)

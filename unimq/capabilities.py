"""Capability flags: what a backend does natively, what unimq emulates, and what it cannot do.

Every adapter declares one frozen :class:`Capabilities`. The core checks each option against it
(:func:`check_message`) so that an option a backend cannot honour raises :class:`CapabilityError`
instead of being silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from unimq import durations
from unimq.errors import CapabilityError, ConfigError, MessageTooLarge
from unimq.message import Message

if TYPE_CHECKING:
    from unimq.driver import DestinationSpec


class Support(StrEnum):
    NATIVE = "native"
    EMULATED = "emulated"
    NONE = "none"


class Feature(BaseModel):
    """One capability: its support level, an optional numeric limit and a note for the docs."""

    model_config = ConfigDict(frozen=True)

    support: Support = Support.NONE
    limit: float | None = None
    note: str = ""

    def __bool__(self) -> bool:
        return self.support is not Support.NONE

    @property
    def is_native(self) -> bool:
        return self.support is Support.NATIVE

    def __str__(self) -> str:
        text = self.support.value
        if self.limit is not None:
            text += f" (limit {_number(self.limit)})"
        return text


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 or float(value).is_integer() else f"{value:g}"


def native(limit: float | None = None, note: str = "") -> Feature:
    return Feature(support=Support.NATIVE, limit=limit, note=note)


def emulated(limit: float | None = None, note: str = "") -> Feature:
    return Feature(support=Support.EMULATED, limit=limit, note=note)


def none(note: str = "") -> Feature:
    return Feature(support=Support.NONE, note=note)


Ordering = Literal["none", "per_key", "global"]

# What each limit means, for the generated tables.
LIMIT_UNITS = {
    "delayed_delivery": "max delay, seconds",
    "nack_delay": "max delay, seconds",
    "priority": "highest priority",
    "message_ttl": "max TTL, seconds",
    "deduplication": "window, seconds",
    "batch_send": "max messages per batch",
    "lock_extension": "max lock, seconds",
    "partitions": "max partitions",
    "replication": "max replicas",
    "retention": "max retention, seconds",
    "lock_timeout": "max lock, seconds",
    "max_deliveries": "max deliveries",
}


class Capabilities(BaseModel):
    """The capability declaration of one backend. Frozen, printable, JSON-able."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    persistence: Feature = none()
    fanout: Feature = none()
    competing_consumers: Feature = none()
    ordering: Ordering = "none"
    ordering_note: str = ""
    delayed_delivery: Feature = none()
    nack_delay: Feature = none()
    dead_letter: Feature = none()
    priority: Feature = none()
    message_ttl: Feature = none()
    deduplication: Feature = none()
    replay: Feature = none()
    lock_extension: Feature = none()
    peek: Feature = none()
    batch_send: Feature = none()
    headers: Feature = none()
    transactions: Feature = none()
    listing: Feature = none()
    # What ensure() can provision (each DestinationSpec field is refused where its flag is none).
    partitions: Feature = none()
    replication: Feature = none()
    fifo: Feature = none()
    sessions: Feature = none()
    retention: Feature = none()
    lock_timeout: Feature = none()
    max_deliveries: Feature = none()
    dead_letter_expired: Feature = none()
    #: Whether a group created after messages were sent still receives them (a retained log), or
    #: only what is sent once the group exists (create groups first: ``ensure(groups=[...])``).
    new_group_backlog: Feature = none()
    # Patterns the core builds on any backend (an adapter with a native mapping declares native).
    routing: Feature = emulated(note="subject patterns and header filters per group, applied by the core on "
                                     "receipt: a group still receives what it does not want, and acks it")
    temporary: Feature = emulated(note="a named destination deleted on exit; swept by age after a crash")
    max_message_bytes: int = 1024 * 1024

    @classmethod
    def flag_names(cls) -> list[str]:
        """Names usable in ``require=``."""
        return [n for n in cls.model_fields if n not in ("backend", "ordering_note", "max_message_bytes")]

    def supports(self, name: str) -> bool:
        if name not in self.flag_names():
            raise KeyError(name)
        value = getattr(self, name)
        return value != "none" if name == "ordering" else bool(value)

    def require(self, names: Iterable[str]) -> None:
        """Raise :class:`CapabilityError` naming every required flag the backend lacks."""
        wanted = set(names)
        unknown = wanted - set(self.flag_names())
        if unknown:
            raise ConfigError(
                f"unknown capability in require=: {sorted(unknown)}; valid: {', '.join(self.flag_names())}"
            )
        missing = sorted(n for n in wanted if not self.supports(n))
        if missing:
            raise CapabilityError(
                f"{self.backend} lacks required capabilities {missing} (declared 'none'). "
                f"Choose another backend, or drop them from require=; see `unimq capabilities URL`."
            )

    def rows(self) -> list[tuple[str, str, str]]:
        """(flag, support, note) rows, for tables."""
        rows = []
        for name in self.flag_names():
            value = getattr(self, name)
            if name == "ordering":
                rows.append((name, value, self.ordering_note))
            else:
                limit = f"{LIMIT_UNITS.get(name, 'limit')}: {_number(value.limit)}" if value.limit is not None else ""
                note = "; ".join(p for p in (limit, value.note) if p)
                rows.append((name, value.support.value, note))
        rows.append(("max_message_bytes", str(self.max_message_bytes), ""))
        return rows

    def table(self) -> str:
        """A plain-text table for terminals."""
        rows = [("capability", "support", "limit / note"), *self.rows()]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{self.backend} capabilities"]
        lines += [f"  {a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
        return "\n".join(lines)

    def markdown(self) -> str:
        """A Markdown table, used to generate the docs from the declaration."""
        lines = ["| capability | support | limit / note |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.rows()]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)

    def __str__(self) -> str:
        return self.table()


def check_message(caps: Capabilities, message: Message) -> None:
    """Refuse, before any network call, a malformed message or one the backend cannot carry as asked."""
    validate_message(message)
    if len(message.body) > caps.max_message_bytes:
        raise MessageTooLarge(
            f"message {message.message_id} has a {len(message.body)}-byte body; {caps.backend} accepts at most "
            f"{caps.max_message_bytes} bytes. Store large payloads elsewhere and send a reference."
        )
    if message.delay is not None and message.delay.total_seconds() > 0:
        check_limit(caps, "delay", "delayed_delivery", message.delay.total_seconds(),
                     "Schedule the work in the application instead.")
    if message.ttl is not None:
        check_limit(caps, "ttl", "message_ttl", message.ttl.total_seconds(), "Drop the ttl or check age on receipt.")
    if message.priority is not None:
        check_limit(caps, "priority", "priority", message.priority, "Use a separate destination per priority.")
    if message.headers and not caps.headers:
        raise CapabilityError.unsupported(caps.backend, "headers", "headers", "Put the metadata in the body.")


_OPTIONAL_TEXT = ("key", "correlation_id", "reply_to", "content_type")


def validate_message(message: Message) -> None:
    """Check every field's type and range once, at send, so a bad field is a ConfigError naming it."""
    if not isinstance(message.body, bytes):
        raise ConfigError(f"message body must be bytes (or use a codec/schema), got {type(message.body).__name__}")
    if not isinstance(message.message_id, str) or not message.message_id:
        raise ConfigError("message_id must be a non-empty str")
    # Unrolled fast path (a getattr loop per send was a third of this check); the loop only names the bad field.
    if not (
        (message.key is None or isinstance(message.key, str))
        and (message.correlation_id is None or isinstance(message.correlation_id, str))
        and (message.reply_to is None or isinstance(message.reply_to, str))
        and (message.content_type is None or isinstance(message.content_type, str))
    ):
        for name in _OPTIONAL_TEXT:
            value = getattr(message, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"message {name} must be a str or None, got {type(value).__name__}")
    headers = message.headers
    if not isinstance(headers, dict):
        raise ConfigError(f"message headers must be a dict of str to str, got {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError(f"message headers must map str to str; {name!r}: {type(value).__name__}")
    if message.delay is not None:
        message.delay = durations.as_timedelta(message.delay, "delay")
    if message.ttl is not None:
        message.ttl = durations.as_timedelta(message.ttl, "ttl", allow_zero=False)
        if message.ttl < _SMALLEST_TTL:
            raise ConfigError(f"ttl must be at least 1 ms, got {message.ttl}")
    priority = message.priority
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool) or priority < 0):
        raise ConfigError(f"priority must be an int >= 0, got {priority!r}")


_SMALLEST_TTL = timedelta(milliseconds=1)


def check_spec(caps: Capabilities, destination: str, spec: DestinationSpec) -> None:
    """Refuse, before any network call, every ``ensure()`` field the backend cannot honour."""
    option = f"{{}}= in ensure({destination!r})"
    if spec.groups and not caps.fanout:
        raise CapabilityError.unsupported(caps.backend, option.format("groups"), "fanout",
                                          "Its consumers always compete for one queue: drop groups=.")
    if spec.temporary and not caps.temporary.is_native:
        raise CapabilityError(f"{caps.backend} cannot honour temporary= in ensure({destination!r}): the broker "
                              f"cannot remove a destination by itself (its 'temporary' capability is "
                              f"{caps.temporary.support.value}). Use broker.temporary(), which deletes it on exit.")
    for field, flag, value, instead in (
        ("partitions", "partitions", spec.partitions, "Drop partitions=; order per key needs another backend."),
        ("replication", "replication", spec.replication, "Drop replication=; the broker's own setting applies."),
        ("fifo", "fifo", spec.fifo or None, "Drop fifo=, or use a backend whose ordering is per_key or global."),
        ("sessions", "sessions", spec.sessions or None, "Drop sessions=; use key= for per-key order where supported."),
        ("retention", "retention", spec.retention, "Drop retention=; the broker's retention applies."),
        ("lock_timeout", "lock_timeout", spec.lock_timeout, "Pass lock_timeout= to consumer() instead."),
        ("max_deliveries", "max_deliveries", spec.max_deliveries,
         "Drop max_deliveries= and count delivery.attempt in the handler (Retry(max_attempts=...))."),
        ("deduplication", "deduplication", spec.deduplication,
         "De-duplicate in the consumer (unimq.idempotency)."),
        ("max_priority", "priority", spec.max_priority, "Use a destination per priority."),
        ("dead_letter_expired", "dead_letter_expired", spec.dead_letter_expired or None,
         "Drop dead_letter_expired=; expired messages are dropped on this backend."),
    ):
        if value is None:
            continue
        feature: Feature = getattr(caps, flag)
        if not feature:
            raise CapabilityError.unsupported(caps.backend, option.format(field), flag, instead)
        number = value.total_seconds() if isinstance(value, timedelta) else float(value)
        if feature.limit is not None and number > feature.limit:
            raise CapabilityError(f"{caps.backend} cannot honour {field}={number:g} in ensure({destination!r}): "
                                  f"its '{flag}' limit is {feature.limit:g}. {instead}")


def check_limit(caps: Capabilities, option: str, flag: str, value: float, instead: str) -> None:
    feature: Feature = getattr(caps, flag)
    if not feature:
        raise CapabilityError.unsupported(caps.backend, option, flag, instead)
    if feature.limit is not None and value > feature.limit:
        raise CapabilityError(
            f"{caps.backend} cannot honour {option}={value:g}: its '{flag}' limit is {feature.limit:g}. {instead}"
        )


_STRENGTH = {Support.NONE: 0, Support.EMULATED: 1, Support.NATIVE: 2}
_ORDER_STRENGTH = {"none": 0, "per_key": 1, "global": 2}


def intersect(a: Capabilities, b: Capabilities) -> Capabilities:
    """What two backends can both honour: the weaker support and the tighter limit of each flag.

    Used by dual-publishing, where an option must hold on the old and the new backend alike.
    """
    fields: dict[str, object] = {"backend": f"{a.backend}+{b.backend}"}
    for name in Capabilities.flag_names():
        x, y = getattr(a, name), getattr(b, name)
        if name == "ordering":
            fields[name] = min(x, y, key=_ORDER_STRENGTH.__getitem__)
            continue
        weaker = min(x, y, key=lambda f: _STRENGTH[f.support])
        limits = [f.limit for f in (x, y) if f.limit is not None]
        note = f"{a.backend}: {x.note or x.support.value}; {b.backend}: {y.note or y.support.value}"
        fields[name] = Feature(support=weaker.support, limit=min(limits) if limits else None, note=note)
    fields["max_message_bytes"] = min(a.max_message_bytes, b.max_message_bytes)
    return Capabilities.model_validate(fields)

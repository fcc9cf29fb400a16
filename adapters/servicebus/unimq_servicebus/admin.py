"""Entity management: the test double's ``$unimq-control`` node, or Azure's administration client.

The Python ``ServiceBusAdministrationClient`` always speaks HTTPS to ``https://<namespace>``, so it
cannot manage a non-TLS emulator; with ``emulator=true`` the driver sends control requests over
the SDK's own AMQP client instead (the double's protocol, docs/servicebus-double.md). An endpoint
without that node (the official emulator, the double in static mode) answers the first request
with a refused link: :class:`ControlUnavailable`, and the driver then manages nothing (its
entities come from the emulator's config file) while sending and receiving work as usual.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from unimq.errors import CapabilityError, ConfigError, ConnectionError, NotFound, Timeout, UnimqError
from unimq_servicebus.mapping import entity_path
from unimq_servicebus.options import Endpoint

Kind = Literal["queue", "topic"]
CONTROL_NODE = "$unimq-control"
#: A name no entity has: asking its stats tells whether the control node answers at all.
PROBE_NAME = "$unimq-probe"
#: The rule a new subscription has (the TrueFilter), and the one restored when no filter is wanted.
DEFAULT_RULE = "$Default"
#: The TrueFilter under another name, where ``$Default`` holds something else.
ALL_RULE = "unimq-all"


@dataclass(frozen=True)
class EntityOptions:
    """What ensure() sets on a queue, a topic (dedup only) or a subscription."""

    lock_duration: float | None = None
    max_delivery_count: int | None = None
    duplicate_detection_window: float | None = None
    default_ttl: float | None = None
    #: Set only when creating: Service Bus cannot change it on an existing entity.
    requires_session: bool | None = None
    dead_lettering_on_message_expiration: bool | None = None
    #: Seconds idle before Service Bus deletes the queue or topic (ensure(temporary=True)); not set
    #: on subscriptions, which go with their topic: one deleted alone would leave the topic dropping
    #: messages sent to that group.
    auto_delete_on_idle: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def queue_options(self) -> dict[str, Any]:
        return {k: v for k, v in {
            "lock_duration": self.lock_duration, "max_delivery_count": self.max_delivery_count,
            "duplicate_detection_window": self.duplicate_detection_window, "default_ttl": self.default_ttl,
            "requires_session": self.requires_session,
            "dead_lettering_on_message_expiration": self.dead_lettering_on_message_expiration,
            "auto_delete_on_idle": self.auto_delete_on_idle,
        }.items() if v is not None}

    def topic_options(self) -> dict[str, Any]:
        return {k: v for k, v in {
            "duplicate_detection_window": self.duplicate_detection_window, "default_ttl": self.default_ttl,
            "auto_delete_on_idle": self.auto_delete_on_idle,
        }.items() if v is not None}

    def subscription_options(self) -> dict[str, Any]:
        return {k: v for k, v in {
            "lock_duration": self.lock_duration, "max_delivery_count": self.max_delivery_count,
            "default_ttl": self.default_ttl, "requires_session": self.requires_session,
            "dead_lettering_on_message_expiration": self.dead_lettering_on_message_expiration,
        }.items() if v is not None}


@dataclass
class EntityStats:
    depth: int | None
    in_flight: int | None
    dead_letter_depth: int | None
    detail: dict[str, Any]


class Admin(abc.ABC):
    """The management operations the driver needs."""

    @abc.abstractmethod
    async def kind(self, name: str) -> Kind | None:
        """'queue', 'topic', or None if there is no such entity."""

    @abc.abstractmethod
    async def create_queue(self, name: str, options: EntityOptions) -> None: ...

    @abc.abstractmethod
    async def create_topic(self, name: str, options: EntityOptions, subscriptions: tuple[str, ...]) -> None: ...

    @abc.abstractmethod
    async def subscriptions(self, topic: str) -> list[str]: ...

    @abc.abstractmethod
    async def requires_session(self, name: str, group: str | None) -> bool | None:
        """Whether the queue, or the topic's subscription ``group``, requires sessions; for a topic
        with ``group=None``, whether any of its subscriptions does. None if there is no such entity."""

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Delete a queue or a topic (with its subscriptions); a missing one is not an error."""

    @abc.abstractmethod
    async def stats(self, name: str, group: str | None) -> EntityStats: ...

    @abc.abstractmethod
    async def names(self) -> list[str]:
        """Queues and topics."""

    @abc.abstractmethod
    async def rules(self, topic: str, group: str) -> dict[str, str | None]:
        """The subscription's rules: name → SQL filter (None: the TrueFilter; another filter kind
        is some text that is neither)."""

    @abc.abstractmethod
    async def create_rule(self, topic: str, group: str, name: str, sql: str | None) -> None:
        """Add a rule (``sql`` None: the TrueFilter); one of that name existing already is not an error."""

    @abc.abstractmethod
    async def delete_rule(self, topic: str, group: str, name: str) -> None:
        """Remove a rule; a missing one is not an error."""

    async def route(self, topic: str, group: str, sql: str | None) -> None:
        """Leave the subscription ``group`` exactly one rule: the SQL filter ``sql``, or the
        TrueFilter for None (an existing one is kept).

        The wanted rule is added before the others go, so the subscription is never without a rule
        (a subscription with none gets nothing). A SQL rule is named after its text's hash, so an
        existing one is the same filter. Another process routing the same group at the same time
        may delete this rule between the steps: if no rule is left at the end, it is added again.
        """
        current = await self.rules(topic, group)
        if sql is None:
            keep = next((name for name, found in current.items() if found is None), None)
            if keep is None:
                keep = DEFAULT_RULE if DEFAULT_RULE not in current else ALL_RULE
                await self.create_rule(topic, group, keep, None)
        else:
            keep = rule_name(sql)
            if keep not in current:
                await self.create_rule(topic, group, keep, sql)
        others = [name for name in current if name != keep]
        for name in others:
            await self.delete_rule(topic, group, name)
        if others and not await self.rules(topic, group):
            await self.create_rule(topic, group, keep, sql)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free the management connection."""


def rule_name(sql: str) -> str:
    """``unimq-<hash of the filter>``: within Service Bus's 50 characters, the same for the same filter."""
    return "unimq-" + hashlib.sha256(sql.encode()).hexdigest()[:16]


class ControlError(UnimqError):
    """A failed ``$unimq-control`` request."""


class ControlUnavailable(CapabilityError):
    """The endpoint has no ``$unimq-control`` node (the official emulator, the double in static mode)."""


class _Anonymous:
    """pyamqp's auth shape for a plain SASL ANONYMOUS connection (no CBS): what the double accepts."""

    auth_type = None

    def __init__(self) -> None:
        from azure.servicebus._pyamqp.sasl import SASLAnonymousCredential

        self.sasl = SASLAnonymousCredential()


class ControlAdmin(Admin):
    """Requests to the double's ``$unimq-control`` node over the SDK's vendored AMQP client.

    ``azure.servicebus._pyamqp`` is the SDK's private AMQP stack; it is used only here, only for
    the double, and the dependency pins azure-servicebus below 8.
    """

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self._host = f"{endpoint.namespace}:{endpoint.port or 5672}"
        self._timeout = timeout
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def available(self) -> bool:
        """Whether the endpoint has the control node (False: it refused the node's link)."""
        try:
            await self._request("stats", {"name": PROBE_NAME})
        except NotFound:
            return True
        except ControlUnavailable:
            return False
        return True

    async def _request(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        # One request at a time: pyamqp's management operation fails under concurrent requests.
        async with self._lock:
            if self._client is None:
                return await self._request_now(operation, body)
            try:
                return await self._request_now(operation, body)
            except ConnectionError:  # the kept connection went stale (broker restarted): once more, anew
                return await self._request_now(operation, body)

    async def _request_now(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        from azure.servicebus._pyamqp.aio import AMQPClientAsync
        from azure.servicebus._pyamqp.message import Message

        request = Message(value=body, application_properties={"operation": operation})
        opened = False
        try:
            async with asyncio.timeout(self._timeout):
                if self._client is None:
                    client = AMQPClientAsync(self._host, use_tls=False, auth=_Anonymous())  # type: ignore[no-untyped-call]
                    self._client = client
                    await client.open_async()  # type: ignore[no-untyped-call]
                opened = True
                status, description, response = await self._client.mgmt_request_async(
                    request, operation=operation, operation_type=b"unimq", node=CONTROL_NODE, timeout=self._timeout)
        except Exception as exc:
            # The connection is gone (broker restarted, network): the next request opens a new one.
            broken, self._client = self._client, None
            with contextlib.suppress(Exception):
                await broken.close_async()
            if opened and _refused(exc):
                raise ControlUnavailable(f"servicebus: {self._host} has no {CONTROL_NODE} node (the official "
                                         "emulator, or the double in static mode)") from exc
            if isinstance(exc, TimeoutError):
                raise Timeout(f"servicebus: {operation} got no answer within {self._timeout:g}s "
                              "(operation_timeout)") from exc
            raise ConnectionError(f"servicebus: {operation} failed, the control connection was lost: "
                                  f"{type(exc).__name__}: {exc}") from exc
        text = description.decode() if isinstance(description, bytes) else str(description)
        if status == 404:
            raise NotFound(f"servicebus: {text}")
        if status in (400, 409):
            raise ConfigError(f"servicebus: {operation} refused: {text}")
        if not 200 <= status < 300:
            raise ControlError(f"servicebus: {operation} failed with {status}: {text}")
        return _decoded(response.value) or {}

    async def kind(self, name: str) -> Kind | None:
        try:
            stats = await self._request("stats", {"name": name})
        except NotFound:
            return None
        return "topic" if stats.get("kind") == "topic" else "queue"

    async def create_queue(self, name: str, options: EntityOptions) -> None:
        await self._request("create-queue", {"name": name, "options": options.queue_options()})

    async def create_topic(self, name: str, options: EntityOptions, subscriptions: tuple[str, ...]) -> None:
        await self._request("create-topic", {"name": name, "options": options.topic_options()})
        for sub in subscriptions:
            await self._request("create-subscription",
                                {"topic": name, "name": sub, "options": options.subscription_options()})

    async def subscriptions(self, topic: str) -> list[str]:
        listed = await self._request("list", {})
        prefix = f"{topic}/subscriptions/".lower()
        return [str(e["name"])[len(prefix):] for e in listed.get("entities", [])
                if e.get("kind") == "subscription" and str(e["name"]).lower().startswith(prefix)]

    async def requires_session(self, name: str, group: str | None) -> bool | None:
        try:
            stats = await self._request("stats", {"name": entity_path(name, group)})
            if stats.get("kind") != "topic":
                return bool(stats.get("config", {}).get("requires_session"))
            subscriptions = [await self._request("stats", {"name": sub}) for sub in stats.get("subscriptions", [])]
        except NotFound:
            return None
        return any(sub.get("config", {}).get("requires_session") for sub in subscriptions)

    async def delete(self, name: str) -> None:
        try:
            await self._request("delete", {"name": name})
        except NotFound:
            return

    async def stats(self, name: str, group: str | None) -> EntityStats:
        path = entity_path(name, group)
        stats = await self._request("stats", {"name": path})
        if stats.get("kind") == "topic":
            return EntityStats(None, None, None, {"kind": "topic", "scheduled": stats.get("scheduled"),
                                                  "subscriptions": stats.get("subscriptions")})
        return EntityStats(
            depth=int(stats.get("active", 0)), in_flight=int(stats.get("locked", 0)),
            dead_letter_depth=int(stats.get("dead_letter_messages", 0)),
            detail={k: stats.get(k) for k in ("kind", "scheduled", "deferred", "consumers") if k in stats},
        )

    async def names(self) -> list[str]:
        listed = await self._request("list", {})
        return sorted(str(e["name"]) for e in listed.get("entities", []) if e.get("kind") in ("queue", "topic"))

    async def _rule_request(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        """A rule operation; a double from before rule operations refuses them: CapabilityError."""
        try:
            return await self._request(operation, body)
        except ConfigError as exc:
            if "unknown control operation" not in str(exc):
                raise
            raise CapabilityError(f"servicebus: {self._host} has no rule operations (a double older than "
                                  "them: restart it)") from exc

    async def rules(self, topic: str, group: str) -> dict[str, str | None]:
        found = await self._rule_request("rules", {"name": entity_path(topic, group)})
        return {str(rule["name"]): None if rule.get("sql") is None else str(rule["sql"])
                for rule in found.get("rules", [])}

    async def create_rule(self, topic: str, group: str, name: str, sql: str | None) -> None:
        await self._rule_request("create-rule", {"name": entity_path(topic, group), "rule": name, "sql": sql})

    async def delete_rule(self, topic: str, group: str, name: str) -> None:
        try:
            await self._rule_request("delete-rule", {"name": entity_path(topic, group), "rule": name})
        except NotFound:
            return

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close_async()


def _refused(exc: BaseException) -> bool:
    """pyamqp's ways of saying that the management link to the node was refused (the connection is up)."""
    return isinstance(exc, ValueError) or "failed to open mgmt link" in str(exc).lower()


def _decoded(value: Any) -> Any:
    """pyamqp hands back AMQP strings as bytes; the control replies are plain maps and lists."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_decoded(k): _decoded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decoded(v) for v in value]
    return value


class AzureAdmin(Admin):
    """``ServiceBusAdministrationClient`` (HTTPS). Needs the Manage claim; not testable against the double."""

    def __init__(self, endpoint: Endpoint) -> None:
        from azure.servicebus.aio.management import ServiceBusAdministrationClient

        if endpoint.connection_string:
            self._client = ServiceBusAdministrationClient.from_connection_string(endpoint.connection_string)
        else:
            self._client = ServiceBusAdministrationClient(endpoint.namespace, endpoint.credential)

    async def kind(self, name: str) -> Kind | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            await self._client.get_queue(name)
            return "queue"
        except ResourceNotFoundError:
            pass
        try:
            await self._client.get_topic(name)
            return "topic"
        except ResourceNotFoundError:
            return None

    async def create_queue(self, name: str, options: EntityOptions) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        settings = _azure_settings(options.queue_options())
        try:
            queue = await self._client.get_queue(name)
        except ResourceNotFoundError:
            await self._client.create_queue(name, **settings)
            return
        for key, value in settings.items():
            setattr(queue, key, value)
        await self._client.update_queue(queue)

    async def create_topic(self, name: str, options: EntityOptions, subscriptions: tuple[str, ...]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            topic = await self._client.get_topic(name)
        except ResourceNotFoundError:
            await self._client.create_topic(name, **_azure_settings(options.topic_options()))
        else:
            for key, value in _azure_settings(options.topic_options()).items():
                setattr(topic, key, value)
            await self._client.update_topic(topic)
        sub_settings = _azure_settings(options.subscription_options())
        for sub in subscriptions:
            try:
                existing = await self._client.get_subscription(name, sub)
            except ResourceNotFoundError:
                await self._client.create_subscription(name, sub, **sub_settings)
                continue
            for key, value in sub_settings.items():
                setattr(existing, key, value)
            await self._client.update_subscription(name, existing)

    async def subscriptions(self, topic: str) -> list[str]:
        return [s.name async for s in self._client.list_subscriptions(topic)]

    async def requires_session(self, name: str, group: str | None) -> bool | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            if group:
                return bool((await self._client.get_subscription(name, group)).requires_session)
            try:
                return bool((await self._client.get_queue(name)).requires_session)
            except ResourceNotFoundError:
                await self._client.get_topic(name)
            return any([bool(s.requires_session) async for s in self._client.list_subscriptions(name)])
        except ResourceNotFoundError:
            return None

    async def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        kind = await self.kind(name)
        try:
            if kind == "queue":
                await self._client.delete_queue(name)
            elif kind == "topic":
                await self._client.delete_topic(name)
        except ResourceNotFoundError:
            return

    async def stats(self, name: str, group: str | None) -> EntityStats:
        props: Any
        if group:
            props = await self._client.get_subscription_runtime_properties(name, group)
        elif await self.kind(name) == "topic":
            topic = await self._client.get_topic_runtime_properties(name)
            return EntityStats(None, None, None, {"kind": "topic", "scheduled": topic.scheduled_message_count,
                                                  "subscriptions": topic.subscription_count})
        else:
            props = await self._client.get_queue_runtime_properties(name)
        return EntityStats(
            depth=props.active_message_count, in_flight=None, dead_letter_depth=props.dead_letter_message_count,
            detail={"total": props.total_message_count,
                    "scheduled": getattr(props, "scheduled_message_count", None)},
        )

    async def names(self) -> list[str]:
        queues = [q.name async for q in self._client.list_queues()]
        topics = [t.name async for t in self._client.list_topics()]
        return sorted(queues + topics)

    async def rules(self, topic: str, group: str) -> dict[str, str | None]:
        from azure.servicebus.management import SqlRuleFilter, TrueRuleFilter

        found: dict[str, str | None] = {}
        async for rule in self._client.list_rules(topic, group):
            kind = rule.filter
            if isinstance(kind, TrueRuleFilter):
                found[rule.name] = None
            elif isinstance(kind, SqlRuleFilter):
                found[rule.name] = str(kind.sql_expression)
            else:  # a correlation or false filter: never the rule route() wants
                found[rule.name] = f"<{type(kind).__name__}>"
        return found

    async def create_rule(self, topic: str, group: str, name: str, sql: str | None) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.servicebus.management import SqlRuleFilter, TrueRuleFilter

        try:
            await self._client.create_rule(topic, group, name,
                                           filter=TrueRuleFilter() if sql is None else SqlRuleFilter(sql))
        except ResourceExistsError:
            return

    async def delete_rule(self, topic: str, group: str, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            await self._client.delete_rule(topic, group, name)
        except ResourceNotFoundError:
            return

    async def close(self) -> None:
        await self._client.close()


def _azure_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The double's option names → the administration client's keyword arguments."""
    out: dict[str, Any] = {}
    if "lock_duration" in options:
        out["lock_duration"] = timedelta(seconds=options["lock_duration"])
    if "max_delivery_count" in options:
        out["max_delivery_count"] = options["max_delivery_count"]
    if options.get("duplicate_detection_window"):
        out["requires_duplicate_detection"] = True
        out["duplicate_detection_history_time_window"] = timedelta(seconds=options["duplicate_detection_window"])
    if "default_ttl" in options:
        out["default_message_time_to_live"] = timedelta(seconds=options["default_ttl"])
    if "requires_session" in options:
        out["requires_session"] = options["requires_session"]
    if "dead_lettering_on_message_expiration" in options:
        out["dead_lettering_on_message_expiration"] = options["dead_lettering_on_message_expiration"]
    if "auto_delete_on_idle" in options:
        out["auto_delete_on_idle"] = timedelta(seconds=options["auto_delete_on_idle"])
    return out

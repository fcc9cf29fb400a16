"""The AsyncAPI 3.0 document of an App: its channels, operations and payload schemas.

Destinations become channels, subscribers ``receive`` operations and publishers ``send``
operations; pydantic models become ``components.schemas``. Bindings describe the channel on the
backend of the app's URL (Kafka topic and group id, AMQP exchange, SQS queue, NATS queue group);
where AsyncAPI defines no binding (Redis Streams, Service Bus, memory) the ``x-unimq-*``
extensions say what the destination is. Building it does not connect to the broker.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from unimq import registry
from unimq.url import BrokerURL, parse_options, parse_url

from .core import App, Publisher, Subscriber
from .handlers import hints

#: URL scheme -> AsyncAPI server protocol.
PROTOCOLS = {"amqp": "amqp", "amqps": "amqps", "rabbitmq": "amqp", "kafka": "kafka", "sqs": "sqs",
             "redis": "redis", "rediss": "redis", "nats": "nats", "tls": "nats", "servicebus": "amqp1",
             "memory": "memory"}

_RAW: dict[str, Any] = {"type": "string", "format": "binary", "description": "raw bytes"}
_PAYLOADS: dict[str, dict[str, Any]] = {
    "bytes": _RAW, "text": {"type": "string"}, "json": {"description": "any JSON value"},
}


@dataclass
class _Channel:
    destination: str
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class _Backend:
    scheme: str
    name: str
    url: BrokerURL
    driver: Any  # the adapter's Driver, constructed but never opened (None if it cannot be built)

    def dead_letter(self, destination: str) -> str | None:
        return None if self.driver is None else str(self.driver.dead_letter_destination(destination))

    def fifo(self, destination: str) -> bool:
        if self.driver is None:
            return False
        return bool(getattr(self.driver, "is_fifo", lambda _: destination.endswith(".fifo"))(destination))


def _key(text: str) -> str:
    """A component key AsyncAPI accepts (``^[A-Za-z0-9.\\-_]+$``)."""
    return re.sub(r"[^A-Za-z0-9.\-_]", "_", text) or "_"


def _backend(url: str) -> _Backend:
    parsed = parse_url(url)
    try:
        driver_cls = registry.load(parsed.scheme)
        driver = driver_cls(parsed, parse_options(driver_cls.Options, driver_cls.name, dict(parsed.query)))
        name = str(driver_cls.name)
    except Exception:  # adapter missing or options invalid: document without its naming rules
        driver, name = None, parsed.scheme
    return _Backend(parsed.scheme, name, parsed, driver)


def document(app: App, url: str | None = None) -> dict[str, Any]:
    """Build the AsyncAPI 3.0 document of ``app`` for the backend of ``url`` (default: the app's)."""
    if url is None:
        url = app.broker.url if app.running and app.url is None else app.url
    backend = _backend(url or os.environ.get("UNIMQ_URL") or "memory://")
    subscribers, publishers = app.subscribers(), app.publishers()
    models = _models(subscribers, publishers)
    refs, schemas = _schemas(models)
    channels: dict[str, _Channel] = {}

    def channel(destination: str) -> _Channel:
        return channels.setdefault(_key(destination), _Channel(destination))

    def message(chan: _Channel, schema: type[BaseModel] | None, kind: str) -> str:
        name = schema.__name__ if schema is not None else f"{_key(chan.destination)}.{kind}"
        payload = refs[schema] if schema is not None else _PAYLOADS[kind]
        content_type = "application/json" if schema is not None or kind == "json" else "application/octet-stream"
        chan.messages.setdefault(_key(name), {"name": name, "contentType": content_type, "payload": payload})
        return _key(name)

    operations: dict[str, Any] = {}
    for sub in subscribers:
        chan = channel(sub.destination)
        chan.groups.append(sub.group)
        msg = message(chan, sub.spec.schema, sub.spec.payload_kind)
        op_id = _key(f"{sub.destination}.receive.{sub.group or 'default'}")
        operations[op_id] = _operation("receive", chan, msg, sub.spec.name, sub.description,
                                       _receive_bindings(backend, sub))
        for pub in sub.publishers:
            out = channel(pub.destination)
            _send(operations, out, message(out, pub.schema or _returned(sub), "json"), pub, backend)
    attached = {id(p) for s in subscribers for p in s.publishers}
    for pub in (p for p in publishers if id(p) not in attached):
        out = channel(pub.destination)
        _send(operations, out, message(out, pub.schema, "json" if pub.schema is None else "model"), pub, backend)

    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {"title": app.title, "version": app.version, **({"description": app.description}
                                                                  if app.description else {})},
        "defaultContentType": "application/json",
        "servers": {_key(backend.name): _server(backend)},
        "channels": {key: _channel(backend, chan) for key, chan in channels.items()},
        "operations": operations,
        "components": {
            "messages": {k: v for chan in channels.values() for k, v in chan.messages.items()},
            "schemas": schemas,
        },
    }
    for chan in doc["channels"].values():
        chan["messages"] = {k: {"$ref": f"#/components/messages/{k}"} for k in chan["messages"]}
    return doc


def _returned(sub: Subscriber) -> type[BaseModel] | None:
    """The model a handler returns, from its return annotation (what its publishers send)."""
    annotation = hints(sub.func).get("return")
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _models(subscribers: list[Subscriber], publishers: list[Publisher]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for model in [*(s.spec.schema for s in subscribers), *(_returned(s) for s in subscribers),
                  *(p.schema for s in subscribers for p in s.publishers), *(p.schema for p in publishers)]:
        if model is not None and model not in found:
            found.append(model)
    return found


def _schemas(models: list[type[BaseModel]]) -> tuple[dict[type[BaseModel], dict[str, Any]], dict[str, Any]]:
    if not models:
        return {}, {}
    mapping, defs = models_json_schema([(m, "validation") for m in models],
                                       ref_template="#/components/schemas/{model}")
    refs = {model: mapping[(model, "validation")] for model in models}
    return refs, {_key(k): v for k, v in defs.get("$defs", {}).items()}


def _operation(action: str, chan: _Channel, message: str, summary: str, description: str | None,
               bindings: dict[str, Any]) -> dict[str, Any]:
    key = _key(chan.destination)
    op: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{key}"},
        "messages": [{"$ref": f"#/channels/{key}/messages/{message}"}],
        "summary": summary,
    }
    if description:
        op["description"] = description
    if bindings:
        op["bindings"] = bindings
    return op


def _send(operations: dict[str, Any], chan: _Channel, message: str, pub: Publisher, backend: _Backend) -> None:
    op_id = _key(f"{pub.destination}.send")
    existing = operations.get(op_id)
    ref = {"$ref": f"#/channels/{_key(chan.destination)}/messages/{message}"}
    if existing is None:
        operations[op_id] = _operation("send", chan, message, f"send to {pub.destination}", pub.description,
                                       _send_bindings(backend))
    elif ref not in existing["messages"]:
        existing["messages"].append(ref)


def _server(backend: _Backend) -> dict[str, Any]:
    hosts = ",".join(f"{h}:{p}" if p else h for h, p in backend.url.hosts)
    server: dict[str, Any] = {
        "host": hosts or backend.url.query.get("region", backend.name),
        "protocol": PROTOCOLS.get(backend.scheme, backend.scheme),
        "description": f"unimq {backend.name} backend",
    }
    if backend.url.path and backend.url.path != "/":
        server["pathname"] = backend.url.path
    return server


def _channel(backend: _Backend, chan: _Channel) -> dict[str, Any]:
    out: dict[str, Any] = {"address": chan.destination, "messages": chan.messages}
    bindings = _channel_bindings(backend, chan.destination)
    if bindings:
        out["bindings"] = bindings
    groups = sorted({g for g in chan.groups if g is not None})
    if groups:
        out["x-unimq-groups"] = groups
    dead_letter = backend.dead_letter(chan.destination)
    if dead_letter:
        out["x-unimq-dead-letter"] = dead_letter
    out["x-unimq-backend"] = backend.name
    return out


def _channel_bindings(backend: _Backend, destination: str) -> dict[str, Any]:
    scheme = PROTOCOLS.get(backend.scheme)
    if scheme == "kafka":
        return {"kafka": {"topic": destination, "bindingVersion": "0.5.0"}}
    if scheme in ("amqp", "amqps"):
        vhost = backend.url.path.lstrip("/") or "/"
        return {"amqp": {"is": "routingKey", "bindingVersion": "0.3.0",
                         "exchange": {"name": destination, "type": "topic", "durable": True, "autoDelete": False,
                                      "vhost": vhost}}}
    if scheme == "sqs":
        queue: dict[str, Any] = {"name": destination, "fifoQueue": backend.fifo(destination)}
        binding: dict[str, Any] = {"queue": queue, "bindingVersion": "0.2.0"}
        dead_letter = backend.dead_letter(destination)
        if dead_letter:
            binding["deadLetterQueue"] = {"name": dead_letter, "fifoQueue": backend.fifo(dead_letter)}
        return {"sqs": binding}
    return {}


def _receive_bindings(backend: _Backend, sub: Subscriber) -> dict[str, Any]:
    scheme = PROTOCOLS.get(backend.scheme)
    if scheme == "kafka" and sub.group:
        return {"kafka": {"groupId": {"type": "string", "enum": [sub.group]}, "bindingVersion": "0.5.0"}}
    if scheme == "nats" and sub.group:
        return {"nats": {"queue": sub.group, "bindingVersion": "0.1.0"}}
    if scheme in ("amqp", "amqps"):
        return {"amqp": {"ack": True, "bindingVersion": "0.3.0"}}
    return {}


def _send_bindings(backend: _Backend) -> dict[str, Any]:
    if PROTOCOLS.get(backend.scheme) in ("amqp", "amqps"):
        return {"amqp": {"deliveryMode": 2, "mandatory": False, "bindingVersion": "0.3.0"}}
    return {}

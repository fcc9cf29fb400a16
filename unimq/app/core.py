"""``unimq.App`` and ``unimq.app.Router``: decorated handlers on top of ``Broker.consume``.

The app is a declaration (subscribers, publishers, hooks) plus a small lifecycle: ``start`` connects,
runs the startup hooks, provisions the subscribed destinations and starts one ``Broker.consume``
per subscriber; ``stop`` lets in-flight handlers finish, runs the shutdown hooks and closes. Every
runner option (retry, dead-letter, concurrency, and whatever ``Broker.consume`` accepts) is passed
through to the core runner, never re-implemented here.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from unimq.broker import Broker, Producer, connect
from unimq.codecs import Codec, JsonCodec, ModelCodec, RawCodec
from unimq.errors import ConfigError
from unimq.message import Delivery, Message, new_message_id
from unimq.reliability import Retry

from .handlers import HandlerSpec, analyse, handler_name
from .middleware import Middleware, PublishNext, consume_chain, publish_chain

log = logging.getLogger("unimq.app")

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[[], Awaitable[None] | None]
#: Called after every handler call: (subscriber, delivery, result, exception or None).
Observer = Callable[["Subscriber", Delivery, Any, BaseException | None], None]

#: Arguments of ``Broker.consume`` the app sets itself; every other keyword is a runner option.
_APP_SET = frozenset({"self", "destination", "handler", "group", "concurrency", "retry", "schema", "codec", "stop",
                      "handle_signals"})


def _consume_accepts() -> tuple[frozenset[str], bool]:
    """The runner options ``Broker.consume`` takes today (read from its signature, so new ones just work)."""
    params = inspect.signature(Broker.consume).parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return frozenset(params) - _APP_SET, var_kw


class Publisher:
    """A declared output: ``@app.publisher("invoices")`` on a handler publishes its return value.

    Also usable on its own once the app runs: ``await invoices.send(Invoice(...))``.
    """

    def __init__(self, router: Router, destination: str, schema: type[BaseModel] | None,
                 description: str | None) -> None:
        self.destination = destination
        self.schema = schema
        self.description = description
        self._router = router

    def __repr__(self) -> str:
        return f"<unimq.app.Publisher {self.destination!r}>"

    def __call__(self, func: F) -> F:
        self._router._attach_publisher(func, self)
        return func

    async def send(self, value: Any, **fields: Any) -> Message:
        """Publish through the app that includes this publisher (it must be running)."""
        app = self._router._running_app()
        return await app.producer(self.destination, schema=self.schema).send(value, **fields)


class Subscriber:
    """One decorated handler and how it is run (read it for introspection; build it with the decorator)."""

    def __init__(
        self,
        destination: str,
        group: str | None,
        func: Callable[..., Any],
        spec: HandlerSpec,
        concurrency: int,
        retry: Retry | None,
        options: dict[str, Any],
        description: str | None,
    ) -> None:
        self.destination = destination
        self.group = group
        self.func = func
        self.spec = spec
        self.concurrency = concurrency
        self.retry = retry
        self.options = options
        self.description = description
        self.publishers: list[Publisher] = []

    def __repr__(self) -> str:
        return f"<unimq.app.Subscriber {self.destination!r} group={self.group!r} handler={self.spec.name}>"

    @property
    def name(self) -> str:
        return f"{self.destination}/{self.group}" if self.group else self.destination

    @property
    def codec(self) -> Codec:
        if self.spec.schema is not None:
            return ModelCodec(self.spec.schema)
        return JsonCodec() if self.spec.payload_kind == "json" else RawCodec()


class Router:
    """A group of subscribers, publishers and hooks; ``app.include_router(router)`` adds them to an app.

    ``prefix`` is prepended to every destination the router declares.
    """

    def __init__(self, *, prefix: str = "") -> None:
        self.prefix = prefix
        self._subscribers: list[Subscriber] = []
        self._publishers: list[Publisher] = []
        self._pending: dict[Callable[..., Any], list[Publisher]] = {}
        self._routers: list[Router] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._app: App | None = None

    # Declaration

    def subscriber(
        self,
        destination: str,
        *,
        group: str | None = None,
        schema: type[BaseModel] | None = None,
        concurrency: int = 1,
        retry: Retry | None = None,
        publish_to: str | Sequence[str] | None = None,
        description: str | None = None,
        **options: Any,
    ) -> Callable[[F], F]:
        """Run the decorated function on every message of ``destination`` in ``group``.

        The handler gets the payload (the ``schema`` model, or as its annotation says), and a
        ``Delivery`` or ``Message`` if it asks for one by annotation. Its return value is published
        to ``publish_to`` and to every ``@publisher`` on it. Returning acks; raising retries
        (``retry``), then dead-letters. ``options`` go to ``Broker.consume`` unchanged.
        """
        full = self.prefix + destination
        where = f"subscriber {full!r}"
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigError(f"{where}: concurrency must be an integer >= 1, got {concurrency!r}")
        accepted, var_kw = _consume_accepts()
        unknown = sorted(set(options) - accepted) if not var_kw else []
        if unknown:
            raise ConfigError(f"{where}: unknown option {unknown[0]!r}; Broker.consume takes "
                              f"{', '.join(sorted(accepted))}")
        targets = [publish_to] if isinstance(publish_to, str) else list(publish_to or [])

        def decorate(func: F) -> F:
            spec = analyse(func, schema, where)
            sub = Subscriber(full, group, func, spec, concurrency, retry, dict(options),
                             description or inspect.getdoc(func))
            sub.publishers = [*(self.publisher(t) for t in targets), *self._pending.pop(func, [])]
            _check_unique([*self.subscribers(), sub])
            self._subscribers.append(sub)
            return func

        return decorate

    def publisher(self, destination: str, *, schema: type[BaseModel] | None = None,
                  description: str | None = None) -> Publisher:
        """Declare an output destination; use it as a decorator on a subscriber, or to send."""
        pub = Publisher(self, self.prefix + destination, schema, description)
        self._publishers.append(pub)
        return pub

    def on_startup(self, func: F) -> F:
        """Run ``func()`` (sync or async) when the app starts, after connecting, before consuming."""
        self._startup.append(func)
        return func

    def on_shutdown(self, func: F) -> F:
        """Run ``func()`` when the app stops, after in-flight handlers finished, before closing."""
        self._shutdown.append(func)
        return func

    def include_router(self, router: Router) -> None:
        if router is self or router in self._walk():
            raise ConfigError("include_router: this router is already included")
        _check_unique([*self.subscribers(), *router.subscribers()])
        self._routers.append(router)

    # Introspection

    def subscribers(self) -> list[Subscriber]:
        """Every subscriber of this router and the routers it includes."""
        return [s for r in self._walk() for s in r._subscribers]

    def publishers(self) -> list[Publisher]:
        return [p for r in self._walk() for p in r._publishers]

    def _walk(self) -> list[Router]:
        out: list[Router] = [self]
        for child in self._routers:
            out += child._walk()
        return out

    def _attach_publisher(self, func: Callable[..., Any], pub: Publisher) -> None:
        for sub in self.subscribers():
            if sub.func is func:
                sub.publishers.append(pub)
                return
        self._pending.setdefault(func, []).append(pub)

    def _running_app(self) -> App:
        if self._app is None or not self._app.running:
            raise ConfigError("the app is not running: use 'async with app:' or 'await app.start()' first")
        return self._app


def _check_unique(subscribers: Iterable[Subscriber]) -> None:
    seen: dict[tuple[str, str | None], Subscriber] = {}
    for sub in subscribers:
        key = (sub.destination, sub.group)
        if key in seen:
            raise ConfigError(f"two subscribers for {sub.name!r}: {seen[key].spec.name} and {sub.spec.name}; "
                              "give one of them another group=, or merge the handlers")
        seen[key] = sub


class AppProducer:
    """Sends values to one destination through the app's publish middlewares.

    A value is encoded by the schema if one is given, else: ``bytes``/``str`` as they are, a pydantic
    model as its JSON, anything else as JSON. A ``Message`` is sent as it is.
    """

    def __init__(self, destination: str, schema: type[BaseModel] | None, publish: PublishNext) -> None:
        self.destination = destination
        self.schema = schema
        self._publish = publish
        self._codec = ModelCodec(schema) if schema is not None else None

    def __repr__(self) -> str:
        return f"<unimq.app.AppProducer {self.destination!r}>"

    def message(
        self,
        value: Any,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        delay: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        priority: int | None = None,
    ) -> Message:
        """The Message ``send`` would send for ``value``."""
        if isinstance(value, Message):
            return value
        codec = self._codec or _codec_of(value)
        return Message(
            body=codec.encode(value), key=key, headers=dict(headers or {}), message_id=message_id or new_message_id(),
            correlation_id=correlation_id, reply_to=reply_to, content_type=codec.content_type,
            delay=_delta(delay), ttl=_delta(ttl), priority=priority,
        )

    async def send(self, value: Any, **fields: Any) -> Message:
        """Send one value (fields: key, headers, message_id, correlation_id, reply_to, delay, ttl, priority)."""
        return await self._publish(self.destination, self.message(value, **fields))


def _codec_of(value: Any) -> Codec:
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return RawCodec()
    if isinstance(value, BaseModel):
        return ModelCodec(type(value))
    return JsonCodec()


def _codec_or_none(codec: Codec) -> Codec | None:
    return None if isinstance(codec, RawCodec) else codec


def _delta(value: timedelta | float | None) -> timedelta | None:
    return value if value is None or isinstance(value, timedelta) else timedelta(seconds=value)


class App(Router):
    """A messaging application: ``app = unimq.App("kafka://...")``, decorate handlers, ``unimq run mod:app``.

    ``broker`` is a URL (connected on start, closed on stop), an open ``Broker`` (left open), or None
    (``$UNIMQ_URL``, else ``memory://``). ``ensure`` provisions subscribed destinations and their
    groups on start. ``shutdown_timeout`` bounds how long stop waits for in-flight handlers.
    """

    def __init__(
        self,
        broker: str | Broker | None = None,
        *,
        title: str = "unimq app",
        version: str = "0.1.0",
        description: str | None = None,
        middlewares: Sequence[Middleware] = (),
        ensure: bool = True,
        shutdown_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        if broker is not None and not isinstance(broker, (str, Broker)):
            raise ConfigError(f"App(broker): pass a URL or a unimq Broker, got {type(broker).__name__}")
        self.title = title
        self.version = version
        self.description = description
        self.middlewares: list[Middleware] = list(middlewares)
        self.ensure = ensure
        self.shutdown_timeout = shutdown_timeout
        self._url = broker if isinstance(broker, str) else None
        self._given = broker if isinstance(broker, Broker) else None
        self._broker: Broker | None = None
        self._tasks: dict[Subscriber, asyncio.Task[None]] = {}
        self._executors: list[ThreadPoolExecutor] = []
        self._producers: dict[str, Producer] = {}
        self._stop_event: asyncio.Event | None = None
        self._stopping = False
        self._publish: PublishNext | None = None
        self.observers: list[Observer] = []

    def __repr__(self) -> str:
        return f"<unimq.App {self.title!r} subscribers={len(self.subscribers())}>"

    @property
    def url(self) -> str | None:
        """The URL given (``None`` when a Broker was given or for the default)."""
        return self._url

    @property
    def running(self) -> bool:
        return self._broker is not None

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise ConfigError("the app is not running: use 'async with app:' or 'await app.start()' first")
        return self._broker

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the app runs and every subscriber's runner is alive (for probes)."""
        state = {sub.name: "stopped" if task.done() else "running" for sub, task in self._tasks.items()}
        return self.running and "stopped" not in state.values(), {"subscribers": state}

    def add_middleware(self, middleware: Middleware) -> None:
        if self.running:
            raise ConfigError("add middlewares before the app starts")
        self.middlewares.append(middleware)

    # Lifecycle

    async def start(self, *, subscribe: bool = True) -> None:
        """Connect, run startup hooks, provision, start every subscriber. Raises if one cannot start.

        ``subscribe=False`` only connects and runs the hooks: a process that publishes while other
        processes (``unimq run``) consume.
        """
        if self.running:
            return
        subscribers = self.subscribers() if subscribe else []
        _check_unique(subscribers)
        broker = self._given or await connect(self._url)
        self._broker = broker
        for router in self._walk():
            router._app = self
        self._publish = publish_chain(self.middlewares, self._send)
        try:
            for hook in [h for r in self._walk() for h in r._startup]:
                await _call_hook(hook)
            if self.ensure:
                await self._provision(broker, subscribers)
            for sub in subscribers:  # refuse what the backend cannot do (e.g. groups without fanout) now
                broker.consumer(sub.destination, sub.group, codec=_codec_or_none(sub.codec))
            self._stop_event = asyncio.Event()
            for sub in subscribers:
                self._tasks[sub] = asyncio.create_task(self._consume(broker, sub), name=f"unimq {sub.name}")
            await asyncio.sleep(0)  # a subscriber the backend cannot run fails on its first step
            self._raise_failed()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop consuming, let in-flight handlers finish, run shutdown hooks, close what the app opened."""
        if self._broker is None or self._stopping:
            return
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        tasks = list(self._tasks.values())
        try:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            for hook in [h for r in self._walk() for h in r._shutdown]:
                try:
                    await _call_hook(hook)
                except Exception:
                    log.exception("shutdown hook %s failed", handler_name(hook))
        finally:
            for executor in self._executors:
                executor.shutdown(wait=False)
            broker, self._broker = self._broker, None
            self._stopping = False
            self._tasks.clear()
            self._executors.clear()
            self._producers.clear()
            if self._given is None:
                await broker.close()

    async def run(self, *, handle_signals: bool = False, stop: asyncio.Event | None = None) -> None:
        """Start, run until ``stop`` is set (or SIGTERM/SIGINT with ``handle_signals``) or a subscriber
        fails, then stop gracefully. A failed subscriber's error is raised after the stop."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        failed: tuple[Subscriber, BaseException] | None = None
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            waiter = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({waiter, *self._tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            failed = self._failed()
            if failed is not None:
                log.error("subscriber %s stopped: %s", failed[0].name, failed[1])
        finally:
            try:
                await self.stop()
            finally:
                if handle_signals:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(sig)
        if failed is not None:
            raise failed[1]

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Publishing

    def producer(self, destination: str, *, schema: type[BaseModel] | None = None) -> AppProducer:
        """A producer that goes through the app's publish middlewares (the app must be running)."""
        if self._publish is None or not self.running:
            raise ConfigError("the app is not running: use 'async with app:' or 'await app.start()' first")
        return AppProducer(destination, schema, self._publish)

    async def publish(self, destination: str, value: Any, **fields: Any) -> Message:
        """Send ``value`` to ``destination`` (see :class:`AppProducer` for how values are encoded)."""
        return await self.producer(destination).send(value, **fields)

    def asyncapi(self, url: str | None = None) -> dict[str, Any]:
        """The AsyncAPI 3.0 document of this app, with bindings for the backend of ``url`` (or the app's)."""
        from .asyncapi import document

        return document(self, url)

    # Internals

    async def _send(self, destination: str, message: Message) -> Message:
        producer = self._producers.get(destination)
        if producer is None:
            producer = self._producers[destination] = self.broker.producer(destination)
        return await producer.send(message)

    async def _provision(self, broker: Broker, subscribers: list[Subscriber]) -> None:
        """Create each subscribed destination with its groups, and each published one (a publish to a
        destination nothing is bound to is refused by some backends, e.g. RabbitMQ)."""
        groups: dict[str, set[str]] = {p.destination: set() for p in self.publishers()}
        for sub in subscribers:
            named = groups.setdefault(sub.destination, set())
            if sub.group is not None:
                named.add(sub.group)
        for destination, names in groups.items():
            await broker.ensure(destination, groups=tuple(sorted(names)))

    def _consume(self, broker: Broker, sub: Subscriber) -> Coroutine[Any, Any, None]:
        assert self._stop_event is not None
        handler = self._handler(sub)
        codec = sub.codec
        return broker.consume(
            sub.destination, handler, group=sub.group, concurrency=sub.concurrency, retry=sub.retry,
            codec=_codec_or_none(codec), stop=self._stop_event, handle_signals=False,
            **{"shutdown_timeout": self.shutdown_timeout, **sub.options},
        )

    def _handler(self, sub: Subscriber) -> Callable[[Delivery], Awaitable[Any]]:
        """The Delivery -> result callable given to ``Broker.consume``: arguments, sync handlers on
        threads, middlewares, publishing the result, observers."""
        func, spec, kind = sub.func, sub.spec, sub.spec.payload_kind
        executor: ThreadPoolExecutor | None = None
        if not spec.is_async:
            executor = ThreadPoolExecutor(sub.concurrency, thread_name_prefix=f"unimq-{sub.name}")
            self._executors.append(executor)
        loop = asyncio.get_running_loop()

        def arguments(delivery: Delivery) -> list[Any]:
            args: list[Any] = []
            for source in spec.sources:
                if source == "delivery":
                    args.append(delivery)
                elif source == "message":
                    args.append(delivery.message)
                elif kind == "text":
                    args.append(bytes(delivery.payload).decode())
                else:
                    args.append(delivery.payload)
            return args

        async def call(delivery: Delivery) -> Any:
            args = arguments(delivery)
            if executor is None:
                return await func(*args)
            context = contextvars.copy_context()
            return await loop.run_in_executor(executor, functools.partial(context.run, func, *args))

        chained = consume_chain(self.middlewares, call)
        producers = [AppProducer(p.destination, p.schema, self._publish_next()) for p in sub.publishers]
        observers = self.observers

        async def handle(delivery: Delivery) -> None:
            try:
                result = await chained(delivery)
                if result is not None:
                    incoming = delivery.message
                    for producer in producers:
                        await producer.send(result, correlation_id=incoming.correlation_id or incoming.message_id)
            except BaseException as exc:
                for observe in observers:
                    observe(sub, delivery, None, exc)
                raise
            for observe in observers:
                observe(sub, delivery, result, None)

        return handle

    def _publish_next(self) -> PublishNext:
        assert self._publish is not None
        return self._publish

    def _failed(self) -> tuple[Subscriber, BaseException] | None:
        for sub, task in self._tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                assert exc is not None
                return sub, exc
        return None

    def _raise_failed(self) -> None:
        failed = self._failed()
        if failed is not None:
            raise failed[1]


async def _call_hook(hook: Hook) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result

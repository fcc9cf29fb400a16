"""``redis://`` and ``rediss://``: Redis Streams with consumer groups (redis-py asyncio);
``redis+cluster://`` and ``rediss+cluster://``: the same on a Redis Cluster.

A destination is a stream; a group is a consumer group (``group=None`` → ``default_group``).
Keys a destination owns, after the optional ``prefix``: ``<d>`` (the stream), ``<d>:dlq`` (its
dead-letter stream), ``<d>:delayed`` (delayed sends), ``<d>:delayed:<group>`` (delayed retries),
``<d>:config`` (what ``ensure`` set) and ``<d>:dedup:<message_id>`` (the de-duplication window).
On a cluster the auxiliary keys are ``{<d>}:delayed`` etc., in the stream's slot (``cluster.py``).
See ``docs/backends/redis.md``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from redis import exceptions as rex
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from unimq.capabilities import Capabilities, emulated, native, none
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Stats, Subscription
from unimq.errors import (
    AuthenticationError,
    BrokerConnectionError,
    ConfigError,
    ErrorRule,
    NotFound,
    PermissionDenied,
    Throttled,
    Timeout,
    register_secret,
)
from unimq.message import Message
from unimq.reliability import dedup_key
from unimq.url import BrokerURL
from unimq_redis import cluster, scripts
from unimq_redis.cluster import pack
from unimq_redis.fields import from_entry, now_ms, pack_scheduled, to_fields
from unimq_redis.subscription import RedisSubscription

#: How long a destination's ``<d>:config`` hash is cached by producers, seconds.
CONFIG_TTL = 10.0
MIN_SERVER = (6, 2)
T = TypeVar("T")


class RedisOptions(BaseModel):
    """Query parameters of ``redis://`` / ``rediss://`` URLs (also accepted as keyword options)."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = Field("", description="prepended to every key unimq creates or reads")
    default_group: str = Field("default", min_length=1, description="the consumer group used for group=None")
    maxlen: int | None = Field(None, ge=1, description="approximate stream length cap (XADD MAXLEN ~)")
    lock_timeout: float = Field(30.0, gt=0, description="seconds an unacked entry stays with its consumer")
    maintenance_interval: float = Field(
        0.5, gt=0, description="seconds between a consumer's reclaim/delayed-move passes"
    )
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1, le=512 * 1024 * 1024)
    socket_timeout: float = Field(
        10.0, gt=0, description="seconds any one call may take (asyncio.timeout); must exceed a blocking read (≤ 1 s)"
    )
    connect_timeout: float = Field(5.0, gt=0)
    max_connections: int | None = Field(None, ge=1)
    client_name: str | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = Field(None, repr=False)
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_check_hostname: bool = True


@dataclass(frozen=True)
class DestinationConfig:
    """What ``ensure()`` stored in ``<d>:config``."""

    dedup_ms: int = 0
    max_deliveries: int | None = None
    lock_timeout: float | None = None
    dead_letter_expired: bool = False


def _reply(prefix: str) -> Callable[[BaseException], bool]:
    """An error-table test: the server's error reply starts with ``prefix`` (``NOGROUP``, ...)."""
    return lambda exc: str(exc).startswith(prefix)


class RedisDriver(Driver):
    name = "redis"
    Options: ClassVar[type[BaseModel]] = RedisOptions
    options: RedisOptions
    errors: ClassVar[Sequence[ErrorRule]] = (
        (rex.AuthenticationError, AuthenticationError),
        (rex.AuthorizationError, PermissionDenied),
        (rex.NoPermissionError, PermissionDenied),
        (rex.TimeoutError, Timeout),
        (rex.ConnectionError, BrokerConnectionError),
        (rex.ReadOnlyError, BrokerConnectionError),
        (rex.MasterDownError, BrokerConnectionError),
        (rex.TryAgainError, BrokerConnectionError),
        (rex.ClusterDownError, BrokerConnectionError),
        (rex.AskError, BrokerConnectionError),  # and MovedError: the slot map changed, the retry follows it
        (rex.SlotNotCoveredError, BrokerConnectionError),
        (rex.RedisClusterUnreachableError, BrokerConnectionError),
        (rex.ResponseError, NotFound, _reply("NOGROUP")),
        (rex.ResponseError, NotFound, lambda exc: "no such key" in str(exc)),
        (rex.ResponseError, ConfigError, _reply("WRONGTYPE")),
        (rex.ResponseError, Throttled, _reply("OOM")),
        (rex.DataError, ConfigError),
    )

    def __init__(self, url: BrokerURL, options: RedisOptions) -> None:
        super().__init__(url, options)
        self.cluster = url.scheme in cluster.SCHEMES
        if len(url.hosts) > 1 and not self.cluster:
            raise ConfigError("redis: one host only; for a Redis Cluster use redis+cluster://h1:p1,h2:p2 "
                              "(Sentinel is not supported)")
        db_text = url.path.strip("/") or "0"
        if not db_text.isdigit():
            raise ConfigError(f"redis: the URL path must be a database number, got {db_text!r}")
        register_secret(options.ssl_password)
        tls = url.scheme in ("rediss", "rediss+cluster")
        tls_options: dict[str, Any] = {}
        if tls:
            tls_options = {
                "ssl_ca_certs": options.ssl_ca_certs, "ssl_certfile": options.ssl_certfile,
                "ssl_keyfile": options.ssl_keyfile, "ssl_password": options.ssl_password,
                "ssl_cert_reqs": options.ssl_cert_reqs, "ssl_check_hostname": options.ssl_check_hostname,
            }
        elif any(getattr(options, n) for n in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_password")):
            raise ConfigError("redis: ssl_* options need a rediss:// (or rediss+cluster://) URL")
        # No socket timeout (redis-py 8 defaults to 5 s): with one it writes through asyncio.wait_for,
        # which on CPython 3.11 can swallow a cancel (issue 32). bounded() uses asyncio.timeout instead.
        common: dict[str, Any] = {
            "socket_timeout": None, "socket_connect_timeout": options.connect_timeout,
            "client_name": options.client_name, "protocol": 2, **tls_options,
        }
        self.router: cluster.Router | None = None
        self.pool: ConnectionPool | None = None
        self.client: Redis | RedisCluster
        if self.cluster:
            if common.pop("ssl_password", None) is not None:
                raise ConfigError("redis+cluster: ssl_password is not supported by redis-py's RedisCluster; "
                                  "use a key file without a passphrase (ssl_keyfile)")
            # redis-py's own retries (3, with backoff) carry the other commands over a failover.
            pool = {"max_connections": options.max_connections} if options.max_connections else {}
            self.client = cluster.client(url, **common, **pool)
            self.router = cluster.Router(self.client)
        else:
            self.client = Redis(
                host=url.host or "127.0.0.1", port=url.port or 6379, db=int(db_text),
                username=url.username or None, password=url.password, ssl=tls,
                max_connections=options.max_connections, retry=Retry(NoBackoff(), 0), **common,
            )
            self.pool = self.client.connection_pool
        self.maintain_script = self.client.register_script(scripts.MAINTAIN)
        self.claim_own_script = self.client.register_script(scripts.CLAIM_OWN)
        self.retry_later_script = self.client.register_script(scripts.RETRY_LATER)
        self.release_all_script = self.client.register_script(scripts.RELEASE_ALL)
        self.dedup_send_script = self.client.register_script(scripts.DEDUP_SEND)
        self._configs: dict[str, tuple[float, DestinationConfig]] = {}
        self._caps = Capabilities(
            backend="redis",
            persistence=native(note="as the server's AOF/RDB settings make it (appendfsync everysec loses ≤ 1 s)"
                               + ("; a primary's failover loses the writes its replica had not copied yet"
                                  if self.cluster else "")),
            fanout=native(note="one consumer group per group"),
            competing_consumers=native(note="consumers of a group share its entries"),
            ordering="none",
            ordering_note="a group hands out entries in stream order, but nothing keeps a key with one "
            "consumer: competing consumers and redeliveries process out of order",
            delayed_delivery=emulated(note="sorted set DEST:delayed, moved into the stream by running consumers "
                                      "(precision ≈ maintenance_interval)"),
            nack_delay=emulated(note="XACK + sorted set DEST:delayed:GROUP; re-opened in the group's pending "
                                "list (same entry id, delivery count kept) by running consumers"),
            dead_letter=emulated(note="stream DEST:dlq: the core XADDs a copy (reason in "
                                 "x-unimq-dead-letter-reason), then XACKs the original"),
            priority=none("a stream is one ordered log"),
            message_ttl=emulated(note="expiry field p:expires; the core acks and drops an expired entry on "
                                 "receipt; it stays in the stream until trimmed"),
            deduplication=emulated(note="SET NX PX DEST:dedup:MESSAGE_ID per send, window from "
                                   "ensure(deduplication=...)"),
            replay=native(note="start= earliest/latest/a time creates the group at that stream id"),
            lock_extension=native(note="XCLAIM JUSTID resets the idle time; longer than the lock timeout, "
                                  "the consumer keeps resetting it"),
            peek=native(note="what the default group gets next: reclaimable pending entries, then XRANGE "
                             "after its last-delivered id"),
            batch_send=native(limit=1000, note="pipelined XADD, one round trip per batch"),
            headers=native(note="stream fields h:NAME"),
            transactions=none(),
            listing=native(note="SCAN of every primary for keys of type stream" if self.cluster
                           else "SCAN for keys of type stream"),
            partitions=none("a stream is one log on one server"),
            replication=none("replication is the server's configuration (replicas, AOF), not a stream's"),
            fifo=none("competing consumers and redeliveries process a stream out of order"),
            sessions=none("nothing keeps a key with one consumer; use key= and one consumer"),
            retention=none("streams are trimmed by length: the maxlen= URL option"),
            lock_timeout=native(note="ensure() writes DEST:config lock_timeout_ms; every consumer that sets "
                                "no lock_timeout of its own reads it when it opens"),
            max_deliveries=emulated(note="ensure() writes DEST:config max_deliveries, read by every consumer "
                                  "when it opens; the delivery count is the entry's in the group's PEL, the "
                                  "core dead-letters past it"),
            dead_letter_expired=emulated(note="ensure() writes DEST:config dead_letter_expired, read by every "
                                       "consumer when it opens; the core dead-letters an expired entry on "
                                       "receipt instead of dropping it"),
            new_group_backlog=none("a named group starts at the end of the stream ($), whether ensure() or a "
                                   "consumer creates it: ensure(groups=[...]) first, or consumer(start="
                                   "'earliest') to read the backlog; the default group (group=None) starts at "
                                   "the beginning"),
            max_message_bytes=options.max_message_bytes,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def native(self) -> Redis | RedisCluster:
        return self.client

    def key(self, destination: str, suffix: str = "") -> str:
        """The key of ``destination`` (``suffix`` empty: its stream) or of one of its auxiliary keys."""
        base = self.options.prefix + destination
        if self.cluster and suffix:
            return cluster.aux_key(base, suffix)
        return base + suffix

    def dead_letter_destination(self, destination: str) -> str:
        return f"{destination}:dlq"

    async def bounded(self, call: Awaitable[T]) -> T:
        """Await one redis-py call, at most ``socket_timeout`` seconds (builtin TimeoutError → Timeout)."""
        async with asyncio.timeout(self.options.socket_timeout):
            return await call

    async def open(self) -> None:
        if isinstance(self.client, RedisCluster):
            await self.bounded(cluster.connect(self.client, self.url))
            node = self.client.get_default_node()
            info = await self.bounded(self.client.info("server", target_nodes=node))
        else:
            info = await self.bounded(self.client.info("server"))
        version = tuple(int(p) for p in str(info.get("redis_version", "0.0")).split(".")[:2])
        if version < MIN_SERVER:
            raise ConfigError(f"redis: server {info.get('redis_version')} is too old; Streams need 6.2 or newer")
        if self.cluster:
            return
        mode = await self.bounded(self.client.info("cluster"))
        if mode.get("cluster_enabled"):
            raise ConfigError(f"redis: {self.url.redacted()} is a Redis Cluster node, not a standalone Redis: "
                              f"connect with redis+cluster://{cluster.hosts_text(self.url)} (more hosts may "
                              "follow, comma-separated)")

    async def close(self) -> None:
        await self.client.aclose()

    async def config(self, destination: str, refresh: bool = False) -> DestinationConfig:
        cached = self._configs.get(destination)
        now = time.monotonic()
        if cached is not None and not refresh and cached[0] > now:
            return cached[1]
        raw = await self.bounded(self.client.hgetall(self.key(destination, ":config")))
        values = {_text(k): int(v) for k, v in raw.items()}
        lock = values.get("lock_timeout_ms")
        config = DestinationConfig(
            dedup_ms=values.get("dedup_ms", 0), max_deliveries=values.get("max_deliveries"),
            lock_timeout=lock / 1000 if lock else None, dead_letter_expired=bool(values.get("dead_letter_expired")),
        )
        self._configs[destination] = (now + CONFIG_TTL, config)
        return config

    async def send_packed(self, key: bytes, commands: list[bytes], replies: int) -> list[Any]:
        """Write commands :func:`pack` ed into ``commands`` on one pooled connection at once, then
        read ``replies`` replies; an error reply takes its command's place (as in a pipeline).
        Every command is about ``key`` (on a cluster, they go to the primary of its slot).

        The hot paths (XADD, XREADGROUP, XACK) use this rather than redis-py's command layer:
        its generic packer, pipeline bookkeeping and reply callbacks cost more per message than
        the round trip they wrap. Connections, TLS, auth and the reply parser stay redis-py's.
        """
        if self.router is not None:
            async with asyncio.timeout(self.options.socket_timeout):
                return await self.router.send_packed(key, commands, replies)
        pool = self.pool
        assert pool is not None
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        try:
            async with asyncio.timeout(self.options.socket_timeout):
                return await cluster.exchange(conn, commands, replies)
        finally:
            await pool.release(conn)

    async def command(self, key: bytes, *args: bytes) -> Any:
        """One command about ``key`` through :meth:`send_packed`; an error reply is raised."""
        out: list[bytes] = []
        pack(out, args)
        reply = (await self.send_packed(key, out, 1))[0]
        if isinstance(reply, rex.ResponseError):
            raise reply
        return reply

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        stream = self.key(destination).encode()
        config = await self.config(destination)
        trim = [b"MAXLEN", b"~", b"%d" % self.options.maxlen] if self.options.maxlen else []
        xadd = [b"XADD", stream, *trim, b"*"]
        if not config.dedup_ms and all(m.delay is None for m in messages):
            packed: list[bytes] = []
            for message in messages:
                pack(packed, [*xadd, *to_fields(message)])
            results = await self.send_packed(stream, packed, len(messages))
            return [r if isinstance(r, BaseException) else None for r in results]
        scripted: dict[int, tuple[list[Any], list[Any]]] = {}
        async with self.client.pipeline(transaction=False) as pipe:
            for index, message in enumerate(messages):
                delay = message.delay.total_seconds() if message.delay is not None else 0.0
                fields = to_fields(message, stamp=delay > 0)
                due = now_ms() + int(delay * 1000) if delay > 0 else 0
                if config.dedup_ms:
                    target = self.key(destination, ":delayed") if due else stream
                    keys: list[Any] = [target, self.key(destination, f":dedup:{dedup_key(message)}")]
                    args: list[Any] = [config.dedup_ms, due, self.options.maxlen or 0,
                                       *([pack_scheduled(fields)] if due else fields)]
                    scripted[index] = (keys, args)
                    # redis-py queues it on a ClusterPipeline too (its annotation leaves that out)
                    await self.dedup_send_script(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
                elif due:
                    pipe.zadd(self.key(destination, ":delayed"), {pack_scheduled(fields): due})
                else:
                    pipe.execute_command(*xadd, *fields)
            results = await self.bounded(pipe.execute(raise_on_error=False))
        for index, (keys, args) in scripted.items():
            if isinstance(results[index], rex.NoScriptError):  # a cluster pipeline does not load scripts
                try:
                    results[index] = await self.bounded(self.dedup_send_script(keys=keys, args=args))
                except rex.RedisError as exc:
                    results[index] = exc
        return [r if isinstance(r, BaseException) else None for r in results]

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        return RedisSubscription(self, destination, group, settings)

    async def create_group(self, stream: str, group: str, start: str) -> None:
        try:
            await self.bounded(self.client.xgroup_create(stream, group, start, mkstream=True))
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        """Create the stream, the default group (at 0), each group (at ``$``), the DLQ, the config."""
        stream = self.key(destination)
        await self.create_group(stream, self.options.default_group, "0")
        for group in spec.groups:
            await self.create_group(stream, group, "$")
        if spec.dead_letter:
            await self.create_group(self.key(self.dead_letter_destination(destination)),
                                    self.options.default_group, "0")
        values: dict[str, int] = {}
        if spec.deduplication:
            values["dedup_ms"] = int(spec.deduplication.total_seconds() * 1000)
        if spec.max_deliveries:
            values["max_deliveries"] = spec.max_deliveries
        if spec.lock_timeout:
            values["lock_timeout_ms"] = int(spec.lock_timeout.total_seconds() * 1000)
        if spec.dead_letter_expired:
            values["dead_letter_expired"] = 1
        config_key = self.key(destination, ":config")
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(config_key)
            if values:
                pipe.hset(config_key, mapping=values)  # type: ignore[arg-type]
            await self.bounded(pipe.execute())
        self._configs.pop(destination, None)

    async def _groups(self, stream: str) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = await self.bounded(self.client.xinfo_groups(stream))
        return groups

    async def peek(self, destination: str, count: int) -> list[Message]:
        """The next ``count`` entries a consumer of the default group would get: pending entries it
        can reclaim now (nacked, handed back by a closed consumer, or idle past the lock timeout),
        then those it has not been handed yet. Entries held by a live consumer are not shown."""
        stream = self.key(destination)
        name = self.options.default_group
        group = next((g for g in await self._groups(stream) if _text(g["name"]) == name), None)
        after, reclaimable = "-", []
        if group is not None:
            after = "(" + _text(group["last-delivered-id"])
            lock = (await self.config(destination)).lock_timeout or self.options.lock_timeout
            pending: Any = await self.bounded(
                self.client.xpending_range(stream, name, "-", "+", count, idle=int(lock * 1000)))
            async with self.client.pipeline(transaction=False) as pipe:
                for entry in pending:
                    pipe.xrange(stream, entry["message_id"], entry["message_id"])
                reclaimable = [e for found in await self.bounded(pipe.execute()) for e in found]
        entries: Any = []
        if count > len(reclaimable):
            entries = await self.bounded(self.client.xrange(stream, after, "+", count=count - len(reclaimable)))
        return [from_entry(entry_id, fields)[0] for entry_id, fields in [*reclaimable, *entries]]

    async def stats(self, destination: str, group: str | None) -> Stats:
        stream = self.key(destination)
        name = group or self.options.default_group
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
            pipe.xlen(self.key(self.dead_letter_destination(destination)))
            pipe.zcard(self.key(destination, ":delayed"))
            pipe.zcard(self.key(destination, f":delayed:{name}"))
            groups, length, dlq, delayed, retries = await self.bounded(pipe.execute())
        info = next((g for g in groups if _text(g["name"]) == name), None)
        if info is None:
            raise NotFound(f"redis: stream {destination!r} has no group {name!r}")
        lag = info.get("lag")
        return Stats(
            destination=destination, group=group,
            depth=None if lag is None else int(lag) + delayed + retries,
            in_flight=int(info["pending"]), dead_letter_depth=dlq, lag=None if lag is None else int(lag),
            detail={
                "length": length, "delayed": delayed, "delayed_retries": retries,
                "consumers": int(info["consumers"]), "last_delivered_id": _text(info["last-delivered-id"]),
                "groups": sorted(_text(g["name"]) for g in groups),
            },
        )

    async def _scan(self, pattern: str, kind: str | None = None, near: str | None = None) -> list[str]:
        """Every key matching ``pattern`` (of type ``kind``), each SCAN call bounded. On a cluster,
        every primary is scanned, or only the one owning the slot of the key ``near``."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return await self._scan_node(pattern, kind, {})
        owner = client.get_node_from_key(near) if near is not None else None
        keys: list[str] = []
        for node in [owner] if owner is not None else client.get_primaries():
            keys += await self._scan_node(pattern, kind, {"target_nodes": node})
        return keys

    async def _scan_node(self, pattern: str, kind: str | None, target: dict[str, Any]) -> list[str]:
        cursor: Any = 0
        keys: list[str] = []
        while True:
            cursor, batch = await self.bounded(
                self.client.scan(cursor, match=pattern, count=1000, _type=kind, **target))
            if isinstance(cursor, dict):  # a cluster's reply: {node name: cursor}
                cursor = next(iter(cursor.values()), 0)
            keys += [_text(key) for key in batch]
            if not cursor:
                return keys

    async def destinations(self) -> list[str]:
        prefix = self.options.prefix
        pattern = _glob_escape(prefix) + "*"
        return sorted({key[len(prefix):] for key in await self._scan(pattern, "stream")})

    async def delete(self, destination: str) -> None:
        """DEL the stream, its DLQ and every auxiliary key of both (found with SCAN)."""
        for name in (destination, self.dead_letter_destination(destination)):
            own = re.compile(
                "^(" + re.escape(self.key(name, ":delayed")) + "(:.*)?|" + re.escape(self.key(name, ":config"))
                + "|" + re.escape(self.key(name, ":dedup:")) + ".*)$", re.DOTALL,
            )
            found = await self._scan(_glob_escape(self.key(name, ":")) + "*", near=self.key(name))
            await self.bounded(self.client.delete(self.key(name), *(key for key in found if own.match(key))))
        self._configs.pop(destination, None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    """``text`` as a literal SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text) if text else ""


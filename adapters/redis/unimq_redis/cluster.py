"""Redis Cluster (``redis+cluster://`` / ``rediss+cluster://``): key placement and the hot path.

A destination's Lua scripts touch its stream and its auxiliary keys (``:delayed…``, ``:config``,
``:dedup:…``) together, so they must share a hash slot. The stream keeps its standalone name
(``prefix + destination``, what any other Redis client reads); the auxiliary keys carry that whole
name as a hash tag, ``{prefix + destination}:config``, which hashes to the stream's slot. A name
that holds a hash tag of its own (``{app}:orders``) already places every key, and keeps the
standalone key names. The hot path writes packed commands straight to the slot owner's connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

from redis import exceptions as rex
from redis.asyncio.cluster import ClusterNode, RedisCluster

from unimq.errors import BrokerConnectionError, ConfigError
from unimq.url import BrokerURL

log = logging.getLogger("unimq.redis")

#: Schemes that select Redis Cluster.
SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
#: Least seconds between two slot-map refreshes the hot path asks for.
REFRESH_INTERVAL = 0.5
#: Replies that mean the slot map this client holds is out of date (failover, resharding).
_STALE = (rex.AskError, rex.TryAgainError, rex.ClusterDownError)


def pack(out: list[bytes], args: Sequence[bytes]) -> None:
    """Append one command to ``out`` in RESP: an array of bulk strings (bodies are not copied)."""
    out.append(b"*%d\r\n" % len(args))
    for arg in args:
        out += (b"$%d\r\n" % len(arg), arg, b"\r\n")


async def exchange(conn: Any, commands: list[bytes], replies: int) -> list[Any]:
    """Write packed ``commands`` on ``conn``, read ``replies`` replies; an error reply takes its
    command's place (as in a pipeline). Shared by the standalone and the cluster hot path."""
    await conn.send_packed_command(commands, check_health=False)
    out: list[Any] = []
    for _ in range(replies):
        try:
            out.append(await conn.read_response())
        except rex.ResponseError as exc:
            out.append(exc)
    return out


def has_hash_tag(name: str) -> bool:
    """Whether Redis hashes ``name`` by a ``{tag}`` in it (a non-empty one) rather than whole."""
    start = name.find("{")
    return start >= 0 and name.find("}", start + 1) > start + 1


def aux_key(base: str, suffix: str) -> str:
    """The key of ``base``'s auxiliary ``suffix`` in the slot of the key ``base``."""
    if has_hash_tag(base):
        return base + suffix
    if "}" in base:
        raise ConfigError(f"redis+cluster: the key {base!r} holds '}}' without a hash tag '{{…}}', so its "
                          "auxiliary keys cannot share its slot: rename the destination (or the prefix)")
    return "{" + base + "}" + suffix


def hosts_text(url: BrokerURL) -> str:
    """The URL's hosts, ``h1:p1,h2:p2`` (never the user or password)."""
    return ",".join(f"{host or '127.0.0.1'}:{port or 6379}" for host, port in url.hosts)


def client(url: BrokerURL, **kwargs: Any) -> RedisCluster:
    """A RedisCluster for the URL's hosts (each a seed: the first that answers gives the slot map)."""
    db_text = url.path.strip("/") or "0"
    if db_text != "0":
        raise ConfigError(f"redis+cluster: a Redis Cluster has database 0 only; drop /{db_text} from the URL")
    seeds = [ClusterNode(host or "127.0.0.1", port or 6379) for host, port in url.hosts]
    if not seeds:
        raise ConfigError("redis+cluster: the URL names no host; e.g. redis+cluster://h1:7000,h2:7001")
    return RedisCluster(startup_nodes=seeds, username=url.username or None, password=url.password,
                        ssl=url.scheme == "rediss+cluster", **kwargs)


async def connect(cluster: RedisCluster, url: BrokerURL) -> None:
    """Read the slot map from the first seed that answers; a standalone Redis is a ConfigError,
    no seed answering a BrokerConnectionError naming the hosts."""
    try:
        await cluster.initialize()
    except rex.AuthenticationError:
        raise
    except (rex.RedisError, rex.RedisClusterException) as exc:
        if "Cluster mode is not enabled" in str(exc):
            raise ConfigError(f"redis+cluster: {url.redacted()} is a standalone Redis, not a Redis Cluster "
                              f"node: connect with redis://{hosts_text(url).split(',')[0]}/0") from None
        raise BrokerConnectionError(f"redis+cluster: no node of {hosts_text(url)} answered "
                                    f"({type(exc).__name__}); check the hosts and that the cluster is up") from None
    missing = await _not_in_cluster(cluster, url)
    if missing:
        log.warning("redis+cluster: %s did not answer or is not a node of the cluster; using the others",
                    ", ".join(missing))


async def _not_in_cluster(cluster: RedisCluster, url: BrokerURL) -> list[str]:
    """The URL's hosts that are not among the nodes the cluster reports (by name or address)."""
    known = set(cluster.nodes_manager.nodes_cache)
    loop = asyncio.get_running_loop()
    missing = []
    for host, port in url.hosts:
        name = f"{host or '127.0.0.1'}:{port or 6379}"
        if name in known:
            continue
        try:
            found = await loop.getaddrinfo(host or "127.0.0.1", port or 6379, type=socket.SOCK_STREAM)
        except OSError:
            found = []
        if not any(f"{info[4][0]}:{port or 6379}" in known for info in found):
            missing.append(name)
    return missing


class Router:
    """Sends packed commands to the primary that owns a key's slot, on one of its pooled
    connections; an error that says the slot map is stale has it re-read (at most every
    :data:`REFRESH_INTERVAL`), and the core retries the command."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self._stale = False
        self._next_refresh = 0.0
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._lock:
            if not self._stale or time.monotonic() < self._next_refresh:
                return
            self._next_refresh = time.monotonic() + REFRESH_INTERVAL
            try:
                await self.cluster.nodes_manager.initialize()
            except rex.RedisError:
                return
            self._stale = False

    async def send_packed(self, key: bytes, commands: list[bytes], replies: int) -> list[Any]:
        if self._stale and time.monotonic() >= self._next_refresh:
            await self._refresh()
        node = self.cluster.get_node_from_key(key)  # type: ignore[arg-type]  # keys may be bytes
        if node is None:
            self._stale = True
            raise rex.SlotNotCoveredError(f"no node serves the slot of {key!r}")
        conn = node.acquire_connection()
        try:
            out = await exchange(conn, commands, replies)
            if any(isinstance(reply, _STALE) for reply in out):
                self._stale = True
            return out
        except (rex.ConnectionError, rex.TimeoutError, OSError):
            self._stale = True
            raise
        finally:
            node.release(conn)

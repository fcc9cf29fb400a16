"""The idempotency store in Redis, shared by every process of a consumer group.

One key per message key: ``busy:<owner>`` with the lease as TTL while a worker holds the claim,
``done`` with ``remember`` as TTL once processed. Every transition is one Lua script, so a claim,
renewal, commit or release is atomic (two workers cannot both claim; a worker whose lease expired
cannot release or renew the next owner's claim). See ``unimq.idempotency`` for the protocol.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from unimq.errors import ConfigError
from unimq.idempotency import Claim, LeaseStore

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, 0}
end
if v == 'done' then return {0, 0} end
return {2, redis.call('PTTL', KEYS[1])}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_COMMIT = """
local held = redis.call('GET', KEYS[1]) == ARGV[1]
redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
if held then return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore(LeaseStore):
    """Claims and processed keys in Redis, under ``prefix`` (one key each, with a TTL).

    ``client`` is a Redis URL (``redis+cluster://h1:p1,h2:p2`` for a Redis Cluster: each claim is
    one key, so keys need no hash tag), a ``redis.asyncio.Redis`` or a ``RedisCluster`` (closed by
    :meth:`close` only when this store created it). Durability is Redis's: with ``appendfsync
    everysec`` a Redis crash can forget the last second of marks, and those messages, if
    redelivered, are processed again (on a cluster, so can a primary's failover).
    """

    def __init__(self, client: Any, *, prefix: str = "unimq:once:", lease: timedelta | float = 30.0,
                 remember: timedelta | float = timedelta(days=1), wait: timedelta | float | None = None) -> None:
        super().__init__(lease=lease, remember=remember, wait=wait)
        import redis.asyncio as redis

        from unimq.url import parse_url
        from unimq_redis import cluster

        if isinstance(client, str) and client.partition("://")[0].lower() in cluster.SCHEMES:
            self._redis: Any = cluster.client(parse_url(client))
            self._owned = True
        elif isinstance(client, str):
            self._redis = redis.from_url(client)
            self._owned = True
        elif isinstance(client, redis.Redis | redis.RedisCluster):
            self._redis = client
            self._owned = False
        else:
            raise ConfigError("RedisStore needs a redis:// or redis+cluster:// URL, a redis.asyncio.Redis or a "
                              f"RedisCluster, got {type(client).__name__}")
        self.prefix = prefix
        self._claim = self._redis.register_script(_CLAIM)
        self._renew = self._redis.register_script(_RENEW)
        self._commit = self._redis.register_script(_COMMIT)
        self._release = self._redis.register_script(_RELEASE)

    def _ms(self, value: float) -> int:
        return max(1, int(value * 1000))

    async def claim(self, key: str, owner: str) -> tuple[Claim, float]:
        state, ttl = await self._claim(keys=[self.prefix + key], args=["busy:" + owner, self._ms(self.lease)])
        if state == 1:
            return Claim.CLAIMED, self.lease
        if state == 0:
            return Claim.DONE, 0.0
        return Claim.BUSY, max(int(ttl), 0) / 1000

    async def renew(self, key: str, owner: str) -> bool:
        return bool(await self._renew(keys=[self.prefix + key], args=["busy:" + owner, self._ms(self.lease)]))

    async def commit(self, key: str, owner: str) -> bool:
        return bool(await self._commit(keys=[self.prefix + key], args=["busy:" + owner, self._ms(self.remember)]))

    async def release(self, key: str, owner: str) -> None:
        await self._release(keys=[self.prefix + key], args=["busy:" + owner])

    async def processed(self, key: str) -> bool:
        """Whether ``key`` is remembered as processed (for tests and diagnostics)."""
        return bool(await self._redis.get(self.prefix + key) == b"done")

    async def close(self) -> None:
        if self._owned:
            await self._redis.aclose()


class RedisProcessedIds(RedisStore):
    """The migration module's former ``unimq.migrate.RedisProcessedIds``: a :class:`RedisStore`
    whose ``window`` is how long processed ids are remembered."""

    def __init__(self, url: str, prefix: str = "unimq:processed:", window: timedelta = timedelta(hours=1)) -> None:
        super().__init__(url, prefix=prefix, remember=window, lease=min(30.0, window.total_seconds()))

"""unimq adapter for Redis Streams: ``redis://`` and ``rediss://``. See ``docs/backends/redis.md``."""

from unimq_redis.driver import RedisDriver, RedisOptions

__all__ = ["RedisDriver", "RedisOptions"]

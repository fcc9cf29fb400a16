"""URL scheme → driver class, through the ``unimq.adapters`` entry-point group.

Every backend, ``memory://`` included, registers the same way, so a third-party adapter is a
package with one entry point.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from unimq.errors import ConfigError

if TYPE_CHECKING:
    from unimq.driver import Driver

GROUP = "unimq.adapters"

#: Schemes of first-party adapters and the extra that installs each.
KNOWN_EXTRAS = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "rabbitmq": "rabbitmq",
    "kafka": "kafka",
    "redis": "redis",
    "rediss": "redis",
    "nats": "nats",
    "tls": "nats",
    "sqs": "sqs",
    "servicebus": "servicebus",
}


@lru_cache(maxsize=1)
def installed() -> dict[str, EntryPoint]:
    """Installed schemes and their entry points."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(scheme: str) -> type[Driver]:
    eps = installed()
    if scheme not in eps:
        have = ", ".join(f"{s}://" for s in sorted(eps)) or "(none)"
        if scheme in KNOWN_EXTRAS:
            raise ConfigError(
                f'{scheme}:// needs: pip install "unimq[{KNOWN_EXTRAS[scheme]}]". Installed schemes: {have}'
            )
        raise ConfigError(f"unknown URL scheme {scheme!r}. Installed schemes: {have}")
    driver: type[Driver] = eps[scheme].load()
    return driver

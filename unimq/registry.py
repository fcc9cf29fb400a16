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
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
    "nats": "nats",
    "tls": "nats",
    "sqs": "sqs",
    "servicebus": "servicebus",
}


@lru_cache(maxsize=1)
def installed() -> dict[str, EntryPoint]:
    """Installed schemes and their entry points."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(scheme: str, client: str | None = None) -> type[Driver]:
    """The driver for ``scheme``; with ``client`` (the URL's ``?client=``), the alternative driver
    registered as ``<scheme>+<client>`` (e.g. ``kafka+confluent``), so a second client library for
    one broker is a separate distribution chosen by URL."""
    eps = installed()
    if client is not None:
        name = f"{scheme}+{client}"
        if name not in eps:
            clients = sorted(n.split("+", 1)[1] for n in eps if n.startswith(scheme + "+"))
            raise ConfigError(f"{scheme}:// has no client {client!r} installed"
                              + (f'; pip install "unimq[{scheme}-{client}]"' if scheme in KNOWN_EXTRAS else "")
                              + f". Installed clients: {', '.join(['(default)', *clients])}")
        alternative: type[Driver] = eps[name].load()
        return alternative
    if scheme not in eps:
        have = ", ".join(f"{s}://" for s in sorted(eps) if "+" not in s) or "(none)"
        if scheme in KNOWN_EXTRAS:
            raise ConfigError(
                f'{scheme}:// needs: pip install "unimq[{KNOWN_EXTRAS[scheme]}]". Installed schemes: {have}'
            )
        raise ConfigError(f"unknown URL scheme {scheme!r}. Installed schemes: {have}")
    driver: type[Driver] = eps[scheme].load()
    return driver

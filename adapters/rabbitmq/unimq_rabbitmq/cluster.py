"""Several hosts in one amqp:// URL (``amqp://u:p@h1:5672,h2:5673/vhost``): a RabbitMQ cluster.

aio-pika's ``connect_robust`` takes one address and reconnects to that same address. Here the first
host that answers is used, and every reconnection attempt after a lost connection moves on to the
next host, so a client of a cluster follows the nodes that are still alive.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, cast

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from unimq.errors import BrokerConnectionError

log = logging.getLogger("unimq.rabbitmq")


class _RotatingConnection(aio_pika.RobustConnection):
    """A RobustConnection that tries the next host of ``hosts`` on each reconnection attempt."""

    hosts: ClassVar[tuple[tuple[str, int], ...]] = ()
    _attempted = False
    _turn = 0

    @property
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        # RobustConnection clears the transport in __init__, then right before every connection
        # attempt (and on close).
        initialised = "_transport" in self.__dict__
        if initialised and value is None and self.hosts and not getattr(self, "_close_called", False):
            if self._attempted:
                self._turn += 1
                host, port = self.hosts[self._turn % len(self.hosts)]
                self.url = self.url.with_host(host).with_port(port)
                log.warning("rabbitmq: reconnecting to the next cluster node %s:%d", host, port)
            self._attempted = True
        self.__dict__["_transport"] = value


async def connect_hosts(hosts: list[tuple[str, int]], **kwargs: Any) -> AbstractRobustConnection:
    """``aio_pika.connect_robust(**kwargs)`` on the first of ``hosts`` that answers.

    A host that does not answer is logged once; when none answers, BrokerConnectionError names
    them all (never the credentials).
    """
    if len(hosts) <= 1:
        return cast(AbstractRobustConnection, await aio_pika.connect_robust(**kwargs))
    failed: list[str] = []
    for index, (host, port) in enumerate(hosts):
        order = tuple(hosts[index:] + hosts[:index])
        connection_class = type("RotatingConnection", (_RotatingConnection,), {"hosts": order})
        try:
            connection = await aio_pika.connect_robust(
                **{**kwargs, "host": host, "port": port}, connection_class=connection_class)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            if isinstance(exc, aio_pika.exceptions.ProbableAuthenticationError):
                raise
            failed.append(f"{host}:{port} ({type(exc).__name__})")
            continue
        if failed:
            log.warning("rabbitmq: cluster node(s) not answering, connected to %s:%d: %s", host, port,
                        ", ".join(failed))
        return cast(AbstractRobustConnection, connection)
    raise BrokerConnectionError(f"rabbitmq: no cluster node answered: {', '.join(failed)}; start one of them "
                                "or fix the host list in the URL")

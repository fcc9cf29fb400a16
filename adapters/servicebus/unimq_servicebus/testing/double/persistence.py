"""Durable state for the double (``--data-dir``): a snapshot file, so that a restart keeps it.

What a restart keeps: entities and their settings, subscription rules, declared options, every
stored message with its sequence number, delivery count and state (active, scheduled, deferred),
dead-letter queues, topics' scheduled messages, session state, duplicate-detection history and the counters. What it
does not keep: connections, links, message and session locks. A message that was locked when the
double stopped comes back as if its lock had expired: ``delivery_count`` + 1 (dead-lettered at
``max_delivery_count``), receivable again (peek-lock semantics).

Why a snapshot and not a journal: the message path stays exactly as it was (no write per message).
The reactor thread writes the whole state (pickle, to a temporary file renamed over
``state.pickle``):

* on shutdown (SIGTERM/SIGINT, ``ServiceBusDouble.stop()``): nothing is lost;
* while running, when something changed, at most every ``max(1 s, 50 x the last write's time)``,
  so writing takes at most ~2 % of the reactor thread even with deep queues.

A SIGKILL (or a crash) loses what changed since the last periodic write: up to about a second, or
more while queues hold so many messages that one write takes over 20 ms. The file is not fsynced,
so a host crash can lose more. The file is a pickle: load only a data dir you wrote.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any

from .entities import Broker

log = logging.getLogger("unimq.servicebus_double")

FORMAT = 1
MIN_INTERVAL = 1.0
#: A periodic write is followed by at least this many times its duration without one.
SPACING = 50


class SnapshotStore:
    """Reads and writes ``<data_dir>/state.pickle`` and decides when a periodic write is due."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.pickle"
        self.next_due = time.monotonic() + MIN_INTERVAL

    def load(self, broker: Broker) -> None:
        """Restore the last snapshot into ``broker`` (nothing to do on a first start)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        state: dict[str, Any] = pickle.loads(raw)
        if state.get("format") != FORMAT:
            raise RuntimeError(f"{self.path}: unknown snapshot format {state.get('format')!r}")
        broker.restore(state["broker"])
        log.info("restored %d entities from %s", len(state["broker"]["entities"]), self.path)

    def save(self, broker: Broker) -> None:
        started = time.monotonic()
        data = pickle.dumps({"format": FORMAT, "broker": broker.snapshot()}, protocol=pickle.HIGHEST_PROTOCOL)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        took = time.monotonic() - started
        self.next_due = time.monotonic() + max(MIN_INTERVAL, SPACING * took)
        log.debug("snapshot: %d bytes in %.1f ms", len(data), took * 1000)

    def due(self) -> bool:
        return time.monotonic() >= self.next_due

"""Migration toolkit: move traffic between backends without losing or double-processing a message.

- :class:`DualProducer` — publish to old and new (policies ``both``, ``primary`` with a durable
  replay journal, ``shadow``);
- :class:`FailoverProducer` — send to a primary backend, to a secondary (journaled) while it is down;
- :class:`CanaryProducer` — route a stable, adjustable share of keys to the new backend;
- :class:`MergedConsumer` — consume both sides as one stream, de-duplicated by message_id;
- :class:`Mirror`, :func:`drain` — bridge a destination to another backend, or empty it;
- :func:`verify` — report missing, extra, duplicated and out-of-order messages.

The playbook is in ``docs/migration.md``; the CLI is ``unimq migrate``.
"""

from unimq.migrate.bridge import Mirror, MirrorStats, VerifyReport, compare, drain, verify
from unimq.migrate.failover import FailoverProducer
from unimq.migrate.journal import Journal
from unimq.migrate.merge import MemoryProcessedIds, MergedConsumer, MergedDelivery
from unimq.migrate.publish import CanaryProducer, DualProducer, DualStats, Policy, stable_share

__all__ = [
    "CanaryProducer",
    "DualProducer",
    "DualStats",
    "FailoverProducer",
    "Journal",
    "MemoryProcessedIds",
    "MergedConsumer",
    "MergedDelivery",
    "Mirror",
    "MirrorStats",
    "Policy",
    "VerifyReport",
    "compare",
    "drain",
    "stable_share",
    "verify",
]

"""Split the conformance targets into lanes that scripts/test runs side by side.

    .venv/bin/python scripts/conformance_lanes.py 3   # one line per lane: target names

The suite waits on brokers far more than it computes, so separate pytest processes, each running
whole targets in their usual order, cut the wall time without changing what a case sees. Lanes
are balanced by how long each target took in CI (minutes, rounded); a target not listed here
counts as a slow one, so a new target is never left out, only perhaps unevenly placed.
"""

from __future__ import annotations

import sys

from unimq.testing.brokers import TARGETS

MINUTES = {
    "memory": 0.3, "redis": 1.5, "redis-cluster": 1.6, "rabbitmq": 1.1, "rabbitmq-quorum": 1.2,
    "rabbitmq-cluster": 1.2, "nats": 1.3, "nats-core": 1.0, "nats-routing": 1.3, "nats-cluster": 1.4,
    "sqs": 1.5, "sqs-fifo": 1.0, "kafka": 3.0, "kafka-confluent": 3.0, "kafka-cluster": 3.2,
    "servicebus": 4.0, "servicebus-sessions": 7.5, "servicebus-static": 7.0,
}
UNKNOWN = 3.5


def lanes(count: int) -> list[list[str]]:
    """Longest first, each to the lane with the least work so far."""
    out: list[list[str]] = [[] for _ in range(count)]
    load = [0.0] * count
    for target in sorted(TARGETS, key=lambda t: -MINUTES.get(t.name, UNKNOWN)):
        lane = load.index(min(load))
        out[lane].append(target.name)
        load[lane] += MINUTES.get(target.name, UNKNOWN)
    return [lane for lane in out if lane]


def main() -> None:
    try:
        count = int(sys.argv[1])
        if count < 1:
            raise ValueError
    except (IndexError, ValueError):
        sys.exit("usage: conformance_lanes.py COUNT (an int >= 1)")
    for lane in lanes(count):
        print(" ".join(lane))


if __name__ == "__main__":
    main()

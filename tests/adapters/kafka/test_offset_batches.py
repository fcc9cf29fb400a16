"""OffsetTracker.track_many and ack_many, without a broker: a run of offsets tracked in one call and a
batch of acks settled in one call commit exactly what the per-offset tracker would."""

from __future__ import annotations

import random

from unimq_kafka.offsets import OffsetTracker


def test_a_batch_of_the_oldest_offsets_commits_after_its_last() -> None:
    tracker = OffsetTracker()
    tracker.track_many([0, 1, 2, 3, 4])
    tracker.ack_many([0, 1, 2])
    assert tracker.committable() == 3
    assert tracker.pending == 2


def test_a_batch_behind_a_gap_commits_nothing_until_the_gap_is_acked() -> None:
    tracker = OffsetTracker()
    tracker.track_many([10, 12, 15, 16])  # compaction leaves gaps in a partition's offsets
    tracker.ack_many([12, 15])
    assert tracker.committable() is None
    tracker.ack_many([10])
    assert tracker.committable() == 16
    tracker.ack_many([16])
    assert tracker.committable() == 17


def test_a_batch_moves_the_commit_point_over_offsets_acked_earlier() -> None:
    tracker = OffsetTracker()
    tracker.track_many(list(range(6)))
    tracker.ack_many([3])
    tracker.ack_many([0, 1, 2])
    assert tracker.committable() == 4
    assert tracker.pending == 2


def test_random_batches_commit_exactly_the_contiguous_prefix() -> None:
    rng = random.Random(11)
    for _ in range(50):
        offsets = sorted(rng.sample(range(1000), 60))
        tracker = OffsetTracker()
        tracker.track_many(offsets[:25])
        tracker.track_many(offsets[25:])
        order = offsets[:]
        if rng.random() < 0.5:
            rng.shuffle(order)  # else in order: the batches take the one-call path
        acked: set[int] = set()
        while order:
            size = rng.randint(1, 9)
            batch, order = order[:size], order[size:]
            tracker.ack_many(batch)
            acked.update(batch)
            prefix = 0
            while prefix < len(offsets) and offsets[prefix] in acked:
                prefix += 1
            assert tracker.committable() == (offsets[prefix - 1] + 1 if prefix else None)
        assert tracker.pending == 0

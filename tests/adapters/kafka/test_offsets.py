"""The contiguous-offset commit logic, without a broker; ``track_many``/``ack_many`` (a run of
offsets tracked in one call, a batch of acks settled in one call) commit exactly what the
per-offset calls would."""

from __future__ import annotations

import random

from unimq_kafka.offsets import OffsetTracker


def test_nothing_to_commit_before_an_ack() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.track(offset)
    assert tracker.committable() is None


def test_in_order_acks_commit_after_the_last() -> None:
    tracker = OffsetTracker()
    for offset in range(3):
        tracker.track(offset)
    tracker.ack(0)
    assert tracker.committable() == 1
    tracker.ack(1)
    tracker.ack(2)
    assert tracker.committable() == 3
    assert tracker.pending == 0


def test_out_of_order_acks_never_commit_past_a_gap() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.track(offset)
    tracker.ack(1)
    tracker.ack(3)
    tracker.ack(4)
    assert tracker.committable() is None, "offset 0 is unacknowledged: nothing may be committed"
    tracker.ack(0)
    assert tracker.committable() == 2, "1 was acked, 2 was not"
    tracker.ack(2)
    assert tracker.committable() == 5


def test_offset_gaps_from_compaction_or_markers_are_contiguous() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 15, 20):
        tracker.track(offset)
    tracker.ack(15)
    tracker.ack(10)
    assert tracker.committable() == 11
    tracker.ack(11)
    assert tracker.committable() == 16
    tracker.ack(20)
    assert tracker.committable() == 21


def test_committed_offset_is_not_offered_again() -> None:
    tracker = OffsetTracker()
    tracker.track(0)
    tracker.ack(0)
    assert tracker.committable() == 1
    tracker.committed(1)
    assert tracker.committable() is None
    tracker.track(1)
    tracker.ack(1)
    assert tracker.committable() == 2


def test_stale_and_double_acks_are_harmless() -> None:
    tracker = OffsetTracker()
    for offset in range(3):
        tracker.track(offset)
    tracker.ack(0)
    tracker.ack(0)
    tracker.ack(-5)
    assert tracker.committable() == 1
    tracker.ack(2)
    tracker.ack(2)
    tracker.ack(1)
    assert tracker.committable() == 3
    assert tracker.pending == 0


def test_random_ack_order_commits_exactly_the_contiguous_prefix() -> None:
    rng = random.Random(7)
    for _ in range(50):
        offsets = sorted(rng.sample(range(1000), 60))
        tracker = OffsetTracker()
        for offset in offsets:
            tracker.track(offset)
        order = offsets[:]
        rng.shuffle(order)
        acked: set[int] = set()
        for offset in order:
            tracker.ack(offset)
            acked.add(offset)
            assert tracker.committable() == _contiguous(offsets, acked)


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
            assert tracker.committable() == _contiguous(offsets, acked)
        assert tracker.pending == 0


def _contiguous(offsets: list[int], acked: set[int]) -> int | None:
    """The commit point: after the longest acked prefix of ``offsets``."""
    prefix = 0
    while prefix < len(offsets) and offsets[prefix] in acked:
        prefix += 1
    return offsets[prefix - 1] + 1 if prefix else None

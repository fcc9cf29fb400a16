"""The contiguous-offset commit logic, without a broker."""

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
            prefix = 0
            while prefix < len(offsets) and offsets[prefix] in acked:
                prefix += 1
            expected = offsets[prefix - 1] + 1 if prefix else None
            assert tracker.committable() == expected

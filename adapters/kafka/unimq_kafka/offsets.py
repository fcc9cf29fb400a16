"""Per-message acknowledgement on top of Kafka offsets.

Kafka commits one offset per partition: "everything before this is done". Handlers running
concurrently finish out of order, so a partition's tracker remembers the offsets delivered (in
fetch order) and those acknowledged, and only ever offers for commit the offset after the
highest *contiguous* acknowledged one. A crash therefore redelivers, never skips, a message.
Offsets need not be consecutive (compaction and transaction markers leave gaps): contiguity is
over the delivered sequence.
"""

from __future__ import annotations

from collections import deque
from itertools import islice, repeat, starmap


class OffsetTracker:
    """Delivered and acknowledged offsets of one partition, for one consumer's assignment."""

    __slots__ = ("_acked", "_committed", "_next", "_pending", "revoked")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._acked: set[int] = set()
        self._next: int | None = None
        self._committed: int | None = None
        #: Set when the partition was taken away: later acks of its messages are ignored.
        self.revoked = False

    def track(self, offset: int) -> None:
        """A record at ``offset`` was fetched (offsets arrive in increasing order)."""
        self._pending.append(offset)

    def track_many(self, offsets: list[int]) -> None:
        """Records fetched at ``offsets``, in increasing order: one call per partition run."""
        self._pending.extend(offsets)

    def ack_many(self, offsets: list[int]) -> None:
        """The records at ``offsets`` are done. The common batch, the oldest pending offsets in
        order, is checked and removed by C loops (no Python call per offset); any other goes
        offset by offset."""
        pending = self._pending
        count = len(offsets)
        if count > 1 and pending and pending[0] == offsets[0] and list(islice(pending, count)) == offsets:
            # popleft count - 1 times without a Python loop; ack() pops the last and moves the commit point.
            deque(starmap(pending.popleft, repeat((), count - 1)), maxlen=0)
            self.ack(offsets[-1])
            return
        for offset in offsets:
            self.ack(offset)

    def ack(self, offset: int) -> None:
        """The record at ``offset`` is done; advance the commit point over contiguous acks."""
        pending = self._pending
        if not pending or offset < pending[0]:
            return
        if offset != pending[0]:
            self._acked.add(offset)
            return
        pending.popleft()
        nxt = offset + 1
        acked = self._acked
        while pending and pending[0] in acked:
            done = pending.popleft()
            acked.discard(done)
            nxt = done + 1
        self._next = nxt

    def committable(self) -> int | None:
        """The offset to commit (next record to read), if it moved since the last commit."""
        return self._next if self._next != self._committed else None

    def committed(self, offset: int) -> None:
        self._committed = offset

    @property
    def pending(self) -> int:
        """Records fetched and not yet contiguously acknowledged."""
        return len(self._pending)

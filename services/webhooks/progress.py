"""Which offset of a partition is safe to commit when releases finish out of order.

Deliveries run concurrently, so a later release can finish before an earlier one. The
committed offset may only pass a release once it is finished (delivered to every
endpoint or dead-lettered); otherwise a crash would lose it.
"""

from __future__ import annotations

from collections import deque


class PartitionProgress:
    def __init__(self) -> None:
        self._unfinished_order: deque[int] = deque()  # fetch order == offset order
        self._finished_early: set[int] = set()
        self._next_offset: int | None = None
        self.committed: int | None = None

    def started(self, offset: int) -> None:
        self._unfinished_order.append(offset)
        self._next_offset = offset + 1

    def finished(self, offset: int) -> None:
        self._finished_early.add(offset)
        order = self._unfinished_order
        while order and order[0] in self._finished_early:
            self._finished_early.discard(order.popleft())

    @property
    def pending(self) -> int:
        return len(self._unfinished_order)

    def committable(self) -> int | None:
        """The offset to commit (the next record to read after a restart), if any."""
        if self._unfinished_order:
            return self._unfinished_order[0]
        return self._next_offset

    def uncommitted(self) -> int | None:
        """The committable offset if it moved since the last commit, else None."""
        offset = self.committable()
        return None if offset is None or offset == self.committed else offset

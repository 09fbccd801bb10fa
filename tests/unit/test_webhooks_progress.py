"""Committable offsets when releases finish out of order."""

from __future__ import annotations

from services.webhooks.progress import PartitionProgress


def test_commit_stops_at_the_lowest_unfinished_release() -> None:
    progress = PartitionProgress()
    assert progress.committable() is None
    for offset in (10, 11, 12, 13):
        progress.started(offset)
    assert progress.committable() == 10
    progress.finished(12)
    progress.finished(11)
    assert progress.committable() == 10  # 10 still in flight: a crash must redeliver it
    progress.finished(10)
    assert progress.committable() == 13
    progress.finished(13)
    assert progress.committable() == 14  # everything finished: resume after the last
    assert progress.pending == 0


def test_uncommitted_reports_only_movement() -> None:
    progress = PartitionProgress()
    progress.started(0)
    progress.finished(0)
    assert progress.uncommitted() == 1
    progress.committed = 1
    assert progress.uncommitted() is None
    progress.started(1)
    assert progress.uncommitted() is None  # still 1: nothing new to commit
    progress.finished(1)
    assert progress.uncommitted() == 2


def test_gaps_in_offsets_are_fine() -> None:
    # compacted or transactional topics skip offsets; only fetched ones count
    progress = PartitionProgress()
    for offset in (3, 7, 20):
        progress.started(offset)
    progress.finished(7)
    progress.finished(3)
    assert progress.committable() == 20

"""Which records a restarted prescreen sends again: pending records of batches it
neither holds nor decided, and their partners' fragments, never deadline ticks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.kernel.config import KafkaSettings
from services.kernel.kafka.topics import FRAGMENTS, PENDING
from services.kernel.kafka.window import Record
from services.prescreen import recovery
from services.prescreen.joiner import KIND_HEADER, TICK_KIND
from services.prescreen.recovery import (
    JoinerView,
    fragments_of,
    processed_through,
    skipped_batches,
)


def test_only_batches_the_joiner_does_not_know_are_sent_again() -> None:
    pending = [Record(PENDING, 0, f"b-{i}".encode(), b"{}") for i in range(4)]
    known = {"b-0", "b-2"}  # decided, or held with its pending record
    missing = skipped_batches(pending, lambda b: b in known)
    assert sorted(missing) == ["b-1", "b-3"]
    assert missing["b-1"].partition == 0


def test_fragments_of_missing_batches_without_ticks() -> None:
    fragments = [
        Record(FRAGMENTS, 1, b"b-1", b'{"partner": "payments"}'),
        Record(FRAGMENTS, 1, b"b-1", b"{}", ((KIND_HEADER, TICK_KIND),)),
        Record(FRAGMENTS, 1, b"b-9", b'{"partner": "payments"}'),
    ]
    chosen = fragments_of(fragments, {"b-1"})
    assert chosen == [fragments[0]]


def test_the_sweep_waits_until_the_joiner_processed_what_was_on_the_broker() -> None:
    ends = {0: 10, 1: 5, 2: 7}
    committed = {0: 3, 1: 5, 2: 7}  # partitions 1 and 2 held nothing new at the start
    last: dict[int, int] = {0: 8}
    assert not processed_through(ends, last.get, committed)  # offset 9 only fetched so far
    last[0] = 9
    assert processed_through(ends, last.get, committed)
    # A partition that had records past its committed offset is not done before the
    # joiner handled one of them: fetched (faust's lag 0) is not processed.
    assert not processed_through({0: 10, 3: 4}, last.get, {0: 3})


async def test_partitions_taken_over_from_another_worker_are_checked_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With several workers a partition changes hands without a process start: each one
    this worker gets is checked once, and again if it was lost and won back."""
    assigned: set[int] = set()
    checks: list[tuple[set[int], dict[int, int] | None]] = []

    reads: list[int] = []

    async def committed_offsets(*_: object) -> dict[int, int]:
        reads.append(len(reads) + 1)
        return {0: reads[-1]}  # the group moves on between reads

    async def recover_skipped(
        *_: object, only: set[int], committed_at_start: Any, **__: Any
    ) -> int:
        checks.append((set(only), committed_at_start))
        return 0

    monkeypatch.setattr(recovery, "committed_offsets", committed_offsets)
    monkeypatch.setattr(recovery, "recover_skipped", recover_skipped)
    polls = [0]

    def ready() -> bool:
        polls[0] += 1
        return bool(assigned)

    view = JoinerView(
        ready=ready,
        assigned=lambda: set(assigned),
        processed=lambda _: None,
        known=lambda _: True,
        state_of=lambda _: None,
    )
    task = asyncio.create_task(
        recovery.keep_recovering(
            KafkaSettings(),
            None,
            view,
            group_id="g",
            started_at=0.0,
            poll_s=0.001,
        )
    )

    async def settle(count: int) -> None:
        """Until ``count`` checks were made and the loop has looked twice since."""
        seen = polls[0]
        while len(checks) < count or polls[0] < seen + 2:
            await asyncio.sleep(0.001)

    try:
        assigned |= {0, 1}
        await settle(1)
        assigned |= {2, 3}  # the other worker was killed: its partitions come here
        await settle(2)
        assigned -= {2, 3}  # it is back
        await settle(2)
        assigned |= {2}
        await settle(3)
    finally:
        task.cancel()
    assert [only for only, _ in checks] == [{0, 1}, {2, 3}, {2}]
    # The first check is judged against the offsets committed when this instance
    # started; a takeover's are read when it happens.
    assert [c for _, c in checks] == [{0: 1}, {0: 2}, {0: 3}]

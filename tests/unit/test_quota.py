"""Quota counts that travel with the releases: read back after a crash, they count
every release exactly once, also those of a batch decided a second time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path

import pytest

from schemas import Decision, PendingBatch, QuotaCounts, ReasonCode
from services.kernel.kafka.topics import FRAGMENTS, PENDING, RELEASES
from services.prescreen.outputs import Output
from services.prescreen.quota import PartitionQuota, QuotaLedger, Restore
from services.prescreen.quota_log import Logged, counts_in, restored
from tests.unit.test_joiner import World

ROWS = [1, 2, 3, 4, 5, 6]


def released_log(world: World, partition: int) -> list[Logged]:
    """The release records as the broker holds them, with offsets."""
    return [
        Logged(offset, 0, key, counts_in(headers, partition))
        for offset, ((topic, key, _), headers) in enumerate(
            zip(world.sent, world.headers, strict=True)
        )
        if topic == RELEASES
    ]


def no_legacy(partition: int) -> PartitionQuota:
    raise AssertionError("the log carries counts: the legacy table is not read")


def one_of_two_workers(world: World, restore: Restore | None = None) -> None:
    """The joiner as a worker that owns partition 0 of 2: its share is half the quota."""
    world.joiner.ledger = QuotaLedger(2, restore, owned=lambda: {0})


def read_back(world: World) -> Restore:
    """What read_counts finds on the log ``world`` wrote."""

    async def restore(partition: int) -> PartitionQuota:
        records = released_log(world, partition)
        counted = [r for r in records if r.counts]
        last = counted[-1] if counted else None
        return restored(partition, last, records, lambda p: PartitionQuota(p))

    return restore


async def decide(world: World, pending: PendingBatch, partition: int = 0) -> None:
    await world.joiner.handle(PENDING, partition, pending.model_dump_json().encode())
    for partner in world.partner_bundles:
        await world.joiner.handle(FRAGMENTS, partition, world.fragment(partner, pending))


def outcomes(decisions: list[Decision]) -> dict[str, str]:
    return {d.decision_id: d.outcome for d in decisions}


async def test_the_last_release_of_a_batch_carries_the_partitions_counts(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, quota=8, max_pd=1.0)
    one_of_two_workers(world)  # partition 0's share: 4
    await decide(world, world.pending("q1", ROWS[:3]))
    await decide(world, world.pending("q2", ROWS[3:]))
    released = [d for d in world.decisions() if d.outcome == "released"]
    assert len(released) == 4
    carrying = [h for (t, _, _), h in zip(world.sent, world.headers, strict=True) if h]
    assert all(t == RELEASES for (t, _, _), h in zip(world.sent, world.headers, strict=True) if h)
    counts = [QuotaCounts.model_validate_json(dict(h)[QuotaCounts.HEADER]) for h in carrying]
    assert [c.totals for c in counts] == [{"card-upgrade": 3}, {"card-upgrade": 4}]
    assert counts[-1].partition == 0 and sum(counts[-1].days["card-upgrade"].values()) == 4


async def test_a_batch_decided_again_after_a_crash_releases_the_same_and_counts_once(
    tmp_path: Path,
) -> None:
    """The crash: a batch's decisions and releases reached the broker, the record that
    it was decided did not. The restarted joiner reads the counts back from the log
    and decides the batch again: the same candidates released, none counted twice, so
    the next batch gets exactly what is left of the share."""
    first = World(tmp_path / "a", quota=8, max_pd=1.0)
    one_of_two_workers(first)
    pending = first.pending("q3", ROWS[:3])
    await decide(first, pending)
    before = outcomes(first.decisions())

    restarted = World(tmp_path / "b", quota=8, max_pd=1.0)
    one_of_two_workers(restarted, read_back(first))
    await decide(restarted, pending)  # delivered again: nothing recorded it decided
    assert outcomes(restarted.decisions()) == before
    quota = await restarted.joiner.ledger.of(0)
    assert quota.totals == {"card-upgrade": 3}

    await decide(restarted, restarted.pending("q4", ROWS[3:]))
    later = [d.reasons[0] for d in restarted.decisions() if d.batch_id == "q4"]
    assert later == [ReasonCode.ELIGIBLE] + [ReasonCode.QUOTA_EXHAUSTED] * 2
    assert quota.totals == {"card-upgrade": 4}


def test_counts_are_read_from_the_partitions_last_counted_record_only() -> None:
    mine = QuotaCounts(partition=1, totals={"c": 7}, days={"c": {"2026-12-05": 7}})
    other = QuotaCounts(partition=0, totals={"c": 99}, days={})

    def carrying(counts: QuotaCounts) -> list[tuple[str, bytes]]:
        return [(QuotaCounts.HEADER, counts.model_dump_json().encode())]

    records = [
        Logged(10, 0, b"d1", counts_in(carrying(mine), 1)),
        Logged(11, 0, b"d2", counts_in(carrying(other), 1)),
        Logged(12, 0, b"d3", None),  # a release after the last count: not counted yet
    ]
    assert records[1].counts is None  # partition 0's count, in a shared output partition
    quota = restored(1, records[0], records, no_legacy)
    assert quota.totals == {"c": 7} and quota.counted == {"d1"}
    assert counts_in([(QuotaCounts.HEADER, b"{not json")], 1) is None


def test_without_a_count_on_the_log_the_legacy_table_counts() -> None:
    legacy = PartitionQuota(0, totals={"c": 5})
    assert restored(0, None, [], lambda p: legacy) is legacy


async def test_a_refused_send_makes_the_next_batch_count_from_the_log_again(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, quota=8, max_pd=1.0)
    restores: list[int] = []

    async def restore(partition: int) -> PartitionQuota:
        restores.append(partition)
        return PartitionQuota(partition)

    one_of_two_workers(world, restore)
    publish = world.joiner.publish

    async def refusing(records: Sequence[Output], partition: int) -> Awaitable[None]:
        async def refused() -> None:
            raise ConnectionError("broker gone")

        await (await publish(records, partition))  # queued; its acknowledgement fails
        return refused()

    world.joiner.publish = refusing
    with pytest.raises(ConnectionError):
        await decide(world, world.pending("q5", ROWS[:2]))
    world.joiner.publish = publish
    await decide(world, world.pending("q6", ROWS[2:4]))
    assert restores == [0, 1, 0, 1]  # every partition's counts, read twice
    assert (await world.joiner.ledger.of(0)).totals == {"card-upgrade": 2}


async def test_batches_of_one_partition_queue_in_the_order_they_were_counted(
    tmp_path: Path,
) -> None:
    """Two handlers decide batches of one partition at once; the first is slow to
    queue (the producer waits for metadata). The second counts only after the first
    is queued, so the last count on the log covers every release before it."""
    world = World(tmp_path, quota=8, max_pd=1.0)
    publish = world.joiner.publish
    slow = asyncio.Event()

    async def slow_first(records: Sequence[Output], partition: int) -> Awaitable[None]:
        if not slow.is_set():
            slow.set()
            await asyncio.sleep(0.05)
        return await publish(records, partition)

    world.joiner.publish = slow_first
    a, b = world.pending("q7", ROWS[:3]), world.pending("q8", ROWS[3:])
    for pending in (a, b):
        await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
        await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    await asyncio.gather(
        *(world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", p)) for p in (a, b))
    )
    log = released_log(world, 0)
    last = [r for r in log if r.counts][-1]
    assert last.offset == log[-1].offset
    assert last.counts is not None and last.counts.totals == {"card-upgrade": len(log)}

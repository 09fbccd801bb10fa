"""Quota counts read back from a real broker's release log: the partition's last count
(also when it sits behind another partition's records, or behind the embedded broker's
short end offset), the releases it covers, nothing after it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from schemas import QuotaCounts
from services.kernel.kafka.admin import ensure_topics
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.clients import make_producer
from services.kernel.kafka.topics import TopicSpec
from services.prescreen.outputs import BatchPublisher, Output
from services.prescreen.quota import PartitionQuota
from services.prescreen.quota_log import read_counts

pytestmark = pytest.mark.integration


def releases(topic: str, ids: list[str], counts: QuotaCounts | None) -> list[Output]:
    """A decided batch's releases, the last carrying its partition's count."""
    out = [Output(topic, d.encode(), b"{}") for d in ids]
    if counts is not None:
        header = (QuotaCounts.HEADER, counts.model_dump_json().encode())
        out[-1] = out[-1]._replace(headers=(header,))
    return out


def no_legacy(partition: int) -> PartitionQuota:
    raise AssertionError(f"partition {partition} has counts on the log")


def counts(partition: int, total: int) -> QuotaCounts:
    return QuotaCounts(partition=partition, totals={"c": total}, days={})


async def test_counts_come_back_from_the_release_log(broker: EmbeddedBroker) -> None:
    topic = f"test.released.{uuid.uuid4().hex[:8]}"
    settings = broker.settings()
    await ensure_topics(settings, [TopicSpec(topic)])
    producer = make_producer(settings)
    await producer.start()
    try:
        publisher = BatchPublisher(producer)
        for batch in (
            releases(topic, ["d1", "d2", "d3"], counts(1, 3)),
            releases(topic, ["d4", "d5"], counts(1, 5)),
            releases(topic, ["d6"], None),  # written after the last count: not counted
        ):
            await (await publisher.publish(batch, 1))
        # Input partition 5 shares output partition 1 (4 partitions): 40 of its records
        # after partition 1's last count, so the read must step back past them.
        for n in range(4):
            ids = [f"e{n}-{i}" for i in range(10)]
            await (await publisher.publish(releases(topic, ids, counts(5, 10 * n + 10)), 5))
    finally:
        await producer.stop()

    one = await read_counts(settings, 1, 60.0, no_legacy, topic)
    assert one.totals == {"c": 5}
    assert one.counted == {"d1", "d2", "d3", "d4", "d5"}
    five = await read_counts(settings, 5, 60.0, no_legacy, topic)
    assert five.totals == {"c": 40} and "e3-9" in five.counted

    legacy = PartitionQuota(2, totals={"c": 7})
    assert await read_counts(settings, 2, 60.0, lambda p: legacy, topic) is legacy


async def test_a_partition_another_worker_keeps_writing_is_read_to_its_end_of_now(
    broker: EmbeddedBroker,
) -> None:
    """A worker reads back every partition's count, also those another worker is still
    releasing from: the read stops at the end it found, not when the writer pauses."""
    topic = f"test.released.{uuid.uuid4().hex[:8]}"
    settings = broker.settings()
    await ensure_topics(settings, [TopicSpec(topic)])
    producer = make_producer(settings)
    await producer.start()
    publisher = BatchPublisher(producer)
    written = 0

    async def keep_releasing() -> None:
        nonlocal written
        while True:
            ids = [f"w{written}-{i}" for i in range(5)]
            await (await publisher.publish(releases(topic, ids, counts(3, written + 5)), 3))
            written += 5
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(keep_releasing())
    try:
        while written < 50:
            await asyncio.sleep(0.05)
        three = await asyncio.wait_for(read_counts(settings, 3, 60.0, no_legacy, topic), 30.0)
        assert three.totals["c"] >= 50 and len(three.counted) == three.totals["c"]
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await producer.stop()

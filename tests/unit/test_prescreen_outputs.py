"""prescreen's batch publisher: a decided batch's records as one record batch per topic,
in the batch's partition and in order, queued when publish returns, with what to await
for the acknowledgements."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder

from services.kernel.kafka.topics import DECISIONS, RELEASES
from services.prescreen.outputs import BatchPublisher, Output


class FakeProducer:
    """What BatchPublisher uses of AIOKafkaProducer; batches are real BatchBuilders."""

    def __init__(self, partitions: int, batch_bytes: int = 1_048_576) -> None:
        self.partitions = partitions
        self.batch_bytes = batch_bytes
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []
        self.headers: list[list[tuple[str, bytes]]] = []
        self.acks: list[asyncio.Future[None]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> Any:
        return _Recording(BatchBuilder(self.batch_bytes, 0))

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        self.headers += batch.headers
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack


class _Recording:
    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder
        self.records: list[tuple[bytes, bytes]] = []
        self.headers: list[list[tuple[str, bytes]]] = []

    def append(
        self, *, key: bytes, value: bytes, timestamp: int | None, headers: list[tuple[str, bytes]]
    ) -> Any:
        metadata = self.builder.append(key=key, value=value, timestamp=timestamp, headers=headers)
        if metadata is not None:
            self.records.append((key, value))
            self.headers.append(headers)
        return metadata


def _records(n: int, size: int = 400) -> list[Output]:
    out = []
    for i in range(n):
        out.append(Output(DECISIONS, f"event-{i}".encode(), bytes([i % 256]) * size))
        if i % 3 == 0:
            out.append(Output(RELEASES, f"decision-{i}".encode(), b"r" * size))
    return out


async def test_a_batch_goes_out_as_one_record_batch_per_topic_in_its_partition() -> None:
    producer = FakeProducer(partitions=4)
    records = _records(42)
    last = max(i for i, r in enumerate(records) if r.topic == RELEASES)
    # The last release carries the batch's quota count.
    records[last] = records[last]._replace(headers=(("fedscreen-quota", b"{}"),))
    acks = await BatchPublisher(producer).publish(records, 6)
    assert producer.headers[-1] == [("fedscreen-quota", b"{}")]  # queued, with its header
    assert all(h == [] for h in producer.headers[:-1])
    publishing = asyncio.ensure_future(acks)
    await asyncio.sleep(0.01)
    assert not publishing.done()  # waits for the broker's acknowledgements
    for ack in producer.acks:
        ack.set_result(None)
    await publishing
    assert [(topic, partition) for topic, partition, _ in producer.sent] == [
        (DECISIONS, 2),  # 6 modulo the topic's 4 partitions
        (RELEASES, 2),
    ]
    for topic, _, batch in producer.sent:
        assert batch == [(r.key, r.value) for r in records if r.topic == topic]  # in order


async def test_a_full_batch_is_sent_and_another_started() -> None:
    producer = FakeProducer(partitions=1, batch_bytes=4_096)
    records = [Output(DECISIONS, f"e{i}".encode(), b"x" * 1_000) for i in range(10)]
    publishing = asyncio.ensure_future(await BatchPublisher(producer).publish(records, 0))
    await asyncio.sleep(0.01)
    for ack in producer.acks:
        ack.set_result(None)
    await publishing
    assert len(producer.sent) > 1
    assert [r for _, _, batch in producer.sent for r in batch] == [
        (r.key, r.value) for r in records
    ]


async def test_an_unacknowledged_batch_fails_the_publish() -> None:
    producer = FakeProducer(partitions=2)
    publishing = asyncio.ensure_future(await BatchPublisher(producer).publish(_records(10), 1))
    await asyncio.sleep(0.01)
    producer.acks[0].set_exception(ConnectionError("broker gone"))
    for ack in producer.acks[1:]:
        ack.set_result(None)
    with pytest.raises(ConnectionError):
        await publishing

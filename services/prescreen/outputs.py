"""Publish a decided batch's records (decisions and releases) as one record batch per
topic, in the batch's partition.

A batch of about 42 candidates makes about 70 records. Sent one by one through faust's
producer each cost a future, a partitioner call (murmur2, in Python) and an accumulator
append; here the whole batch is one ``send_batch`` per topic
(services/kernel/kafka/batches.py). Every record of a batch goes to the batch's own
partition (that of its pending record and fragments): keys stay what they were (event
id, decision id), only the partition is the batch's rather than the key's hash, which
no consumer relies on (a candidate has exactly one decision, and a copy written again
after a crash lands in the same partition as the first).

:meth:`BatchPublisher.publish` returns once the records are queued, in order behind
every batch queued before (the quota count a release carries relies on that), with
the acknowledgement to await: the joiner records a batch decided only after its
outputs are durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import NamedTuple

from aiokafka import AIOKafkaProducer

from services.kernel.kafka.batches import Record, send_batched


class Output(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class BatchPublisher:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partitions: dict[str, int] = {}

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = len(await self.producer.partitions_for(topic))
            self._partitions[topic] = count
        return count

    async def publish(self, outputs: Sequence[Output], partition: int) -> Awaitable[None]:
        """Queue every output for ``partition`` of its topic (modulo the topic's partition
        count, should a topic have been created with fewer), in order; returns what
        resolves once all are acknowledged."""
        records = [
            Record(
                o.topic,
                partition % await self._partition_count(o.topic),
                o.key,
                o.value,
                o.headers,
            )
            for o in outputs
        ]
        acks = await send_batched(self.producer, records)
        return _all(acks)


async def _all(acks: Sequence[Awaitable[object]]) -> None:
    await asyncio.gather(*acks)

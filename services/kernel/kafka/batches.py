"""Send many records as one record batch per topic and partition.

aiokafka's ``send`` costs a future, a partitioner call and an accumulator append per
record (12-13 µs apiece on the bench machine, measured); a ``BatchBuilder`` filled by
hand costs an append per record and one ``send_batch`` per partition. Services that
write many records at once (prescreen's decisions and releases, intake's customer
changelog) use this, and wait for the acknowledgements the way they waited for a
flush.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer


class Record(NamedTuple):
    topic: str
    partition: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


async def send_batched(
    producer: AIOKafkaProducer, records: Sequence[Record]
) -> list[Awaitable[Any]]:
    """Queue every record, in order within its topic and partition; the returned
    futures resolve once the broker has each record batch (and raise what the producer
    raises if it does not)."""
    grouped: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        grouped.setdefault((record.topic, record.partition), []).append(record)
    acks: list[Awaitable[Any]] = []
    for (topic, partition), group in grouped.items():
        builder = producer.create_batch()
        for record in group:
            if _append(builder, record) is None:
                # Full (the producer's max_batch_size): send what it holds, start another.
                acks.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
                if _append(builder, record) is None:
                    raise ValueError(f"a {len(record.value)}-byte record exceeds a batch")
        acks.append(await producer.send_batch(builder, topic, partition=partition))
    return acks


def _append(builder: Any, record: Record) -> Any:
    return builder.append(
        key=record.key, value=record.value, timestamp=None, headers=list(record.headers)
    )

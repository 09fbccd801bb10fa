"""Consumer lag on /metrics (``fedscreen_consumer_lag``): per assigned partition, the
records between the consumer's position and the partition's end.

The end offsets come from the consumer's own fetch responses (its highwater marks),
so sampling sends nothing to the brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.kernel.metrics import CONSUMER_LAG

LAG_INTERVAL_S = 5.0

Sample = tuple[str, int, int]
"""(topic, partition, lag)"""


def publish(
    service: str, samples: Iterable[Sample], previous: set[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Set the gauge for these partitions; drop the ones no longer assigned, so a
    partition that moved to another instance does not report a frozen lag here."""
    current: set[tuple[str, int]] = set()
    for topic, partition, lag in samples:
        CONSUMER_LAG.labels(service=service, topic=topic, partition=str(partition)).set(lag)
        current.add((topic, partition))
    for topic, partition in previous - current:
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(service, topic, str(partition))
    return current


async def aiokafka_samples(consumer: AIOKafkaConsumer) -> list[Sample]:
    samples: list[Sample] = []
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is None:
            continue  # nothing fetched from it yet
        with contextlib.suppress(Exception):  # revoked between the two calls
            samples.append((tp.topic, tp.partition, max(0, end - await consumer.position(tp))))
    return samples


def faust_samples(consumer: object, topics: Collection[str]) -> list[Sample]:
    """faust's consumer: its highwater marks and the last offset it read (not +1), for
    ``topics`` only: faust also assigns itself its tables' changelogs, which it reads
    only to recover, so their "lag" grows with every write and means nothing."""
    samples: list[Sample] = []
    read: dict[TopicPartition, int | None] = getattr(consumer, "_read_offset", {})
    for tp in consumer.assignment():  # type: ignore[attr-defined]
        if tp.topic not in topics:
            continue
        try:
            end = consumer.highwater(tp)  # type: ignore[attr-defined]
        except Exception:
            continue
        if end is None:
            continue
        last = read.get(tp)
        position = 0 if last is None else last + 1
        samples.append((tp.topic, tp.partition, max(0, end - position)))
    return samples


async def watch_lag(
    service: str,
    sample: Callable[[], Awaitable[list[Sample]]],
    interval_s: float = LAG_INTERVAL_S,
) -> None:
    """Forever: every ``interval_s``, publish what ``sample`` returns."""
    previous: set[tuple[str, int]] = set()
    while True:
        await asyncio.sleep(interval_s)
        previous = publish(service, await sample(), previous)

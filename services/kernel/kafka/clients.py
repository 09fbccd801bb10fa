"""aiokafka producers and consumers configured from :class:`KafkaSettings`."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.kernel.config import KafkaSettings


def make_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    # Idempotence stays off: the embedded broker has no InitProducerId, and every
    # consumer de-duplicates by key anyway (decision ids, batch ids, webhook ids).
    kwargs: dict[str, Any] = {
        **settings.aiokafka_kwargs(),
        "enable_idempotence": False,
        "acks": "all",
        "linger_ms": 2,
        "max_batch_size": 1_048_576,
        "max_request_size": settings.max_message_bytes + 65_536,
        "request_timeout_ms": 30_000,
    }
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


IDLE_FETCH_WAIT_MS = 500
"""For consumers that mostly wait (rollouts, readiness, training replies): short fetch
waits there only add broker load."""


def make_consumer(
    settings: KafkaSettings,
    *topics: str,
    group_id: str | None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    kwargs: dict[str, Any] = {
        **settings.aiokafka_kwargs(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": settings.max_message_bytes * 4,
        "fetch_max_bytes": settings.max_message_bytes * 16,
        "session_timeout_ms": int(settings.session_timeout_s * 1000),
        "heartbeat_interval_ms": int(settings.heartbeat_interval_s * 1000),
        "rebalance_timeout_ms": int(settings.rebalance_timeout_s * 1000),
        "max_poll_interval_ms": 300_000,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(*topics, **kwargs)


async def partitions_of(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float | None = None
) -> list[int]:
    """The topic's partitions, waiting until it exists (raises TimeoutError after
    ``timeout_s``, if given).

    Call it on a started consumer before ``assign``: once assigned, a consumer keeps
    metadata for its assigned topics only, and ``partitions_for_topic`` then answers
    None for every other topic (intake once read no pending records back for that)."""
    async with asyncio.timeout(timeout_s):
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            await asyncio.sleep(0.2)
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
    return sorted(partitions)

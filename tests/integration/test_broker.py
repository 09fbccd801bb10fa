"""The embedded broker runner against the real Tansu binary."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.kernel.kafka.admin import ensure_topics
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.chunks import Reassembler, send_large
from services.kernel.kafka.clients import make_consumer, make_producer
from services.kernel.kafka.topics import ROLLOUT_BANK, all_topics

pytestmark = pytest.mark.integration


async def test_every_topic_exists_with_equal_partitions(broker: EmbeddedBroker) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        expected = {spec.name for spec in all_topics(["repayments", "payments"])}
        assert expected <= set(await admin.list_topics())
        described = await admin.describe_topics(sorted(expected))
        assert {len(t["partitions"]) for t in described} == {4}
    finally:
        await admin.close()
    # idempotent: running it again creates nothing and accepts the layout
    assert await ensure_topics(broker.settings(), all_topics(["repayments", "payments"])) == []


async def test_a_message_larger_than_the_limit_travels_in_chunks(broker: EmbeddedBroker) -> None:
    settings = broker.settings()
    payload = os.urandom(3_500_000)
    producer = make_producer(settings)
    await producer.start()
    try:
        await send_large(producer, ROLLOUT_BANK, b"bank", payload, limit=900_000)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = make_consumer(settings, ROLLOUT_BANK, group_id=None)
    await consumer.start()
    reassembler = Reassembler()
    whole = None
    try:
        async with asyncio.timeout(20):
            while whole is None:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        whole = reassembler.feed(record.partition, record.value, record.headers)
    finally:
        await consumer.stop()
    assert whole == payload


async def test_broker_stops_cleanly_and_frees_its_port() -> None:
    embedded = EmbeddedBroker(partitions=2)
    await embedded.start()
    process = embedded.process
    assert process is not None and process.poll() is None
    await asyncio.to_thread(embedded.stop)
    assert process.poll() is not None

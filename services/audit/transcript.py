"""The topics an adversary can read, read back whole: the bank reads its own topics and
the partners' replies; a Kafka principal or a partner with an ACL hole reads more.
Chunked messages (training, PSI, bundles) are reassembled."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from services.kernel.config import KafkaSettings
from services.kernel.kafka.chunks import Reassembler
from services.kernel.kafka.clients import IDLE_FETCH_WAIT_MS, make_consumer, partitions_of
from services.kernel.kafka.window import Record


async def read_topic(
    kafka: KafkaSettings, topic: str, *, timeout_s: float = 120.0, idle_s: float = 1.5
) -> list[Record]:
    """Every record on the topic now, from the beginning."""
    reader = make_consumer(kafka, group_id=None, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
    await reader.start()
    try:
        async with asyncio.timeout(timeout_s):
            tps = [TopicPartition(topic, p) for p in await partitions_of(reader, topic)]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            records: list[Record] = []
            # The embedded broker can report a partition's end before its last records
            # are readable: read on until nothing new has come for a while.
            loop = asyncio.get_running_loop()
            quiet_since = loop.time()
            while loop.time() - quiet_since < idle_s:
                batches = await reader.getmany(*tps, timeout_ms=200)
                for tp, batch in batches.items():
                    for r in batch:
                        if r.value is not None:
                            key, headers = r.key or b"", tuple(r.headers or ())
                            records.append(
                                Record(topic, tp.partition, key, r.value, headers, r.offset)
                            )
                if any(batches.values()):
                    quiet_since = loop.time()
            return records
    finally:
        await reader.stop()


async def read_messages(kafka: KafkaSettings, topic: str) -> list[bytes]:
    """Every whole message on the topic (chunks reassembled), in partition order."""
    reassembler = Reassembler()
    out = []
    for record in await read_topic(kafka, topic):
        whole = reassembler.feed(record.partition, record.value, list(record.headers))
        if whole is not None:
            out.append(whole)
    return out

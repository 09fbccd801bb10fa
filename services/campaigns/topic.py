"""Read the campaign configuration and the releases back from Kafka, and publish a new
configuration version."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime

from aiokafka import TopicPartition
from pydantic import ValidationError

from schemas import CampaignConfig, CampaignPolicy, QuotaCounts
from services.kernel.config import KafkaSettings
from services.kernel.kafka.clients import (
    IDLE_FETCH_WAIT_MS,
    make_consumer,
    make_producer,
    partitions_of,
)
from services.kernel.kafka.topics import CAMPAIGN_CONFIG, CAMPAIGN_CONFIG_KEY, RELEASES

Headers = tuple[tuple[str, bytes], ...]
TOPIC_WAIT_S = 30.0
QUIET_MS = 500


async def read_topic(kafka: KafkaSettings, topic: str) -> list[bytes]:
    """The value of every record on the topic now, all partitions (interleaved)."""
    return [value for value, _ in await read_records(kafka, topic)]


async def read_records(kafka: KafkaSettings, topic: str) -> list[tuple[bytes, Headers]]:
    """Value and headers of every record on the topic now, each partition in order
    (partitions interleaved)."""
    consumer = make_consumer(kafka, group_id=None, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for p in await partitions_of(consumer, topic, timeout_s=TOPIC_WAIT_S)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        values: list[tuple[bytes, Headers]] = []
        # The embedded broker reports a partition's end as its last record batch's base
        # offset + 1, short of the batch's other records: read on past the reported
        # ends until a fetch brings nothing.
        while True:
            batches = await consumer.getmany(timeout_ms=QUIET_MS)
            for records in batches.values():
                values += [(r.value, tuple(r.headers or ())) for r in records if r.value]
            if not batches and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
        return values
    finally:
        await consumer.stop()


async def current_config(kafka: KafkaSettings) -> CampaignConfig | None:
    """The newest valid configuration on the topic (the services apply the same)."""
    newest: CampaignConfig | None = None
    for value in await read_topic(kafka, CAMPAIGN_CONFIG):
        try:
            config = CampaignConfig.model_validate_json(value)
        except ValidationError:
            continue  # the services ignore it too
        if newest is None or config.version > newest.version:
            newest = config
    return newest


async def publish(kafka: KafkaSettings, config: CampaignConfig) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(
            CAMPAIGN_CONFIG, key=CAMPAIGN_CONFIG_KEY, value=config.model_dump_json().encode()
        )
    finally:
        await producer.stop()


@dataclass
class Usage:
    """Releases on campaign.released.v1 per campaign (each decision counted once)."""

    total: Counter[str] = field(default_factory=Counter)
    by_day: Counter[tuple[str, date]] = field(default_factory=Counter)
    counted: Counter[str] = field(default_factory=Counter)
    """prescreen's own count, the one its quotas apply (the last count each partition's
    releases carry, summed): equal to ``total`` unless a release was counted twice or
    not at all."""


async def release_usage(kafka: KafkaSettings, campaigns: list[CampaignPolicy]) -> Usage:
    """What each campaign has released: in total, and per day in its own time zone."""
    zones = {c.campaign_id: c for c in campaigns}
    usage = Usage()
    seen: set[str] = set()
    last_counts: dict[int, QuotaCounts] = {}
    for value, headers in await read_records(kafka, RELEASES):
        with contextlib.suppress(ValidationError):
            if (counts := QuotaCounts.in_headers(headers)) is not None:
                last_counts[counts.partition] = counts
        try:
            release = json.loads(value)
            decision_id, campaign_id = release["decision_id"], release["campaign_id"]
            released_at = datetime.fromisoformat(release["released_at"])
        except (ValueError, KeyError, TypeError):
            continue
        if decision_id in seen:
            continue  # a copy written again after a crash is the same release
        seen.add(decision_id)
        usage.total[campaign_id] += 1
        campaign = zones.get(campaign_id)
        if campaign is not None:
            usage.by_day[(campaign_id, campaign.day_of(released_at))] += 1
    for counts in last_counts.values():
        usage.counted.update(counts.totals)
    return usage

"""Model bundles travel as versioned events on compacted topics.

Every instance of a service must see every bundle (not a share of partitions), so the
watcher reads its topic from the beginning with no consumer group and keeps the
bundles it has seen by version; services hot-swap to the newest and keep older ones
for batches still in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from schemas import BankBundle, ModelReady, PartnerBundle
from services.kernel.config import KafkaSettings
from services.kernel.kafka.chunks import ChunkError, Reassembler, send_large
from services.kernel.kafka.clients import (
    IDLE_FETCH_WAIT_MS,
    make_consumer,
    make_producer,
    partitions_of,
)
from services.kernel.kafka.topics import MODEL_READY

log = logging.getLogger(__name__)

BundleT = TypeVar("BundleT", BankBundle, PartnerBundle)


async def publish_bundle(
    settings: KafkaSettings, topic: str, key: str, bundle: BankBundle | PartnerBundle
) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        await send_large(
            producer,
            topic,
            key.encode(),
            bundle.model_dump_json().encode(),
            limit=settings.max_message_bytes - 4096,
        )
        await producer.flush()
    finally:
        await producer.stop()


async def follow_topic(
    settings: KafkaSettings,
    topic: str,
    handle: Callable[[int, bytes | None, list[tuple[str, bytes]]], None],
    caught_up: asyncio.Event | None = None,
) -> None:
    """Read every partition of a topic from the beginning, forever, with no consumer
    group: every instance of every service sees every message. ``caught_up`` is set once
    everything that was on the topic at the start has been handled."""
    consumer = make_consumer(
        settings, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=IDLE_FETCH_WAIT_MS
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    handle(record.partition, record.value, list(record.headers or []))
            if (
                caught_up is not None
                and not caught_up.is_set()
                and all([await consumer.position(tp) >= ends[tp] for tp in tps])
            ):
                caught_up.set()
    finally:
        await consumer.stop()


PRESCREEN_PARTY = "prescreen"


class ReadinessBoard:
    """Which party has loaded which model version (``model.ready.v1``)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.ready: set[tuple[str, str]] = set()
        self.changed = asyncio.Event()

    def all_ready(self, parties: list[str], version: str) -> bool:
        return all((p, version) in self.ready for p in parties)

    async def run(self) -> None:
        def handle(_: int, value: bytes | None, __: list[tuple[str, bytes]]) -> None:
            try:
                message = ModelReady.model_validate_json(value or b"")
            except ValidationError as exc:
                log.error("ignoring unusable readiness message: %s", exc)
                return
            self.ready.add((message.party, message.model_version))
            self.changed.set()

        await follow_topic(self.settings, MODEL_READY, handle)


async def announce_ready(producer: AIOKafkaProducer, party: str, version: str) -> None:
    message = ModelReady(party=party, model_version=version, ready_at=datetime.now(UTC))
    # Keyed by party and version on a compacted topic: every announcement survives, so
    # an intake that starts much later still learns which versions are servable.
    await producer.send_and_wait(
        MODEL_READY, key=f"{party}@{version}".encode(), value=message.model_dump_json().encode()
    )


class BundleWatcher(Generic[BundleT]):
    """Follows a rollout topic; ``latest`` is the newest bundle, ``get`` finds any version."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        model: type[BundleT],
        *,
        on_bundle: Callable[[BundleT], None] | None = None,
        on_refused: Callable[[int, bytes, str], None] | None = None,
        check: Callable[[BundleT], None] | None = None,
        keep: int = 4,
    ) -> None:
        """``check`` vets every bundle before anything else, a republished version too
        (raising ValueError refuses it); ``on_refused(partition, value, why)`` hears of
        every bundle that could not be read or adopted (a partner dead-letters them: a
        forged bundle is evidence)."""
        self.on_refused = on_refused
        self.check: Callable[[BundleT], None] | None = check
        self.settings = settings
        self.topic = topic
        self.model: type[BundleT] = model
        self.on_bundle: Callable[[BundleT], None] | None = on_bundle
        self.keep = keep
        self.bundles: dict[str, BundleT] = {}
        self.latest: BundleT | None = None
        self.caught_up = asyncio.Event()
        """Set once every bundle published before the watcher started has been seen: a
        restarted service waits for it before it judges inputs by their model version."""

    def get(self, version: str) -> BundleT | None:
        return self.bundles.get(version)

    def accept(self, bundle: BundleT) -> None:
        if self.check is not None:
            self.check(bundle)
        known = self.bundles.get(bundle.model_version)
        if known is not None:
            if bundle.created_at > known.created_at:
                # The same version published again (a rollback): nothing to load, but it
                # is now the newest, so it becomes the one to serve.
                self.bundles[bundle.model_version] = bundle
                if self.latest is None or bundle.created_at >= self.latest.created_at:
                    self.latest = bundle
                log.info("model bundle %s re-activated from %s", bundle.model_version, self.topic)
            return
        if self.on_bundle is not None:
            self.on_bundle(bundle)  # may raise: a bundle that cannot be loaded is not adopted
        self.bundles[bundle.model_version] = bundle
        if self.latest is None or bundle.created_at >= self.latest.created_at:
            self.latest = bundle
        for version in sorted(self.bundles, key=lambda v: self.bundles[v].created_at)[: -self.keep]:
            del self.bundles[version]
        log.info("model bundle %s adopted from %s", bundle.model_version, self.topic)

    async def run(self) -> None:
        reassembler = Reassembler()

        def handle(partition: int, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
            whole: bytes | None = value
            try:
                whole = reassembler.feed(partition, value, headers)
                if whole is None:
                    return
                self.accept(self.model.model_validate_json(whole))
            except (ChunkError, ValidationError, ValueError) as exc:
                log.error("ignoring unusable bundle on %s: %s", self.topic, exc)
                if self.on_refused is not None:
                    self.on_refused(partition, whole or b"", str(exc))

        await follow_topic(self.settings, self.topic, handle, self.caught_up)

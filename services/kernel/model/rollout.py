"""Model bundles travel as versioned events on compacted topics.

Every instance of a service must see every bundle (not a share of partitions), so the
watcher reads its topic from the beginning with no consumer group and keeps the
bundles it has seen by version; services hot-swap to the newest and keep older ones
for batches still in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from aiokafka import AIOKafkaProducer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from schemas import BankBundle, ModelReady, PartnerBundle
from services.kernel.config import KafkaSettings
from services.kernel.crypto.signing import PartnerKeyRegistry, SignatureError, signed
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
READY_REFRESH_S = 10.0
"""How often an instance announces again what it serves."""
READY_TTL_S = 30.0
"""How long an announcement counts: three refreshes, so one lost or late refresh on a
busy broker does not drop a live instance, while one killed without withdrawing stops
holding up a rollout half a minute after its last refresh."""


def instance_id(configured: str = "") -> str:
    """The configured id, else host name and process id: unique on one machine and across
    pods. A stable id (a StatefulSet's pod name, the harness's worker name) lets a
    restarted instance replace its own announcement at once instead of leaving one to
    expire."""
    return configured or f"{socket.gethostname()}-{os.getpid()}"


def ready_key(party: str, instance: str) -> bytes:
    return f"{party}/{instance}".encode()


class ReadinessBoard:
    """Which instance of which party serves which model versions (``model.ready.v1``).

    Only announcements signed by their party's key count (``signers``: every partner's
    registered key and prescreen's): a Kafka principal that can write the topic, a
    partner among them, cannot announce for another party nor withdraw another party's
    instance. Per instance, the newest announcement wins (a replayed older one changes
    nothing); one past its ``expires_at`` or withdrawn no longer counts as live."""

    def __init__(
        self,
        settings: KafkaSettings,
        signers: PartnerKeyRegistry,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.signers = signers
        self.clock = clock
        self.instances: dict[tuple[str, str], ModelReady] = {}
        self.changed = asyncio.Event()

    def offer(self, value: bytes | None) -> bool:
        """Take one message from the topic; whether it changed the board."""
        if value is None:
            return False  # a tombstone is unsigned: it withdraws nothing
        try:
            message = ModelReady.model_validate_json(value)
            self.signers.verify_signed(message.party, message.signing_bytes(), message.signature)
        except ValidationError as exc:
            log.warning("ignoring unusable readiness message: %s", exc)
            return False
        except SignatureError as exc:
            log.error("ignoring a readiness announcement for %s: %s", _party_of(value), exc)
            return False
        key = (message.party, message.instance)
        known = self.instances.get(key)
        if known is not None and known.announced_at > message.announced_at:
            return False
        self.instances[key] = message
        self.changed.set()
        return True

    def live(self, party: str) -> list[ModelReady]:
        """The party's instances that announced themselves and neither withdrew nor expired."""
        now = self.clock()
        return [
            m
            for (p, _), m in self.instances.items()
            if p == party and not m.withdrawn and m.expires_at > now
        ]

    def waiting_for(self, parties: list[str], version: str) -> list[str]:
        """What keeps ``version`` from being ready: a party with no live instance, or
        ``party/instance`` for a live instance that does not serve it yet."""
        waiting = []
        for party in parties:
            live = self.live(party)
            if not live:
                waiting.append(party)
            waiting.extend(f"{party}/{m.instance}" for m in live if version not in m.model_versions)
        return waiting

    def all_ready(self, parties: list[str], version: str) -> bool:
        """Every party has a live instance, and every live instance serves ``version``."""
        return not self.waiting_for(parties, version)

    async def run(self) -> None:
        def handle(_: int, value: bytes | None, __: list[tuple[str, bytes]]) -> None:
            self.offer(value)

        await follow_topic(self.settings, MODEL_READY, handle)


async def withdraw(announcer: ReadinessAnnouncer, timeout_s: float = 5.0) -> None:
    """Withdraw on the way out, bounded: a broker that cannot be reached must not hold
    up the stop (the announcement then expires instead)."""
    try:
        await asyncio.wait_for(announcer.withdraw(), timeout_s)
    except Exception:
        log.warning("could not withdraw the readiness announcement", exc_info=True)


def _party_of(value: bytes) -> str:
    try:
        return str(json.loads(value).get("party", "?"))
    except (ValueError, AttributeError):
        return "?"


class ReadinessAnnouncer:
    """One instance's announcements: what it serves, at once when that changes and again
    every ``refresh_s``; withdrawn when it stops."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        party: str,
        instance: str,
        key: Ed25519PrivateKey,
        *,
        refresh_s: float = READY_REFRESH_S,
        ttl_s: float = READY_TTL_S,
    ) -> None:
        self.producer = producer
        self.party = party
        self.instance = instance
        self.key = key
        self.refresh_s = refresh_s
        self.ttl_s = ttl_s
        self.versions: list[str] = []
        self.withdrawn = False
        self._lock = asyncio.Lock()

    def message(self, *, withdrawn: bool = False) -> ModelReady:
        now = datetime.now(UTC)
        return signed(
            ModelReady(
                party=self.party,
                instance=self.instance,
                model_versions=[] if withdrawn else self.versions,
                withdrawn=withdrawn,
                announced_at=now,
                expires_at=now + timedelta(seconds=self.ttl_s),
            ),
            self.key,
        )

    async def _send(self, *, withdraw: bool = False) -> None:
        # The message is made under the lock: compaction keeps the last one written, so
        # a refresh made before a change must not be written after it.
        async with self._lock:
            if self.withdrawn:
                return  # stopping: nothing may follow the withdrawal
            self.withdrawn = withdraw
            # Keyed per instance on a compacted topic: the latest word of every instance
            # survives, so an intake that starts much later still learns who serves what.
            await self.producer.send_and_wait(
                MODEL_READY,
                key=ready_key(self.party, self.instance),
                value=self.message(withdrawn=withdraw).model_dump_json().encode(),
            )

    async def announce(self, versions: Iterable[str]) -> None:
        """Now serving exactly ``versions``, oldest first (the schema's limit keeps the
        newest 32; a service keeps 4)."""
        self.versions = list(dict.fromkeys(versions))[-32:]
        await self._send()

    async def refresh(self) -> None:
        """Announce again every ``refresh_s``, so the announcement never expires while the
        instance lives. Runs until cancelled."""
        while True:
            await asyncio.sleep(self.refresh_s)
            if self.versions:
                try:
                    await self._send()
                except Exception:  # a broker hiccup: the next refresh tries again
                    log.warning("readiness refresh failed", exc_info=True)

    async def withdraw(self) -> None:
        """This instance stops: it no longer counts towards any rollout, and announces
        nothing more."""
        await self._send(withdraw=True)


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

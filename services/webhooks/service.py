"""The webhooks service: consume releases, deliver them, commit only what is finished.

At least once: a partition's offset is committed only up to its lowest release that is
not finished (delivered to all its endpoints, or dead-lettered). Releases in flight at a
crash, a shutdown or a rebalance are delivered again later; receivers de-duplicate by
``webhook-id`` (the decision id).

The subscriptions are re-read at run time (``reload.py``): each release goes to the
endpoints subscribed when it is consumed, and each attempt to the endpoint as it is then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas import Release
from services.kernel.config import KafkaSettings
from services.kernel.kafka.clients import make_consumer, make_producer
from services.kernel.kafka.dlq import DeadLetters, oversized
from services.kernel.kafka.lag import aiokafka_samples, watch_lag
from services.kernel.kafka.topics import RELEASES
from services.kernel.metrics import MESSAGES_IN, start_http
from services.kernel.readiness import report_readiness
from services.webhooks.delivery import Deliverer, Unsubscribed
from services.webhooks.payload import webhook_body
from services.webhooks.progress import PartitionProgress
from services.webhooks.reload import SubscriptionsWatcher
from services.webhooks.retry_log import RetryLog
from services.webhooks.settings import WebhooksSettings
from services.webhooks.subscriptions import Endpoint, Subscriptions

log = logging.getLogger(__name__)

SERVICE = "webhooks"
POLL_MS = 200

# aiokafka ships no type hints, so its records and partitions are Any here.
Record = Any
Partition = Any

T = TypeVar("T")


class WebhookService:
    def __init__(
        self,
        kafka: KafkaSettings,
        settings: WebhooksSettings,
        subscriptions: Subscriptions,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.watcher = SubscriptionsWatcher(settings.subscriptions_file, subscriptions)
        self._progress: dict[Partition, PartitionProgress] = {}
        self._tasks: dict[Partition, set[asyncio.Task[None]]] = {}
        self._failure: BaseException | None = None
        self._ready = False
        self._retry_log = RetryLog(settings.retry_log_interval_s)
        # Set in run(); None outside it.
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters: DeadLetters | None = None
        self._deliverer: Deliverer | None = None

    @property
    def subscriptions(self) -> Subscriptions:
        """The subscriptions in force (the last good content of the file)."""
        return self.watcher.subscriptions

    @property
    def ready(self) -> bool:
        return self._ready

    def not_ready_reason(self) -> str | None:
        if self._ready:
            return None
        if self._consumer is None:
            return f"connecting to Kafka ({self.kafka.bootstrap_servers})"
        return "stopping"

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver releases until ``stop`` is set (or a fatal error), then shut down."""
        self._progress.clear()
        self._tasks.clear()
        self._failure = None
        async with contextlib.AsyncExitStack() as stack:
            metrics = await start_http(
                self.settings.metrics_port, self.not_ready_reason, self.settings.metrics_host
            )
            if metrics is not None:
                stack.push_async_callback(metrics.cleanup)
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self.settings.concurrency)
                )
            )
            producer = make_producer(self.kafka)
            stack.push_async_callback(producer.stop)
            await producer.start()
            consumer = make_consumer(self.kafka, group_id=self.settings.group_id)
            consumer.subscribe([RELEASES], listener=_Rebalance(self))
            stack.push_async_callback(consumer.stop)
            await consumer.start()

            self._consumer = consumer
            stack.callback(self._detach)
            self._dead_letters = DeadLetters(producer, SERVICE, self.kafka.max_message_bytes)
            self._deliverer = Deliverer(session, self.settings, retry_log=self._retry_log)
            self._ready = True
            log.info(
                "webhooks: consuming %s as group %s, %d endpoint(s)",
                RELEASES,
                self.settings.group_id,
                len(self.subscriptions.endpoints),
            )
            lag = asyncio.create_task(watch_lag(SERVICE, lambda: aiokafka_samples(consumer)))
            stack.callback(lag.cancel)
            readiness = asyncio.create_task(report_readiness(SERVICE, self.not_ready_reason))
            stack.callback(readiness.cancel)
            watch = self.watcher.watch(self.settings.subscriptions_reload_s)
            reload = asyncio.create_task(watch)
            stack.callback(reload.cancel)
            try:
                await self._consume(stop)
            finally:
                self._ready = False
                await self._drain()
        if self._failure is not None:
            raise RuntimeError(f"webhooks stopped: {self._failure}") from self._failure

    def _detach(self) -> None:
        self._consumer = None
        self._dead_letters = self._deliverer = None

    # -- consuming -------------------------------------------------------------------

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = self._require(self._consumer)
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + self.settings.commit_interval_s
        while not stop.is_set() and self._failure is None:
            self._apply_backpressure(consumer)
            batch = await consumer.getmany(timeout_ms=POLL_MS)
            for partition, records in batch.items():
                for record in records:
                    self._accept(partition, record)
            self._retry_log.flush()
            if loop.time() >= next_commit:
                await self._commit(list(self._progress))
                next_commit = loop.time() + self.settings.commit_interval_s

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        # Pausing (rather than not polling) keeps the consumer in its group: aiokafka
        # counts time between polls against max_poll_interval.
        pending = sum(progress.pending for progress in self._progress.values())
        if pending >= self.settings.max_pending:
            consumer.pause(*consumer.assignment())
        elif paused := consumer.paused():
            consumer.resume(*paused)

    def _accept(self, partition: Partition, record: Record) -> None:
        MESSAGES_IN.labels(service=SERVICE, topic=RELEASES).inc()
        progress = self._progress.setdefault(partition, PartitionProgress())
        progress.started(record.offset)
        if (too_large := oversized(record.value, self.kafka.max_message_bytes)) is not None:
            self._spawn(
                partition, progress, record, self._dead_letter(record, "oversized", too_large, 1)
            )
            return
        try:
            release = Release.model_validate_json(record.value or b"")
        except ValidationError as exc:
            self._spawn(partition, progress, record, self._reject_invalid(record, exc))
            return
        endpoints = self.subscriptions.for_campaign(release.campaign_id)
        if not endpoints:
            log.debug("release %s: no endpoint for %s", release.decision_id, release.campaign_id)
            progress.finished(record.offset)
            return
        self._spawn(partition, progress, record, self._deliver(record, release, endpoints))

    def _spawn(
        self,
        partition: Partition,
        progress: PartitionProgress,
        record: Record,
        work: Coroutine[Any, Any, None],
    ) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        tasks = self._tasks.setdefault(partition, set())
        tasks.add(task)
        offset: int = record.offset

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if task.cancelled():
                return  # abandoned: left uncommitted, so it is redelivered
            if (exc := task.exception()) is not None:
                # Only Kafka failing to take a dead letter gets here. Neither skipping
                # the release nor stalling its partition is acceptable, so stop; a
                # restart redelivers everything uncommitted.
                log.error("webhooks: giving up on %s@%d: %r", RELEASES, offset, exc)
                self._failure = self._failure or exc
                return
            progress.finished(offset)

        task.add_done_callback(done)

    # -- the work per release ---------------------------------------------------------

    async def _deliver(self, record: Record, release: Release, endpoints: list[Endpoint]) -> None:
        deliverer = self._require(self._deliverer)
        body = webhook_body(release)

        def subscriber(name: str) -> Endpoint | None:
            return self.subscriptions.subscriber(name, release.campaign_id)

        outcomes = await asyncio.gather(
            *(deliverer.follow(e.name, subscriber, release.decision_id, body) for e in endpoints)
        )
        for outcome in outcomes:
            if isinstance(outcome, Unsubscribed):
                # Not a dead letter: nothing failed, and a replay would not reach it.
                log.info("release %s not delivered: %s", release.decision_id, outcome.describe())
                continue
            if outcome.delivered:
                log.debug("release %s delivered to %s", release.decision_id, outcome.endpoint.name)
                continue
            # One dead letter per endpoint that gave up: the error names it, so a replay
            # can target it (the others de-duplicate by webhook-id anyway).
            await self._dead_letter(
                record, outcome.reason, outcome.describe(), attempts=outcome.attempts
            )

    async def _reject_invalid(self, record: Record, exc: ValidationError) -> None:
        error = f"not a {Release.SCHEMA_ID}: {exc.error_count()} error(s): " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        await self._dead_letter(record, "invalid-schema", error, attempts=1)

    async def _dead_letter(self, record: Record, reason: str, error: str, attempts: int) -> None:
        await self._require(self._dead_letters).send(record, reason, error, attempts=attempts)

    # -- committing -------------------------------------------------------------------

    async def _commit(self, partitions: Iterable[Partition]) -> None:
        consumer = self._require(self._consumer)
        progresses = {p: self._progress[p] for p in partitions if p in self._progress}
        offsets = {
            p: off for p, prog in progresses.items() if (off := prog.uncommitted()) is not None
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Typically a rebalance in progress: those partitions are committed on
            # revocation, the rest on the next interval.
            log.warning("webhooks: commit failed, will retry: %s", exc)
            return
        for partition, offset in offsets.items():
            progresses[partition].committed = offset

    async def _abandon(self, partitions: Iterable[Partition]) -> None:
        tasks = [task for p in partitions for task in self._tasks.pop(p, set())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def on_revoked(self, revoked: set[Partition]) -> None:
        """Before a rebalance: commit what is finished, abandon the rest to the next owner."""
        if self._consumer is None:
            return
        await self._commit(revoked)
        await self._abandon(revoked)
        for partition in revoked:
            self._progress.pop(partition, None)

    def on_assigned(self, assigned: set[Partition]) -> None:
        for partition in assigned:
            # Fetching restarts at the committed offset, so progress starts afresh.
            self._progress[partition] = PartitionProgress()
        log.info("webhooks: assigned %s", sorted(f"{p.topic}[{p.partition}]" for p in assigned))

    async def _drain(self) -> None:
        """Stop: let in-flight deliveries finish for a grace period, abandon the rest
        uncommitted, and commit what finished."""
        in_flight = [task for tasks in self._tasks.values() for task in tasks]
        if in_flight:
            log.info("webhooks: stopping, %d release(s) in flight", len(in_flight))
            await asyncio.wait(in_flight, timeout=self.settings.shutdown_grace_s)
        await self._abandon(list(self._tasks))
        if self._consumer is not None and self._consumer.assignment():
            await self._commit(list(self._progress))

    @staticmethod
    def _require(value: T | None) -> T:
        if value is None:
            raise RuntimeError("webhooks service is not running")
        return value


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, service: WebhookService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[Partition]) -> None:
        await self.service.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Partition]) -> None:
        self.service.on_assigned(assigned)

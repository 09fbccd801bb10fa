"""The faust-streaming application: one agent over the pending, fragment and
deadline topics (co-partitioned, keyed by batch id), three tables, one timer.

Timers may not write tables (faust needs the current event to pick a changelog
partition), so the timer publishes deadline ticks that the agent consumes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from schemas import BankBundle
from services.kernel.config import KafkaSettings
from services.kernel.crypto.paillier import load_private_keys
from services.kernel.crypto.signing import PartnerKeyRegistry
from services.kernel.kafka.clients import make_producer
from services.kernel.kafka.dlq import DeadLetters
from services.kernel.kafka.topics import DEADLINES, FRAGMENTS, PENDING, ROLLOUT_BANK
from services.kernel.metrics import MESSAGES_IN, start_http
from services.kernel.model.rollout import BundleWatcher
from services.kernel.model.scoring import BankScorer
from services.prescreen.joiner import Joiner, RejectedInputError, deadline_tick
from services.prescreen.settings import PrescreenSettings

log = logging.getLogger(__name__)
SERVICE = "prescreen"


def build_app(settings: PrescreenSettings, kafka: KafkaSettings) -> faust.App:
    try:
        private_keys = load_private_keys(settings.private_keys_dir)
    except ValueError:
        if not settings.allow_plaintext:
            raise
        private_keys = {}  # benchmark's crypto-off mode needs none
    registry = PartnerKeyRegistry.parse(settings.partner_keys)
    scorers: dict[str, BankScorer] = {}

    def adopt(bundle: BankBundle) -> None:
        if bundle.key_id not in private_keys and bundle.key_id != "plaintext":
            raise ValueError(f"no private key {bundle.key_id} for model {bundle.model_version}")
        scorers[bundle.model_version] = BankScorer(bundle)

    watcher = BundleWatcher(kafka, ROLLOUT_BANK, BankBundle, on_bundle=adopt)

    def bundle_for(version: str) -> tuple[BankBundle, BankScorer] | None:
        bundle = watcher.get(version)
        scorer = scorers.get(version)
        return (bundle, scorer) if bundle is not None and scorer is not None else None

    app = faust.App(
        settings.app_id,
        **kafka.faust_broker_kwargs(),
        store="memory://",
        web_enabled=False,
        processing_guarantee="at_least_once",
        datadir=str(settings.data_dir),
        table_cleanup_interval=3600.0,
    )
    inputs = app.topic(
        PENDING,
        FRAGMENTS,
        DEADLINES,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    deadlines = app.topic(DEADLINES, key_serializer="raw", value_serializer="raw")
    batches = app.Table("batches", default=None, partitions=kafka.partitions)
    decided = app.Table("decided", default=None, partitions=kafka.partitions)
    quota = app.Table("quota", default=None, partitions=kafka.partitions)
    state: dict[str, Any] = {"dlq": None, "ticked": set()}

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        # Buffered; faust flushes the producer before it commits the input offsets.
        return await app.producer.send(topic, key, value, None, None, None)

    joiner = Joiner(
        batches=batches,
        decided=decided,
        quota=quota,
        send=send,
        private_keys=private_keys,
        registry=registry,
        bundle_for=bundle_for,
        partitions=kafka.partitions,
        allow_plaintext=settings.allow_plaintext,
        orphan_fragment_s=settings.orphan_fragment_s,
        decided_retention_s=settings.decided_retention_s,
    )

    @app.agent(inputs)
    async def join(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            MESSAGES_IN.labels(service=SERVICE, topic=message.topic).inc()
            try:
                await joiner.handle(message.topic, message.partition, message.value)
            except RejectedInputError as exc:
                await state["dlq"].send_raw(
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                    value=message.value,
                    headers=list(message.headers or []),
                    reason=exc.reason,
                    error=str(exc),
                )

    @app.timer(settings.deadline_check_s)
    async def expire() -> None:
        ticked: set[str] = state["ticked"]
        due = joiner.expired(time.time())
        for batch_id in due:
            if batch_id not in ticked:
                await deadlines.send(key=batch_id.encode(), value=deadline_tick(batch_id))
                ticked.add(batch_id)
        ticked.intersection_update(batches.keys())

    def ready() -> bool:
        """A model is rolled out, partitions are assigned and tables are recovered."""
        consumer = getattr(app, "_consumer", None)
        return (
            watcher.latest is not None
            and consumer is not None
            and bool(consumer.assignment())
            and not app.rebalancing
        )

    @app.task
    async def side_services() -> None:
        producer = make_producer(kafka)
        await producer.start()
        state["dlq"] = DeadLetters(producer, SERVICE)
        await start_http(settings.metrics_port, ready)
        await watcher.run()

    return app

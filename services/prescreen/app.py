"""The faust-streaming application: one agent over the pending and fragment topics
(co-partitioned, keyed by batch id), four tables, one timer.

Timers may not write tables (faust needs the current event to pick a changelog
partition), so the timer publishes deadline ticks that the agent consumes, into the
batch's own fragment partition (see schemas.DeadlineTick for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import faust

from schemas import BankBundle
from services.kernel.campaigns import CampaignBoard
from services.kernel.config import KafkaSettings
from services.kernel.crypto.paillier import PLAINTEXT_KEY_ID, load_private_keys
from services.kernel.crypto.signing import PartnerKeyRegistry, load_signing_key
from services.kernel.kafka.clients import make_producer
from services.kernel.kafka.dlq import DeadLetters
from services.kernel.kafka.lag import Sample, faust_samples, watch_lag
from services.kernel.kafka.topics import FRAGMENTS, PENDING, ROLLOUT_BANK
from services.kernel.metrics import MESSAGES_IN, start_http
from services.kernel.model.rollout import (
    PRESCREEN_PARTY,
    BundleWatcher,
    ReadinessAnnouncer,
    instance_id,
    withdraw,
)
from services.kernel.model.scoring import BankScorer
from services.kernel.readiness import report_readiness
from services.prescreen import faust_patches
from services.prescreen.joiner import KIND_HEADER, TICK_KIND, Joiner, RejectedInputError
from services.prescreen.outputs import BatchPublisher, Output
from services.prescreen.quota import PartitionQuota, QuotaLedger
from services.prescreen.quota_log import read_counts
from services.prescreen.recovery import JoinerView, keep_recovering
from services.prescreen.settings import PrescreenSettings

log = logging.getLogger(__name__)
SERVICE = "prescreen"
TICK_RESEND_S = 10.0
"""A batch still undecided this long after its deadline tick was sent gets another."""
TABLES = ("batches", "pending", "decided", "quota")
"""faust tables, each with a compacted changelog topic ``<app id>-<table>-changelog``
(pre-created in k8s/base/kafka/topics.yaml, granted in users.yaml). ``quota`` is read
only: counts a version before the release log carried them (quota.py) kept there."""


def build_app(settings: PrescreenSettings, kafka: KafkaSettings) -> faust.App:
    faust_patches.apply(kafka.fetch_max_wait_ms)
    started_at = time.time()
    try:
        private_keys = load_private_keys(settings.private_keys_dir)
    except ValueError:
        if not settings.allow_plaintext:
            raise
        private_keys = {}  # benchmark's crypto-off mode needs none
    registry = PartnerKeyRegistry.parse(settings.partner_keys)
    # Signs this worker's readiness announcements: partners write model.ready.v1 too,
    # and must not be able to announce (or withdraw) prescreen's readiness.
    signing_key = load_signing_key(settings.signing_key_file)
    instance = instance_id(settings.instance_id)
    scorers: dict[str, BankScorer] = {}
    adopted: asyncio.Queue[str] = asyncio.Queue()

    waiting_for_key: dict[str, BankBundle] = {}

    def adopt(bundle: BankBundle) -> None:
        if bundle.key_id not in private_keys and bundle.key_id != PLAINTEXT_KEY_ID:
            # Every model version has its own key: a new one arrives with its bundle
            # (a file written by training, or a Secret update), so look again, and keep
            # looking (see side_services) while it has not been mounted yet.
            with contextlib.suppress(ValueError):
                private_keys.update(load_private_keys(settings.private_keys_dir))
            if bundle.key_id not in private_keys:
                waiting_for_key[bundle.model_version] = bundle
                raise ValueError(f"no private key {bundle.key_id} for {bundle.model_version} yet")
        waiting_for_key.pop(bundle.model_version, None)
        scorers[bundle.model_version] = BankScorer(bundle)
        adopted.put_nowait(bundle.model_version)

    watcher = BundleWatcher(kafka, ROLLOUT_BANK, BankBundle, on_bundle=adopt)
    # The campaigns marketing runs now (campaign.config.v1), over the bundle's.
    campaigns = CampaignBoard(kafka)

    def bundle_for(version: str) -> tuple[BankBundle, BankScorer] | None:
        bundle = watcher.get(version)
        scorer = scorers.get(version)
        return (bundle, scorer) if bundle is not None and scorer is not None else None

    try:  # faust expects its data directory to exist; a fresh working directory has none
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"PRESCREEN_DATA_DIR {settings.data_dir}: cannot create it: {exc.strerror}"
        ) from exc
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
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    fragments = app.topic(FRAGMENTS, key_serializer="raw", value_serializer="raw")
    batches, pending_records, decided, quota = (
        app.Table(name, default=None, partitions=kafka.partitions) for name in TABLES
    )
    state: dict[str, Any] = {"dlq": None, "publisher": None, "ticked": {}}
    # The last offset the agent handled, by (topic, partition): what was fetched may
    # still wait in faust's buffers, this has been through the joiner.
    processed: dict[tuple[str, int], int] = {}
    producer_ready = asyncio.Event()

    async def publish(records: Sequence[Output], partition: int) -> Awaitable[None]:
        # Not faust's producer: a decided batch's records go out as a few record batches
        # (outputs.py), and the joiner waits for their acknowledgement anyway.
        await producer_ready.wait()
        acks: Awaitable[None] = await state["publisher"].publish(records, partition)
        return acks

    def legacy_counts(partition: int) -> PartitionQuota:
        """Counts a version before the release log carried them kept in ``quota``."""
        counts = PartitionQuota(partition)
        for key, used in quota.items():
            campaign, _, rest = str(key).partition("@")
            part, _, day = rest.partition("@")
            if part == str(partition) and not day:
                counts.totals[campaign] = int(used or 0)
            elif part == str(partition):
                counts.days.setdefault(campaign, {})[day] = int(used or 0)
        return counts

    ledger = QuotaLedger(
        kafka.partitions,
        lambda partition: read_counts(
            kafka, partition, settings.quota_redecide_window_s, legacy_counts
        ),
        owned=lambda: {tp.partition for tp in app.consumer.assignment() if tp.topic == PENDING},
    )

    async def counts_go_with_partitions(sender: Any, *_: Any, **__: Any) -> None:
        # Whoever decides a partition next counts from the log, and so does this worker
        # if it gets the partition back: meanwhile another may have released from it.
        ledger.forget()

    # (faust's stubs type receivers narrower than the signal calls them.)
    app.on_partitions_revoked.connect(cast(Any, counts_go_with_partitions))

    joiner = Joiner(
        batches=batches,
        pending_records=pending_records,
        decided=decided,
        publish=publish,
        private_keys=private_keys,
        registry=registry,
        bundle_for=bundle_for,
        partitions=kafka.partitions,
        allow_plaintext=settings.allow_plaintext,
        orphan_fragment_s=settings.orphan_fragment_s,
        decided_retention_s=settings.decided_retention_s,
        max_message_bytes=kafka.max_message_bytes,
        campaigns=campaigns.resolve,
        ledger=ledger,
    )

    # Several handlers at once: while one waits for the broker to acknowledge a batch's
    # decisions, the others go on joining (faust commits an offset only once every
    # earlier one of its partition is handled). The joiner's state changes happen
    # between awaits, in input order; only the acknowledgement waits overlap.
    @app.agent(inputs, concurrency=settings.concurrency)
    async def join(stream: faust.StreamT[bytes]) -> None:
        # After a restart, judge no input by its model version before every bundle
        # published so far is known: a fragment of a version still being read back
        # would be dead-lettered, and its batch decided without a model.
        await watcher.caught_up.wait()
        await campaigns.caught_up.wait()  # nor by campaigns a newer configuration replaced
        async for event in stream.events():
            message = event.message
            MESSAGES_IN.labels(service=SERVICE, topic=message.topic).inc()
            try:
                await joiner.handle(
                    message.topic, message.partition, message.value, list(message.headers or [])
                )
                mark_processed(message.topic, message.partition, message.offset)
            except RejectedInputError as exc:
                await producer_ready.wait()  # bad input may beat the side task's producer
                await state["dlq"].send_raw(
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                    value=message.value,
                    headers=list(message.headers or []),
                    reason=exc.reason,
                    error=str(exc),
                    keep_value=exc.keep_value,
                )
                mark_processed(message.topic, message.partition, message.offset)

    def mark_processed(topic: str, partition: int, offset: int) -> None:
        # Handlers finish out of order: keep the highest.
        if offset > processed.get((topic, partition), -1):
            processed[(topic, partition)] = offset

    @app.timer(settings.deadline_check_s)
    async def expire() -> None:
        if not watcher.caught_up.is_set():
            # Just restarted: a tick is authenticated with its model's key, and a batch
            # restored from the changelog may name a model not read back yet. A tick
            # made now would carry the fallback secret and be refused.
            return
        # (batch id, attempt) -> when its tick went out: a batch still undecided long after
        # its tick (the tick refused, or lost with a crashed instance's buffer) gets another.
        ticked: dict[tuple[str, int], float] = state["ticked"]
        now = time.time()
        # Only batches of partitions this worker owns: with several workers the table
        # also holds standby copies of the others' partitions (and keys of partitions
        # revoked earlier), whose ticks are their owner's to send.
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == FRAGMENTS}
        for batch_id, attempt in joiner.expired(now, owned):
            sent = ticked.get((batch_id, attempt))
            if sent is not None and now - sent < TICK_RESEND_S:
                continue
            if tick := joiner.tick_for(batch_id, attempt):
                # Into the batch's fragment partition: behind every on-time fragment.
                await fragments.send(
                    key=batch_id.encode(), value=tick, headers=[(KIND_HEADER, TICK_KIND)]
                )
                ticked[(batch_id, attempt)] = now
        live = set(batches.keys())
        state["ticked"] = {t: at for t, at in ticked.items() if t[0] in live}

    async def consumer_lag() -> list[Sample]:
        consumer = getattr(app, "_consumer", None)
        return [] if consumer is None else faust_samples(consumer, (PENDING, FRAGMENTS))

    def not_ready_reason() -> str | None:
        """None once a model is rolled out, partitions are assigned and tables are
        recovered; otherwise what is missing."""
        if watcher.latest is None:
            if waiting_for_key:
                version, bundle = next(iter(waiting_for_key.items()))
                return (
                    f"no private key {bundle.key_id} for model {version} in "
                    f"{settings.private_keys_dir}"
                )
            return f"waiting for a model bundle on {ROLLOUT_BANK}"
        consumer = getattr(app, "_consumer", None)
        if consumer is None or not consumer.assignment():
            return f"no partition of {PENDING} and {FRAGMENTS} assigned yet"
        if app.rebalancing:
            return "rebalancing: recovering the tables from their changelogs"
        return None

    def ready() -> bool:
        """A model is rolled out, partitions are assigned and tables are recovered."""
        return not_ready_reason() is None

    @app.task
    async def side_services() -> None:
        producer = make_producer(kafka)
        await producer.start()
        state["dlq"] = DeadLetters(producer, SERVICE, kafka.max_message_bytes)
        state["publisher"] = BatchPublisher(producer)
        producer_ready.set()
        await start_http(settings.metrics_port, not_ready_reason, settings.metrics_host)
        watching = asyncio.create_task(watcher.run())
        following = asyncio.create_task(campaigns.run())
        readiness = asyncio.create_task(report_readiness(SERVICE, not_ready_reason))
        lag = asyncio.create_task(watch_lag(SERVICE, consumer_lag))
        recovering = asyncio.create_task(
            keep_recovering(
                kafka,
                producer,
                JoinerView(
                    ready=lambda: ready() and watcher.caught_up.is_set(),
                    assigned=lambda: {
                        tp.partition for tp in app.consumer.assignment() if tp.topic == PENDING
                    },
                    processed=lambda partition: processed.get((PENDING, partition)),
                    known=lambda b: b in decided or b in pending_records,
                    state_of=joiner.state_of,
                ),
                group_id=settings.app_id,
                started_at=started_at,
            )
        )
        announcer = ReadinessAnnouncer(producer, PRESCREEN_PARTY, instance, signing_key)
        refreshing = asyncio.create_task(announcer.refresh())
        try:
            while True:
                try:
                    await asyncio.wait_for(adopted.get(), timeout=5.0)
                except TimeoutError:
                    for bundle in list(waiting_for_key.values()):
                        with contextlib.suppress(ValueError):
                            watcher.accept(bundle)  # calls adopt() again
                    continue
                # Every version this worker can decide: the watcher's bundles it holds
                # the key and scorer for.
                await announcer.announce(v for v in watcher.bundles if v in scorers)
        finally:
            refreshing.cancel()
            await withdraw(announcer)
            watching.cancel()
            following.cancel()
            readiness.cancel()
            lag.cancel()
            recovering.cancel()
            await producer.stop()

    return app

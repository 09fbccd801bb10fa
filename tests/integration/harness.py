"""Helpers for integration tests that run the serving pipeline as real processes."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import ConsumerRecord, TopicPartition

from schemas import BankBundle, CandidateEvent, Decision, DlqEnvelope, PartnerBundle, PolicyConfig
from services.kernel.config import KafkaSettings
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.clients import make_consumer, make_producer
from services.kernel.kafka.topics import CANDIDATES, DECISIONS, all_topics, dlq_topic
from services.stack import dataset as ds
from services.stack.fixtures import (
    BankData,
    Deployment,
    PartnerData,
    build_quick_model,
    stored_weights,
)
from services.stack.pipeline import Pipeline, PipelineOptions
from services.training.policy_file import load_policy
from services.training.run import TrainJob
from services.training.trainer import BankRows, TrainParams

PARTNERS = list(ds.REFERENCE_PARTNERS)
POLICY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "policy.toml"


def uncapped_policy(max_screenings: int = 1000) -> PolicyConfig:
    """deploy/policy.toml without quotas, and a frequency cap no test reaches: for tests
    about the data path, where every candidate should get a screening."""
    policy = load_policy(POLICY_FILE)
    return policy.model_copy(
        update={
            "campaigns": [c.model_copy(update={"quota": None}) for c in policy.campaigns],
            "frequency_cap": policy.frequency_cap.model_copy(
                update={"max_screenings": max_screenings}
            ),
        }
    )


@dataclass
class Running:
    broker: EmbeddedBroker
    pipeline: Pipeline
    table: ds.Table
    bank: BankData
    partners: list[PartnerData]
    bank_bundle: BankBundle
    partner_bundles: dict[str, PartnerBundle]
    key: PrivateKey | None

    def weights(self, partner: str, scorecard_id: str = "m-test") -> list[list[float]]:
        """A partner's stored weights, decrypted: the harness sees every party."""
        return stored_weights(self.pipeline.deployment.store_url(partner), scorecard_id, self.key)

    @property
    def settings(self) -> KafkaSettings:
        return self.broker.settings()

    def candidate(
        self, i: int, *, event_id: str, campaign: str = "card-upgrade", consent: bool = True
    ) -> CandidateEvent:
        return CandidateEvent(
            event_id=event_id,
            customer_id=self.bank.ids[i],
            campaign_id=campaign,
            consent_marketing=consent,
            occurred_at=datetime.now(UTC),
            features=dict(zip(self.bank.features, map(float, self.bank.values[i]), strict=True)),
        )


def reference_partners(table: ds.Table) -> list[PartnerData]:
    return [
        PartnerData(name, cols, table.select(cols), ds.blacklist(table, name))
        for name, cols in ds.REFERENCE_PARTNERS.items()
    ]


def load_partner_stores(
    deployment: Deployment, table: ds.Table, partners: Mapping[str, list[str]]
) -> None:
    """Each partner's store holds its columns and blacklist for every row of ``table``."""
    for name, columns in partners.items():
        data = PartnerData(name, columns, table.select(columns), ds.blacklist(table, name))
        deployment.load_partner_store(data, table.ids).close()


def training_job(
    deployment: Deployment,
    train: ds.Table,
    test: ds.Table,
    partners: list[str],
    out_dir: Path,
    *,
    rounds: int,
    model_version: str,
    trace_dir: Path | None = None,
) -> TrainJob:
    """A training job on the bank's columns of these rows, with the deployment's keys."""

    def rows(table: ds.Table) -> BankRows:
        return BankRows(table.ids, table.select(ds.BANK_FEATURES), table.column(ds.LABEL))

    return TrainJob(
        train=rows(train),
        test=rows(test),
        bank_features=ds.BANK_FEATURES,
        partners=partners,
        token_keys_dir=deployment.token_dir,
        paillier_dir=deployment.paillier_dir,
        signing_key_file=deployment.bank_signing_key,
        partner_keys=deployment.registry_spec,
        policy=load_policy(POLICY_FILE),
        out_dir=out_dir,
        params=TrainParams(rounds=rounds, patience=rounds),
        model_version=model_version,
        timeout_s=300,
        trace_dir=trace_dir,
        allow_hmac_tokens=True,  # the fixture's partners hold HMAC token keys
    )


async def start_pipeline(
    root: Path,
    rows: int,
    policy: PolicyConfig,
    options: PipelineOptions | None = None,
    partners_of: Callable[[ds.Table], list[PartnerData]] = reference_partners,
    store_urls: Mapping[str, str] | None = None,
) -> Running:
    """``store_urls``: partners whose store is a database (PostgreSQL) rather than a
    SQLite file under ``root``."""
    table = ds.load().take(np.arange(rows))
    bank = BankData(
        table.ids, ds.BANK_FEATURES, table.select(ds.BANK_FEATURES), table.column(ds.LABEL)
    )
    partners = partners_of(table)
    names = [p.name for p in partners]
    deployment = Deployment.at(root)
    deployment.store_urls.update(store_urls or {})
    bank_bundle, partner_bundles, key = build_quick_model(
        deployment,
        bank,
        partners,
        policy,
        model_version="m-test",
        plaintext=options is not None and options.plaintext,
    )
    broker = EmbeddedBroker(partitions=4, topics=all_topics(names), log_path=root / "broker.log")
    await broker.start()
    pipeline = Pipeline(broker, deployment, names, options)
    try:
        await pipeline.start(bank_bundle, partner_bundles)
    except BaseException:
        pipeline.stop()
        broker.stop()
        raise
    return Running(broker, pipeline, table, bank, partners, bank_bundle, partner_bundles, key)


def stop_pipeline(running: Running) -> None:
    """Every service at once (SIGTERM, SIGKILL after the usual grace), then the broker:
    teardown asserts nothing, so it need not wait for each process in turn."""
    services = list(running.pipeline.fleet.services.values())
    if services:
        with ThreadPoolExecutor(len(services)) as pool:
            list(pool.map(lambda s: s.stop(), services))
    running.broker.stop()


async def produce(
    settings: KafkaSettings, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def send_candidates(settings: KafkaSettings, events: Sequence[CandidateEvent]) -> None:
    await produce(
        settings,
        CANDIDATES,
        [(e.customer_id.encode(), e.model_dump_json().encode()) for e in events],
    )


async def send_at_rate(
    settings: KafkaSettings,
    events: Iterable[CandidateEvent],
    rate: float,
    librdkafka: Any = None,
) -> list[str]:
    """The events at a steady ``rate`` per second, as a bank's systems offer them, each
    keyed by its customer id; every other one through ``librdkafka`` when given (a
    ``confluent_kafka.Producer``, whose default partitioner is CRC32-based, not murmur2).
    ``events`` may be a generator that decides as it goes when to stop. Their event ids."""
    producer = make_producer(settings)
    await producer.start()
    ids: list[str] = []
    try:
        started = time.monotonic()
        for event in events:
            key, value = event.customer_id.encode(), event.model_dump_json().encode()
            if librdkafka is not None and len(ids) % 2:
                librdkafka.produce(CANDIDATES, key=key, value=value)
            else:
                await producer.send(CANDIDATES, key=key, value=value)
            ids.append(event.event_id)
            ahead = started + len(ids) / rate - time.monotonic()
            if ahead > 0:
                await producer.flush()
                if librdkafka is not None:
                    await asyncio.to_thread(librdkafka.flush, 10)
                await asyncio.sleep(ahead)
        await producer.flush()
        if librdkafka is not None:
            assert await asyncio.to_thread(librdkafka.flush, 30) == 0, "librdkafka kept messages"
    finally:
        await producer.stop()
    return ids


async def read_all(settings: KafkaSettings, topic: str, idle_s: float = 1.5) -> list[bytes]:
    """Every value on a topic, read from the beginning until it stays quiet."""
    return [r.value for r in await read_records(settings, topic, idle_s) if r.value is not None]


async def read_records(
    settings: KafkaSettings, topic: str, idle_s: float = 1.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on a topic, read from the beginning until it stays quiet."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        values: list[ConsumerRecord[bytes, bytes]] = []
        ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                values.extend(records)
            if batch:
                quiet_since = loop.time()
            caught_up = all([await consumer.position(tp) >= ends[tp] for tp in tps])
            if caught_up and loop.time() - quiet_since >= idle_s:
                return values
            if caught_up:
                ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def wait_for_decisions(
    settings: KafkaSettings, event_ids: Iterable[str], timeout_s: float = 60.0
) -> dict[str, list[Decision]]:
    """Decisions for the given events, waiting until each has one; extras are kept so
    callers can assert there were no duplicates."""
    wanted = set(event_ids)
    found: dict[str, list[Decision]] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = {}
        for value in await read_all(settings, DECISIONS, idle_s=0.5):
            decision = Decision.model_validate_json(value)
            if decision.event_id in wanted:
                found.setdefault(decision.event_id, []).append(decision)
        if set(found) >= wanted or loop.time() > deadline:
            return found
        await asyncio.sleep(0.5)


async def dead_letters(settings: KafkaSettings, topic: str) -> list[DlqEnvelope]:
    return [DlqEnvelope.model_validate_json(v) for v in await read_all(settings, dlq_topic(topic))]


def original_value(envelope: DlqEnvelope) -> bytes | None:
    return None if envelope.value_b64 is None else base64.b64decode(envelope.value_b64)

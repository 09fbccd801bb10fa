"""A restarted intake recognises the events its predecessor had batched but not yet
recorded (a kill -9 between emitting a batch and writing its customers' state), so
they are not batched and decided a second time, perhaps differently.

The kill -9 test found this broken: the read-back asked a consumer already assigned
to other topics for the pending topic's partitions, got none, and read nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from schemas import CandidateEvent, PendingBatch, PendingCandidate
from services.intake.service import IntakeService
from services.intake.settings import IntakeSettings
from services.kernel.crypto.signing import new_signing_key, save_signing_key
from services.kernel.ids import new_batch_id
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.clients import make_consumer, make_producer
from services.kernel.kafka.topics import CANDIDATES, PENDING, all_topics

pytestmark = pytest.mark.integration

GROUP = "intake-restart-test"
PARTITION = 1


def event(n: int) -> CandidateEvent:
    return CandidateEvent(
        event_id=f"restart-{n}",
        customer_id=f"c-{n}",
        campaign_id="card-upgrade",
        consent_marketing=True,
        occurred_at=datetime.now(UTC),
        features={"income": 1.0},
    )


def batch_of(events: list[CandidateEvent]) -> PendingBatch:
    now = datetime.now(UTC)
    return PendingBatch(
        batch_id=new_batch_id(),
        model_version="m-test",
        created_at=now,
        deadline_at=now + timedelta(seconds=3),
        partners=["payments"],
        candidates=[
            PendingCandidate(
                event_id=e.event_id,
                customer_id=e.customer_id,
                campaign_id=e.campaign_id,
                occurred_at=e.occurred_at,
                features=e.features,
                source_partition=PARTITION,
            )
            for e in events
        ],
        tokens={"payments": [f"token-{e.event_id}-padding" for e in events]},
    )


async def test_events_batched_before_a_crash_are_not_batched_again(tmp_path: Path) -> None:
    broker = EmbeddedBroker(
        partitions=4, topics=all_topics(["payments"]), log_path=tmp_path / "broker.log"
    )
    async with broker:
        kafka = broker.settings()
        events = [event(n) for n in range(8)]
        producer = make_producer(kafka)
        await producer.start()
        try:
            for e in events:
                await producer.send(
                    CANDIDATES, value=e.model_dump_json().encode(), partition=PARTITION
                )
            await producer.flush()
            # The predecessor committed the first three events, emitted a batch of the
            # next three, and died before it recorded them.
            tp = TopicPartition(CANDIDATES, PARTITION)
            committer = make_consumer(kafka, group_id=GROUP)
            await committer.start()
            committer.assign([tp])
            await committer.commit({tp: 3})
            await committer.stop()
            batch = batch_of(events[3:6])
            await producer.send(
                PENDING, key=batch.batch_id.encode(), value=batch.model_dump_json().encode()
            )
            await producer.flush()
        finally:
            await producer.stop()

        bank_key = tmp_path / "bank-signing.pem"
        save_signing_key(new_signing_key(), bank_key)
        service = IntakeService(IntakeSettings(group_id=GROUP, signing_key_file=bank_key), kafka)
        service.consumer = make_consumer(kafka, group_id=GROUP)
        await service.consumer.start()
        try:
            await service.restore([tp])
        finally:
            await service.consumer.stop()
        ledger = service.ledger
        batched = [ledger.seen(PARTITION, e.customer_id, e.event_id) for e in events[3:6]]
        assert batched == [True, True, True], "batched events would be batched again"
        fresh = [ledger.seen(PARTITION, e.customer_id, e.event_id) for e in events[6:]]
        assert fresh == [False, False], "events nobody batched must still be batched"

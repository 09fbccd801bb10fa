"""Bank systems written with librdkafka (confluent-kafka, whose default partitioner is
CRC32-based) and with a Java-compatible client (murmur2, like aiokafka) publish
candidates for the same customers. Intake's duplicate check and frequency cap are kept
per customer in the customer's partition: they hold only if every event of a customer
is judged in one partition, whichever producer put it where."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from schemas import CandidateEvent, ReasonCode
from services.kernel.kafka.topics import CANDIDATES
from tests.integration.harness import (
    Running,
    send_candidates,
    start_pipeline,
    stop_pipeline,
    uncapped_policy,
    wait_for_decisions,
)

pytestmark = pytest.mark.integration

CAP = 2
CUSTOMERS = range(12)


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    running = await start_pipeline(
        tmp_path_factory.mktemp("mixed"), 40, uncapped_policy(max_screenings=CAP)
    )
    try:
        yield running
    finally:
        stop_pipeline(running)


def produce_with_librdkafka(running: Running, events: list[CandidateEvent]) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": running.broker.bootstrap_servers}  # default partitioner
    )
    for event in events:
        producer.produce(
            CANDIDATES, key=event.customer_id, value=json.dumps(event.model_dump(mode="json"))
        )
    assert producer.flush(10) == 0


async def test_each_customer_is_judged_in_one_place_whoever_produced(running: Running) -> None:
    librdkafka = [running.candidate(i, event_id=f"rd-{i}-{k}") for i in CUSTOMERS for k in (0, 1)]
    murmur2 = [running.candidate(i, event_id=f"mm-{i}-{k}") for i in CUSTOMERS for k in (0, 1)]
    produce_with_librdkafka(running, librdkafka)
    await send_candidates(running.settings, murmur2)
    # The same events again, each through the other client: duplicates to be dropped.
    produce_with_librdkafka(running, murmur2[::2])
    await send_candidates(running.settings, librdkafka[::2])
    ids = [e.event_id for e in librdkafka + murmur2]
    await wait_for_decisions(running.settings, ids, timeout_s=90)
    await asyncio.sleep(4)  # past a batch deadline: any second decision has been made
    decisions = await wait_for_decisions(running.settings, ids)

    assert {e: len(d) for e, d in decisions.items() if len(d) != 1} == {}
    for i in CUSTOMERS:
        mine = [
            decisions[e.event_id][0]
            for e in librdkafka + murmur2
            if e.customer_id == running.bank.ids[i]
        ]
        capped = [d for d in mine if ReasonCode.FREQUENCY_CAP in d.reasons]
        assert len(mine) - len(capped) == CAP, f"customer {i}: {len(mine) - len(capped)} screened"

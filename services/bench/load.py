"""The benchmark's load generator and decision collector.

Both share the two CPU cores they measure, so both are kept cheap: candidate events
are pre-serialised bytes (only the event id and timestamp are spliced in), their
partitions are computed once per customer, they go out as whole record batches
(``send_batch``, no per-message partitioner or accumulator work), and decisions are
read with a plain ``json.loads`` of the few fields the statistics need.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import CandidateEvent
from services.kernel.config import KafkaSettings
from services.kernel.kafka.batches import Record, send_batched
from services.kernel.kafka.clients import make_consumer
from services.kernel.kafka.topics import CANDIDATES, DECISIONS, home_partition

Message = tuple[int, bytes, bytes]  # partition, key, value
FETCH_WAIT_MS = 10


class CandidateTemplates:
    """Per customer: the partition and the JSON of everything but event id and time."""

    def __init__(
        self,
        ids: Sequence[str],
        campaigns: Sequence[str],
        feature_names: Sequence[str],
        features: Sequence[Sequence[float]],
        partitions: int,
    ) -> None:
        self.keys = [cid.encode() for cid in ids]
        self.partitions = [home_partition(k, partitions) for k in self.keys]  # once per key
        self.bodies = []
        for cid, campaign, row in zip(ids, campaigns, features, strict=True):
            body = json.dumps(
                {
                    "customer_id": cid,
                    "campaign_id": campaign,
                    "consent_marketing": True,
                    "features": {n: float(v) for n, v in zip(feature_names, row, strict=True)},
                },
                separators=(",", ":"),
            )
            self.bodies.append(body[1:].encode())  # without the opening brace
        # The wire contract is checked once here, never in the hot loop.
        CandidateEvent.model_validate_json(self.message(0, "ev-check", now_iso())[2])

    def __len__(self) -> int:
        return len(self.keys)

    def message(self, customer: int, event_id: str, occurred_at: bytes) -> Message:
        value = b'{"event_id":"%s","occurred_at":"%s",%s' % (
            event_id.encode(),
            occurred_at,
            self.bodies[customer],
        )
        return self.partitions[customer], self.keys[customer], value


def now_iso() -> bytes:
    return datetime.now(UTC).isoformat().encode()


async def send_messages(
    producer: AIOKafkaProducer, messages: Sequence[Message], topic: str = CANDIDATES
) -> list[Awaitable[Any]]:
    """Enqueue messages as one record batch per partition (more when a batch fills);
    returns the delivery futures without waiting for them."""
    records = [Record(topic, partition, key, value) for partition, key, value in messages]
    return await send_batched(producer, records)


@dataclass(slots=True)
class Seen:
    """A candidate's first decision, and how many decisions arrived for it."""

    received: float  # unix seconds, when the collector read it
    decided_at: str
    occurred_at: str
    reason: str
    scored: bool
    decision_id: str
    copies: int = 1
    conflicting: bool = False
    verdict: tuple[object, ...] = ()
    """Outcome, reasons, pd and score band: what two set-ups must agree on."""
    partner_unavailable: bool = False
    """Decided without some partner's answer (its deadline missed)."""


@dataclass
class DecisionCollector:
    """Reads every decision from the start of the topic in a background task."""

    settings: KafkaSettings
    seen: dict[str, Seen] = field(default_factory=dict)
    arrivals: Counter[str] = field(default_factory=Counter)  # first decisions per tag
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A short fetch wait: the embedded broker does not answer a parked fetch as soon
        # as data arrives (measured: the delay grows with fetch_max_wait_ms, median about
        # a quarter of it), and this consumer's arrival times are part of what we measure.
        consumer = make_consumer(self.settings, group_id=None, fetch_max_wait_ms=FETCH_WAIT_MS)
        await consumer.start()
        partitions = consumer.partitions_for_topic(DECISIONS) or set()
        tps = [TopicPartition(DECISIONS, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._consumer = consumer
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        seen, arrivals = self.seen, self.arrivals
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            received = time.time()
            for records in batches.values():
                for record in records:
                    d = json.loads(record.value)
                    event_id = d["event_id"]
                    first = seen.get(event_id)
                    if first is not None:
                        first.copies += 1
                        first.conflicting |= first.decision_id != d["decision_id"]
                        continue
                    seen[event_id] = Seen(
                        received,
                        d["decided_at"],
                        d["occurred_at"],
                        d["reasons"][0],
                        d.get("pd") is not None,
                        d["decision_id"],
                        verdict=(
                            d["outcome"],
                            tuple(d["reasons"]),
                            d.get("pd"),
                            d.get("score_band"),
                        ),
                        partner_unavailable=bool(d.get("missing_partners"))
                        or "PARTNER_UNAVAILABLE" in d["reasons"],
                    )
                    arrivals[tag_of(event_id)] += 1

    async def wait_for(
        self, tag: str, expected: int, *, idle_s: float, timeout_s: float, report: Any = None
    ) -> bool:
        """Until ``expected`` candidates of a tag are decided; False when no decision
        arrived for ``idle_s`` or ``timeout_s`` passed. ``report(count)`` is called
        every few seconds so a long wait shows progress."""
        started = last_change = last_report = time.monotonic()
        count = self.arrivals[tag]
        while count < expected:
            await asyncio.sleep(0.05)
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise what stopped the collector
            now = time.monotonic()
            if self.arrivals[tag] != count:
                count, last_change = self.arrivals[tag], now
            if now - last_change > idle_s or now - started > timeout_s:
                return False
            if report is not None and now - last_report >= 5.0:
                report(count)
                last_report = now
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def tag_of(event_id: str) -> str:
    return event_id.partition("-")[0]

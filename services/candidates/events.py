"""Candidate events from a bank CSV, and reading ``prescreen.decisions.v1``."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas import CandidateEvent, Decision
from services.kernel.config import KafkaSettings
from services.kernel.errors import CliError
from services.kernel.kafka.clients import make_consumer, make_producer, partitions_of
from services.kernel.kafka.topics import CANDIDATES, DECISIONS

MISSING = frozenset({"", "na", "nan", "null", "none"})


def _feature(text: str, where: str, column: str) -> float | None:
    if text.strip().lower() in MISSING:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"{where}: column {column} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise CliError(f"{where}: column {column} is not a finite number: {text!r}")
    return value


def read_candidates(
    path: Path,
    *,
    id_column: str,
    features: Sequence[str] | None,
    exclude: Sequence[str],
    campaign: str,
    consent: bool,
    rows: int | None,
) -> list[CandidateEvent]:
    """One event per row (the first ``rows``): the customer's id and the bank's features.

    Event ids are ``ev-<campaign>-<customer>``, so sending the same rows again sends
    duplicates, which intake decides once."""
    if not path.is_file():
        raise CliError(f"candidate file {path} does not exist or is not a file")
    now = datetime.now(UTC)
    events: list[CandidateEvent] = []
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise CliError(f"candidate file {path} is empty")
            names = (
                list(features)
                if features is not None
                else [c for c in header if c != id_column and c not in exclude]
            )
            missing = [c for c in [id_column, *names] if c not in header]
            if missing:
                raise CliError(f"{path} has no column(s) {', '.join(missing)}")
            position = {c: header.index(c) for c in [id_column, *names]}
            for line, row in enumerate(reader, start=2):
                if rows is not None and len(events) >= rows:
                    break
                if not row:
                    continue
                where = f"{path}:{line}"
                if len(row) != len(header):
                    raise CliError(f"{where}: {len(row)} fields, the header has {len(header)}")
                customer = row[position[id_column]].strip()
                try:
                    events.append(
                        CandidateEvent(
                            event_id=f"ev-{campaign}-{customer}",
                            customer_id=customer,
                            campaign_id=campaign,
                            consent_marketing=consent,
                            occurred_at=now,
                            features={c: _feature(row[position[c]], where, c) for c in names},
                        )
                    )
                except ValidationError as exc:
                    first = exc.errors(include_url=False)[0]
                    field_name = ".".join(map(str, first["loc"]))
                    raise CliError(f"{where}: {field_name}: {first['msg']}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text: {exc.reason}") from exc
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    return events


async def send(
    settings: KafkaSettings,
    events: Sequence[CandidateEvent],
    raw: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Each event to ``bank.candidates.v1``, keyed by its customer id, then the ``raw``
    (key, value) records as they are (the demo's malformed input)."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for event in events:
            await producer.send(
                CANDIDATES,
                key=event.customer_id.encode(),
                value=event.model_dump_json().encode(),
            )
        for key, value in raw:
            await producer.send(CANDIDATES, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


@dataclass
class Collected:
    decisions: dict[str, Decision] = field(default_factory=dict)  # by event id, the first
    records: int = 0
    invalid: int = 0


async def collect(
    settings: KafkaSettings,
    count: int | None,
    timeout_s: float,
    out: TextIO,
    progress: Callable[[int], None] | None = None,
) -> Collected:
    """Read ``prescreen.decisions.v1`` from the beginning (no consumer group), writing
    each candidate's decision as a JSON line to ``out`` (the first only: a re-emission
    carries the same decision id), until ``count`` candidates are decided or
    ``timeout_s`` passes; with no ``count``, until the topic's current end."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    seen = Collected()
    try:
        partitions = [
            TopicPartition(DECISIONS, p)
            for p in await partitions_of(consumer, DECISIONS, timeout_s)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions) if count is None else {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if count is not None and len(seen.decisions) >= count:
                break
            if count is None and all(
                await asyncio.gather(*(_at_end(consumer, tp, ends[tp]) for tp in partitions))
            ):
                break
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    seen.records += 1
                    try:
                        decision = Decision.model_validate_json(record.value)
                    except ValidationError:
                        seen.invalid += 1
                        continue
                    if decision.event_id in seen.decisions:
                        continue  # a re-emission (same decision id): one line per candidate
                    seen.decisions[decision.event_id] = decision
                    out.write(json.dumps(json.loads(record.value), separators=(",", ":")) + "\n")
            out.flush()
            if progress is not None:
                progress(len(seen.decisions))
    finally:
        await consumer.stop()
    return seen


async def _at_end(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
    position: int = await consumer.position(tp)
    return position >= end

"""After a restart, find batches whose inputs the previous instance's commits skipped,
and put their records back on the topics so the joiner decides them.

Why: without transactions, what faust commits and what reached its table changelog
can disagree after a kill -9, and the kill -9 test showed a restarted instance
starting past pending records nobody had decided. The joiner keeps every batch it
knows (``batches``) or decided (``decided``); any pending record of the last minutes
in neither is one that was skipped. Sending it again is safe: the joiner ignores a
pending record or fragment it already holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer, TopicPartition

from services.kernel.config import KafkaSettings
from services.kernel.kafka.clients import IDLE_FETCH_WAIT_MS, make_consumer
from services.kernel.kafka.topics import FRAGMENTS, PENDING

log = logging.getLogger(__name__)

WINDOW_S = 300.0
"""How far before this instance started to look for skipped records."""


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def skipped_batches(
    pending: list[Record],
    known: Callable[[str], bool],
) -> dict[str, Record]:
    """Pending records, by batch id, of batches the joiner neither holds nor decided."""
    return {r.key.decode(): r for r in pending if r.key and not known(r.key.decode())}


def fragments_of(fragments: list[Record], batch_ids: Collection[str]) -> list[Record]:
    """Partners' fragments of these batches (not deadline ticks: a tick is made again by
    the timer once the batch is known)."""
    return [
        r
        for r in fragments
        if r.key.decode() in batch_ids
        and not any(name == "fedscreen-kind" for name, _ in r.headers)
    ]


async def read_window(
    kafka: KafkaSettings, topic: str, partitions: Collection[int], since: float, until: float
) -> list[Record]:
    """Records of these partitions appended between ``since`` and ``until`` (seconds)."""
    reader = make_consumer(kafka, group_id=None, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        reader.assign(tps)
        starts = await reader.offsets_for_times({tp: int(since * 1000) for tp in tps})
        ends = await reader.end_offsets(tps)
        remaining = set()
        for tp in tps:
            found = starts.get(tp)
            if found is not None and found.offset < ends[tp]:
                reader.seek(tp, found.offset)
                remaining.add(tp)
        records: list[Record] = []
        while remaining:
            for tp, batch in (await reader.getmany(*remaining, timeout_ms=500)).items():
                for r in batch:
                    if r.timestamp <= until * 1000 and r.key is not None and r.value is not None:
                        headers = tuple((k, v) for k, v in (r.headers or ()))
                        records.append(Record(topic, tp.partition, r.key, r.value, headers))
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await reader.stop()


async def recover_skipped(
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
    *,
    started_at: float,
    assigned: Callable[[], Collection[int]],
    caught_up: Callable[[], bool],
    known: Callable[[str], bool],
    state_of: Callable[[str], Mapping[str, object] | None],
    settle_s: float = 1.0,
    give_up_s: float = 600.0,
) -> int:
    """Once the joiner has caught up with its inputs, re-send the pending records (and
    the fragments the joiner lacks) of batches it never saw. Returns how many batches."""
    deadline = time.monotonic() + give_up_s
    while True:
        while not caught_up():
            if time.monotonic() > deadline:
                log.warning("skipped-batch recovery gave up: the inputs never caught up")
                return 0
            await asyncio.sleep(settle_s)
        # Read is not yet processed: give the agent time to work off its buffer.
        await asyncio.sleep(5 * settle_s)
        if caught_up():
            break
    partitions = set(assigned())
    pending = await read_window(kafka, PENDING, partitions, started_at - WINDOW_S, started_at)
    missing = skipped_batches(pending, known)
    if not missing:
        return 0
    fragments = await read_window(kafka, FRAGMENTS, partitions, started_at - WINDOW_S, time.time())
    for record in missing.values():
        await producer.send(PENDING, key=record.key, value=record.value, partition=record.partition)
    for record in fragments_of(fragments, missing):
        state = state_of(record.key.decode()) or {}
        held = state.get("f") or {}
        partner = json.loads(record.value).get("partner")
        attempt = str(json.loads(record.value).get("attempt", 1))
        if isinstance(held, Mapping) and partner in (held.get(attempt) or {}):
            continue
        await producer.send(
            FRAGMENTS,
            key=record.key,
            value=record.value,
            partition=record.partition,
            headers=list(record.headers),
        )
    await producer.flush()
    log.warning(
        "%d batches were skipped by the previous instance's commits: sent again",
        len(missing),
        extra={"batch_ids": sorted(missing)[:20]},
    )
    return len(missing)

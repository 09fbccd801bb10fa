"""After a restart, find batches whose pending record the joiner never kept, and put
their records back on the topics so the joiner decides them.

Why: without transactions, what faust commits and what reached its table changelog
can disagree after a kill -9. faust flushed its changelog only partly before
committing (see ``faust_patches.flush_completely``), and the kill -9 test showed a
restarted instance starting past pending records whose batches were in neither
table. The patches close the causes found; this sweep is the check that nothing
slipped through, and it says in the log when something did.

The check is exact: once the joiner has *processed* every pending record that was
on the broker when the sweep began (not merely fetched it: faust buffers thousands
of records between its fetcher and the agent), any pending record of the window in
neither ``batches`` nor ``decided`` was skipped. Sending it again is safe: the
joiner ignores a pending record or fragment it already holds, and a decided batch's.
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
from services.kernel.kafka.clients import make_consumer, partitions_of
from services.kernel.kafka.topics import FRAGMENTS, PENDING
from services.kernel.kafka.window import Record, read_window
from services.prescreen.batch_state import BatchState

log = logging.getLogger(__name__)

WINDOW_S = 300.0
"""How far before this instance started to look for skipped records."""
RETRY_S = 10.0


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


def processed_through(
    ends: Mapping[int, int],
    processed: Callable[[int], int | None],
    committed: Mapping[int, int],
) -> bool:
    """Has the joiner processed every record below ``ends`` (by partition)? A partition
    it has processed nothing of is done when nothing was there past the committed
    offset it started from. Records below the committed offset are not this instance's
    to process: a partition taken over from another worker may carry an offset this
    instance handled when it owned the partition before, far below where it resumes."""
    for partition, end in ends.items():
        last = processed(partition)
        start = committed.get(partition, 0)
        if max(last + 1 if last is not None else start, start) < end:
            return False
    return True


async def committed_offsets(kafka: KafkaSettings, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offsets for a topic, by partition (as the broker has them)."""
    reader = make_consumer(kafka, group_id=group_id)
    await reader.start()
    try:
        found = {}
        for partition in await partitions_of(reader, topic):
            offset = await reader.committed(TopicPartition(topic, partition))
            if offset is not None:
                found[partition] = offset
        return found
    finally:
        await reader.stop()


async def end_offsets(
    kafka: KafkaSettings, topic: str, partitions: Collection[int]
) -> dict[int, int]:
    reader = make_consumer(kafka, group_id=None)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return {tp.partition: offset for tp, offset in (await reader.end_offsets(tps)).items()}
    finally:
        await reader.stop()


@dataclass
class JoinerView:
    """What the sweep may ask of the running joiner."""

    ready: Callable[[], bool]
    """Tables recovered, partitions assigned, every model bundle read back."""
    assigned: Callable[[], Collection[int]]
    """Pending partitions this instance owns."""
    processed: Callable[[int], int | None]
    """The last pending offset of a partition the joiner handled."""
    known: Callable[[str], bool]
    """The batch is decided, or held with its pending record."""
    state_of: Callable[[str], BatchState | None]


async def recover_skipped(
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
    joiner: JoinerView,
    *,
    started_at: float,
    committed_at_start: Mapping[int, int],
    only: Collection[int] | None = None,
    settle_s: float = 1.0,
    give_up_s: float = 600.0,
) -> int:
    """Re-send the pending records (and the fragments the joiner lacks) of batches the
    joiner never kept, in the assigned partitions (of ``only``, if given). Returns how
    many batches."""
    deadline = time.monotonic() + give_up_s
    while not joiner.ready():
        if time.monotonic() > deadline:
            log.warning("skipped-batch recovery gave up: prescreen never became ready")
            return 0
        await asyncio.sleep(settle_s)
    partitions = set(joiner.assigned())
    if only is not None:
        partitions &= set(only)
    if not partitions:
        return 0
    ends = await end_offsets(kafka, PENDING, partitions)
    while not processed_through(
        {p: e for p, e in ends.items() if p in joiner.assigned()},
        joiner.processed,
        committed_at_start,
    ):
        if time.monotonic() > deadline:
            log.warning("skipped-batch recovery gave up: the joiner never caught up")
            return 0
        await asyncio.sleep(settle_s)
    # With several workers the group may have rebalanced meanwhile: judge only the
    # partitions still ours, whose tables this instance holds. A partition that moved
    # to another worker is that worker's (and its batches unknown here are not skipped).
    partitions &= set(joiner.assigned())
    if not partitions:
        return 0
    ends = {p: e for p, e in ends.items() if p in partitions}
    pending = await read_window(kafka, PENDING, partitions, started_at - WINDOW_S, ends)
    missing = skipped_batches(pending, joiner.known)
    if not missing:
        log.info(
            "no pending record of the last %.0f s was skipped",
            WINDOW_S,
            extra={"partitions": sorted(partitions)},
        )
        return 0
    fragments = await read_window(kafka, FRAGMENTS, partitions, started_at - WINDOW_S)
    for record in missing.values():
        await producer.send(PENDING, key=record.key, value=record.value, partition=record.partition)
    for record in fragments_of(fragments, missing):
        state = joiner.state_of(record.key.decode())
        sent = json.loads(record.value)
        if state is not None and state.has_answer(sent.get("partner"), sent.get("attempt", 1)):
            continue
        await producer.send(
            FRAGMENTS,
            key=record.key,
            value=record.value,
            partition=record.partition,
            headers=list(record.headers),
        )
    await producer.flush()
    # Where they were against the offsets committed when this instance started tells
    # who skipped them: below, the previous instance committed past them; at or above,
    # this instance passed them by.
    behind = sum(r.offset < committed_at_start.get(r.partition, 0) for r in missing.values())
    log.warning(
        "%d batches were skipped (%d below the offsets committed at start): sent again",
        len(missing),
        behind,
        extra={
            "batch_ids": sorted(missing)[:20],
            "committed_at_start": dict(committed_at_start),
            "skipped_at": sorted((r.partition, r.offset) for r in missing.values())[:40],
        },
    )
    return len(missing)


async def keep_recovering(
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
    joiner: JoinerView,
    *,
    group_id: str,
    started_at: float,
    attempts: int = 5,
    poll_s: float = 1.0,
) -> None:
    """:func:`recover_skipped` for the partitions assigned once this instance is ready,
    then again for every partition it takes over later. With several workers a partition
    changes hands without a process start: the partitions of a worker killed with
    kill -9 go to the others, which check them as a restarted instance would. Call it
    before this instance can have committed anything: the committed offsets it reads
    first mark where this instance began. Runs until cancelled."""
    at_start: dict[int, int] | None = None
    for attempt in range(1, attempts + 1):
        try:
            at_start = await committed_offsets(kafka, group_id, PENDING)
            break
        except Exception:
            log.exception(
                "reading the committed offsets failed (attempt %d of %d)", attempt, attempts
            )
            await asyncio.sleep(RETRY_S)
    checked: set[int] = set()
    first = True
    while True:
        if joiner.ready():
            assigned = set(joiner.assigned())
            checked &= assigned  # one lost and won back is checked again: another had it
            if new := assigned - checked:
                await _check(
                    kafka,
                    producer,
                    joiner,
                    group_id,
                    new,
                    attempts,
                    started_at=started_at if first else time.time(),
                    committed=at_start if first else None,
                )
                checked |= new
                first = False
        await asyncio.sleep(poll_s)


async def _check(
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
    joiner: JoinerView,
    group_id: str,
    partitions: set[int],
    attempts: int,
    *,
    started_at: float,
    committed: dict[int, int] | None,
) -> None:
    """One check of these partitions, again after a failure (a broker timeout on a busy
    machine must not quietly cancel it). ``committed``: the offsets where this instance
    began; None for a takeover, whose offsets are read now."""
    for attempt in range(1, attempts + 1):
        try:
            offsets = committed
            if offsets is None:
                offsets = await committed_offsets(kafka, group_id, PENDING)
            await recover_skipped(
                kafka,
                producer,
                joiner,
                started_at=started_at,
                committed_at_start=offsets,
                only=partitions,
            )
            return
        except Exception:
            log.exception("skipped-batch recovery failed (attempt %d of %d)", attempt, attempts)
            await asyncio.sleep(RETRY_S)

"""Read a partition's quota counts back from ``campaign.released.v1`` (quota.py says why
the release log, and not a table, is the ledger).

Two reads: backwards from the end, in growing steps, to the last record carrying the
partition's count (usually the partition's very last record); then the releases of the
``window_s`` before it, whose decision ids are the ones a batch decided again after a
crash may release a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas import QuotaCounts
from services.kernel.config import KafkaSettings
from services.kernel.kafka.clients import IDLE_FETCH_WAIT_MS, make_consumer, partitions_of
from services.kernel.kafka.topics import RELEASES
from services.prescreen.quota import PartitionQuota

log = logging.getLogger(__name__)

FIRST_STEP = 16
"""Records read first from the end; each further step back reads 16 times more."""


@dataclass(frozen=True, slots=True)
class Logged:
    offset: int
    timestamp_ms: int
    key: bytes
    counts: QuotaCounts | None
    """The count this record carries, if it is one of ``partition``'s."""


def counts_in(headers: Iterable[tuple[str, bytes]], partition: int) -> QuotaCounts | None:
    """The count of ``partition`` a release record carries, if it carries one."""
    try:
        counts = QuotaCounts.in_headers(headers)
    except ValidationError:
        log.warning("a release record carries an unreadable %s header", QuotaCounts.HEADER)
        return None
    return counts if counts is not None and counts.partition == partition else None


def restored(
    partition: int,
    last: Logged | None,
    window: Iterable[Logged],
    legacy: Callable[[int], PartitionQuota],
) -> PartitionQuota:
    """The partition's counts from its last counted record and the releases up to it."""
    if last is None or last.counts is None:
        # Nothing counted on the log yet: a fresh topic, or releases made by a version
        # that kept its counts in the quota table.
        return legacy(partition)
    counted = (r.key.decode() for r in window if r.offset <= last.offset)
    return PartitionQuota.from_counts(last.counts, counted)


async def _read(
    reader: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int | None, partition: int
) -> list[Logged]:
    """Records from ``start`` up to ``stop``, or when None through the record batch that
    holds the end the broker reports now (the embedded broker reports a partition's end
    as its last record batch's base offset + 1, short of the batch's other records, and
    a batch's count is on its last). Records appended after that are not waited for: the
    partitions of other workers keep growing while they are read."""
    reader.seek(tp, start)
    if stop is None:
        reported_end = (await reader.end_offsets([tp]))[tp]
        if reported_end <= start:
            return []
    records: list[Logged] = []
    while True:
        for batch in (await reader.getmany(tp, timeout_ms=500)).values():
            for r in batch:
                if (stop is None or r.offset < stop) and r.key is not None:
                    counts = counts_in(r.headers or (), partition)
                    records.append(Logged(r.offset, r.timestamp, r.key, counts))
        position = await reader.position(tp)
        if position >= (stop if stop is not None else reported_end):
            # Past the reported end, the whole batch holding it was fetched with it.
            return records


async def read_counts(
    kafka: KafkaSettings,
    partition: int,
    window_s: float,
    legacy: Callable[[int], PartitionQuota],
    topic: str = RELEASES,
) -> PartitionQuota:
    reader = make_consumer(kafka, group_id=None, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
    await reader.start()
    try:
        count = len(await partitions_of(reader, topic))
        tp = TopicPartition(topic, partition % count)  # as outputs.py places them
        reader.assign([tp])
        begin = (await reader.beginning_offsets([tp]))[tp]
        start = (await reader.end_offsets([tp]))[tp]
        stop: int | None = None  # the first read goes to the true end
        last: Logged | None = None
        step = FIRST_STEP
        while last is None and (stop is None or stop > begin):
            start = max(begin, start - step)
            mine = [r for r in await _read(reader, tp, start, stop, partition) if r.counts]
            last = mine[-1] if mine else None
            stop, step = start, step * 16
        window: list[Logged] = []
        if last is not None:
            since = await reader.offsets_for_times({tp: last.timestamp_ms - int(window_s * 1000)})
            found = since.get(tp)
            first = found.offset if found is not None else last.offset
            window = await _read(reader, tp, min(first, last.offset), last.offset + 1, partition)
        quota = restored(partition, last, window, legacy)
        log.info(
            "partition %d: quota counts read back from %s",
            partition,
            topic,
            extra={"partition": partition, "totals": quota.totals, "counted": len(quota.counted)},
        )
        return quota
    finally:
        await reader.stop()

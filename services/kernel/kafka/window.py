"""Reading back a stretch of a topic: the records appended since a moment, up to
given offsets. A restarted intake reads back the batches it had sent, a restarted
prescreen the pending records it may have skipped.

The reader is a consumer of its own: a consumer assigned to other topics keeps no
metadata for this one (see ``partitions_of``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from services.kernel.config import KafkaSettings
from services.kernel.kafka.clients import IDLE_FETCH_WAIT_MS, make_consumer


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    offset: int = -1


async def read_window(
    kafka: KafkaSettings,
    topic: str,
    partitions: Collection[int],
    since: float,
    ends: Mapping[int, int] | None = None,
) -> list[Record]:
    """Records of these partitions appended since ``since`` (seconds), below ``ends``
    (by partition; the current end when not given)."""
    reader = make_consumer(kafka, group_id=None, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        reader.assign(tps)
        starts = await reader.offsets_for_times({tp: int(since * 1000) for tp in tps})
        stops = await reader.end_offsets(tps)
        if ends is not None:
            stops = {tp: min(stops[tp], ends.get(tp.partition, stops[tp])) for tp in tps}
        remaining = set()
        for tp in tps:
            found = starts.get(tp)
            if found is not None and found.offset < stops[tp]:
                reader.seek(tp, found.offset)
                remaining.add(tp)
        records: list[Record] = []
        while remaining:
            for tp, batch in (await reader.getmany(*remaining, timeout_ms=500)).items():
                for r in batch:
                    if r.offset < stops[tp] and r.key is not None and r.value is not None:
                        headers = tuple((k, v) for k, v in (r.headers or ()))
                        records.append(
                            Record(topic, tp.partition, r.key, r.value, headers, r.offset)
                        )
            for tp in list(remaining):
                if await reader.position(tp) >= stops[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await reader.stop()

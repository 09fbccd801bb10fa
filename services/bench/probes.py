"""What the benchmark samples while a pipeline runs, shared by ``fedscreen bench``'s
modes and ``--soak``: each process's memory and CPU from ``/proc`` (summed over its
process group), the machine's busy time, and the broker's end offsets and consumer lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from services.kernel.config import KafkaSettings
from services.kernel.crypto.randomness import POOL_THREAD_NAME
from services.kernel.kafka.clients import make_consumer


@dataclass(frozen=True)
class ProcSample:
    rss_mb: float
    anon_mb: float
    processes: int
    cpu_s: float
    pool_cpu_s: float = 0.0
    """Of ``cpu_s``: the partners' factor-pool threads (computing ahead, off the serving
    path), told apart by their OS thread name."""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _status_kb(pid: int, names: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in names:
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def process_groups() -> dict[int, list[int]]:
    """Every live process by process group id, from one pass over /proc."""
    groups: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                groups.setdefault(int(fields[2]), []).append(int(entry.name))
    return groups


def read_processes(pids: Sequence[int]) -> ProcSample | None:
    """RSS (MB), anonymous RSS (MB) and CPU seconds summed over ``pids``."""
    rss = anon = 0
    cpu_ticks = pool_ticks = 0
    alive = 0
    for pid in pids:
        fields = _stat_fields(pid)
        kb = _status_kb(pid, ("VmRSS", "RssAnon"))
        if fields is None or "VmRSS" not in kb:
            continue  # exited, or a kernel thread
        alive += 1
        rss += kb["VmRSS"]
        anon += kb.get("RssAnon", 0)
        cpu_ticks += int(fields[11]) + int(fields[12])
        pool_ticks += _thread_ticks(pid, POOL_THREAD_NAME.decode())
    if not alive:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return ProcSample(rss / 1024, anon / 1024, alive, cpu_ticks / tick, pool_ticks / tick)


def _thread_ticks(pid: int, name: str) -> int:
    """User + system ticks of the process's threads with this OS name."""
    ticks = 0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                if Path(task.path, "comm").read_text().strip() != name:
                    continue
                fields = Path(task.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # the thread ended meanwhile
            ticks += int(fields[11]) + int(fields[12])
    return ticks


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine spent busy (all cores, every process), from
    /proc/stat: with the pipeline's own share, what else ran during a window."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError, IndexError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class ProcessSampler:
    """Memory and CPU of each tracked process, with its process group when it leads one
    (services and the broker run in their own sessions, so children count too)."""

    def __init__(self, leaders: dict[str, int], singles: dict[str, int]) -> None:
        self.leaders = leaders
        self.singles = singles

    def read(self) -> dict[str, ProcSample]:
        groups = process_groups()
        out: dict[str, ProcSample] = {}
        for name, pid in self.leaders.items():
            sample = read_processes(groups.get(pid, [pid]))
            if sample is not None:
                out[name] = sample
        for name, pid in self.singles.items():
            sample = read_processes([pid])
            if sample is not None:
                out[name] = sample
        return out


@dataclass
class KafkaSample:
    records: int | None = None  # every record in every topic (end offsets)
    dlq: int | None = None  # every record in every *.dlq topic
    lag: dict[str, int | None] = field(default_factory=dict)  # per consumer group
    error: str | None = None


class KafkaProbe:
    """End offsets of every topic, and each consumer group's committed offsets (read
    by a consumer of that group id that never subscribes, so never joins the group:
    Tansu's answer to the admin client's OffsetFetch does not decode)."""

    def __init__(self, settings: KafkaSettings, groups: dict[str, list[str]]) -> None:
        self.settings = settings
        self.groups = groups
        self.admin: AIOKafkaAdminClient | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.readers: dict[str, AIOKafkaConsumer] = {}

    async def start(self) -> None:
        self.admin = AIOKafkaAdminClient(**self.settings.aiokafka_kwargs(), request_timeout_ms=5000)
        await self.admin.start()
        self.consumer = make_consumer(self.settings, group_id=None)
        await self.consumer.start()
        for group in self.groups:
            reader = make_consumer(self.settings, group_id=group)
            await reader.start()
            self.readers[group] = reader

    async def stop(self) -> None:
        for reader in self.readers.values():
            await reader.stop()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.admin is not None:
            await self.admin.close()

    async def read(self, timeout_s: float = 5.0) -> KafkaSample:
        sample = KafkaSample()
        try:
            await asyncio.wait_for(self._read(sample), timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            # What was read so far; a missing number is null in the JSON.
            sample.error = f"{type(exc).__name__}: {exc}"
        return sample

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """The end offset of every partition of every topic but the broker's own."""
        assert self.admin is not None and self.consumer is not None
        topics = sorted(t for t in await self.admin.list_topics() if not t.startswith("__"))
        # faust's own topics (the assignor's leader topic) may have other partition counts.
        tps = [
            TopicPartition(d["topic"], p["partition"])
            for d in await self.admin.describe_topics(topics)
            for p in d["partitions"]
        ]
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(tps)
        return ends

    async def _read(self, sample: KafkaSample) -> None:
        ends = await self.end_offsets()
        sample.records = sum(ends.values())
        sample.dlq = sum(n for tp, n in ends.items() if tp.topic.endswith(".dlq"))
        sample.lag = dict.fromkeys(self.groups)
        for group, group_topics in self.groups.items():
            reader, lag = self.readers[group], 0
            for tp in (t for t in ends if t.topic in group_topics):
                committed = await reader.committed(tp)
                lag += ends[tp] - (committed or 0)
            sample.lag[group] = max(0, lag)


@dataclass(frozen=True)
class TopicTraffic:
    """What a phase wrote to one topic: records (end offsets) and their mean size."""

    messages: int
    sampled: int  # records whose size was read
    mean_bytes: float | None  # key + value + headers, over the sample; None if none read


def record_bytes(key: bytes | None, value: bytes | None, headers: Sequence[Any]) -> int:
    """A record's payload as the producer sends it (Kafka's own framing left out)."""
    size = len(key or b"") + len(value or b"")
    for name, data in headers:
        size += len(name.encode() if isinstance(name, str) else name) + len(data or b"")
    return size


async def _read_back(
    consumer: AIOKafkaConsumer,
    starts: dict[TopicPartition, int],
    visit: Callable[[TopicPartition, Any], None],
    quiet_ms: int,
) -> dict[TopicPartition, int]:
    """Read every partition from its start offset until a fetch brings nothing for
    ``quiet_ms`` (the pipeline is idle by then); the end of each: last offset + 1."""
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    ends = dict(starts)
    while batches := await consumer.getmany(timeout_ms=quiet_ms):
        for tp, records in batches.items():
            for record in records:
                visit(tp, record)
                ends[tp] = max(ends[tp], record.offset + 1)
    return ends


async def true_ends(
    settings: KafkaSettings, reported: dict[TopicPartition, int], *, quiet_ms: int = 1000
) -> dict[TopicPartition, int]:
    """The end offset of each partition, from the broker's reported one. The embedded
    broker (Tansu, in memory) reports the base offset of a partition's last record
    batch plus one, not its last record's plus one: reading from there finds the rest."""
    starts = {tp: max(0, end - 1) for tp, end in reported.items() if end > 0}
    ends = dict(reported)
    if starts:
        consumer = make_consumer(settings, group_id=None)
        await consumer.start()
        try:
            ends.update(await _read_back(consumer, starts, lambda tp, r: None, quiet_ms))
        finally:
            await consumer.stop()
    return ends


async def topic_traffic(
    settings: KafkaSettings,
    before: dict[TopicPartition, int],
    reported_after: dict[TopicPartition, int],
    *,
    sample_per_topic: int = 2000,
    quiet_ms: int = 1000,
) -> dict[str, TopicTraffic]:
    """Records written to each topic since ``before`` (true ends, ``true_ends``),
    counted by reading them back to the end, and their mean size over the first
    ``sample_per_topic`` of each topic. A partition whose reported end did not move
    past ``before`` got nothing (a new batch's base offset is at least the old end).
    Run it outside a measured phase, once the pipeline is idle: it costs the broker CPU
    and reads until no record comes."""
    starts = {
        tp: before.get(tp, 0) for tp, end in reported_after.items() if end > before.get(tp, 0)
    }
    counts: dict[str, int] = {}
    sizes: dict[str, list[int]] = {}

    def visit(tp: TopicPartition, record: Any) -> None:
        counts[tp.topic] = counts.get(tp.topic, 0) + 1
        sample = sizes.setdefault(tp.topic, [])
        if len(sample) < sample_per_topic:
            sample.append(record_bytes(record.key, record.value, record.headers))

    if starts:
        consumer = make_consumer(settings, group_id=None)
        await consumer.start()
        try:
            await _read_back(consumer, starts, visit, quiet_ms)
        finally:
            await consumer.stop()
    return {
        topic: TopicTraffic(
            messages=counts[topic],
            sampled=len(sizes[topic]),
            mean_bytes=sum(sizes[topic]) / len(sizes[topic]) if sizes[topic] else None,
        )
        for topic in sorted(counts)
    }

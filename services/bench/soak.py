"""``fedscreen bench --soak``: the federated pipeline under a steady load for a bounded
time, sampled every few seconds, to catch what a 20-second benchmark cannot: memory
that grows without bound and latency that drifts.

The pipeline is the benchmark's (real processes on the embedded broker, a quick
model, 2048-bit Paillier, secure aggregation). Candidates are offered at a fixed rate
in 10 ms bursts, stamped with their send time; every ``interval_s`` a window closes and
the harness samples

- per process (every service, the broker, the harness itself): resident memory
  (``VmRSS``, and ``RssAnon``, the heap's share) and CPU, summed over the process
  group (each service runs in its own session), from ``/proc``;
- throughput: decisions read per second, and the backlog (offered, not yet decided);
- the broker: records written (end offsets of every topic), dead-lettered records
  (end offsets of every ``*.dlq`` topic) and each consumer group's lag (end offset
  minus committed offset);
- once every candidate of the window is decided: latency percentiles of the window's
  candidates (``decided_at - occurred_at``, and at the harness's decision consumer).

The analysis (pure functions at the bottom, unit-tested on synthetic series) fits a
least-squares line to each process's RSS over the second half of the run (MB/hour),
compares the first and last window, and compares the p99 latency of the last windows
with the first windows after warm-up. The verdict's thresholds are in
:class:`Thresholds`; docs/benchmarks.md#soak explains them.

State that is bounded by design is made to reach its bound inside the first half, so
that growth in the second half means a leak: prescreen remembers decided batch ids for
``decided_retention_s`` (production: 3600 s), intake keeps the last 32 event ids and
the screenings inside the frequency-cap window per customer (``rows`` customers, cap
window ``cap_window_s``). The broker is Tansu with in-memory storage, which keeps
every record: its growth is reported per record written, not judged.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from schemas import PolicyConfig
from services.bench.capacity import BROKER, HARNESS
from services.bench.load import DecisionCollector, Seen, now_iso, send_messages, tag_of
from services.bench.probes import KafkaProbe, ProcessSampler, machine_busy_s
from services.bench.report import print_machine
from services.bench.run import BenchOptions, World, finite, prepare_world
from services.bench.session import running_pipeline
from services.bench.stats import Accounting, parse_ts, percentiles_ms
from services.kernel.kafka.topics import FRAGMENTS, PENDING
from services.stack.pipeline import Pipeline, PipelineOptions

Say = Callable[[str], None]
HOUR_S = 3600.0
UNJUDGED = (BROKER, HARNESS)
"""Reported, not judged: the broker keeps every record in memory by design, and the
harness is not part of the product."""


@dataclass(frozen=True)
class Thresholds:
    """What the verdict calls a pass (docs/benchmarks.md#soak says why these)."""

    growth_mb_per_h: float = 50.0
    """Per service: least-squares RSS slope over the second half of the run."""
    p99_drift: float = 0.25
    """p99 of the last windows over the first windows after warm-up, minus one."""
    keep_up: float = 0.95
    """Decisions/s after warm-up over the offered rate: the pipeline keeps up."""
    other_cores: float = 0.25
    """Cores busy with other work on the machine, mean after warm-up: above this the
    run measured contention as much as the pipeline (its latency above all)."""


@dataclass
class SoakOptions:
    workdir: Path
    duration_s: float = 600.0
    rate: float = 300.0
    interval_s: float = 10.0
    rows: int | None = 2000
    warmup_s: float | None = None  # None: min(60 s, a fifth of the run)
    key_bits: int = 2048
    partitions: int = 4
    linger_ms: float = 20.0
    deadline_ms: float = 3000.0
    decided_retention_s: float = 60.0
    cap_window_s: float = 60.0
    tick_ms: float = 10.0
    idle_timeout_s: float = 30.0  # the drain gives up after this long without a decision
    seed: int = 0
    thresholds: Thresholds = field(default_factory=Thresholds)
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per service, more environment (a profiler, another retention)."""

    @property
    def windows(self) -> int:
        return max(1, round(self.duration_s / self.interval_s))

    @property
    def warmup(self) -> float:
        if self.warmup_s is not None:
            return self.warmup_s
        return min(60.0, self.windows * self.interval_s / 5)


# -- the run --------------------------------------------------------------------------
@dataclass
class Window:
    """One sampling interval: what was offered in it, and the state at its end."""

    index: int
    t_end_s: float  # since the load started, when the window was sampled
    span_s: float
    offered: int = 0
    decisions: int = 0  # first decisions read during the window, any window's candidates
    backlog: int = 0  # offered so far minus decided so far, at the sample
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    machine_cores: float | None = None  # busy cores, whole machine
    other_cores: float | None = None  # of which not the pipeline's nor the harness's
    load_1m: float | None = None
    records: int | None = None
    dlq: int | None = None
    lag: dict[str, int | None] = field(default_factory=dict)
    probe_error: str | None = None  # why records, dlq or lag are missing
    decided_ms: dict[str, float] = field(default_factory=dict)
    received_ms: dict[str, float] = field(default_factory=dict)
    accounting: dict[str, Any] = field(default_factory=dict)
    missing_ids: set[str] = field(default_factory=set)
    final: bool = False

    @property
    def tag(self) -> str:
        return f"s{self.index}"

    @property
    def offered_per_s(self) -> float:
        return self.offered / self.span_s if self.span_s > 0 else math.nan

    @property
    def decided_per_s(self) -> float:
        return self.decisions / self.span_s if self.span_s > 0 else math.nan

    def rss(self, name: str) -> float:
        return self.processes.get(name, {}).get("rss_mb", math.nan)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("missing_ids")
        out.pop("final")
        out["offered_per_s"] = self.offered_per_s
        out["decided_per_s"] = self.decided_per_s
        return out


@dataclass
class SoakResult:
    options: SoakOptions
    model_build_s: float = 0.0
    pipeline_start_s: float = 0.0
    start: dict[str, dict[str, float]] = field(default_factory=dict)  # RSS before the load
    windows: list[Window] = field(default_factory=list)
    drain_s: float = 0.0
    late: int = 0  # decisions that arrived after the drain gave up on them
    duplicates_late: int = 0  # second decisions after a window was accounted
    problems: list[str] = field(default_factory=list)

    @property
    def accounting(self) -> dict[str, int]:
        keys = ("expected", "decided", "missing", "duplicated", "conflicting", "scored")
        total = {k: sum(int(w.accounting.get(k, 0)) for w in self.windows) for k in keys}
        total["duplicated"] += self.duplicates_late
        total["late"] = self.late
        return total

    def analysis(self) -> SoakAnalysis:
        return analyse(self.windows, self.options)


class SoakBench:
    def __init__(self, options: SoakOptions, world: World, say: Say) -> None:
        self.options = options
        self.world = world
        self.say = say
        self.root = options.workdir / "soak"
        self.rng = np.random.default_rng(options.seed)
        self.result = SoakResult(options)
        self.pending: list[Window] = []  # closed, not yet accounted
        self.deliveries: list[asyncio.Future[Any]] = []
        self.probes: list[asyncio.Task[None]] = []

    async def run(self) -> SoakResult:
        o = self.options
        options = PipelineOptions(
            linger_ms=o.linger_ms,
            deadline_ms=o.deadline_ms,
            log_level="WARNING",
            extra_env={
                **o.extra_env,
                "prescreen": {
                    "PRESCREEN_DECIDED_RETENTION_S": str(o.decided_retention_s),
                    **o.extra_env.get("prescreen", {}),
                },
            },
        )
        async with running_pipeline(
            self.root,
            self.world,
            options,
            self.result,
            label="soak",
            model_version="m-soak",
            key_bits=o.key_bits,
            partitions=o.partitions,
            say=self.say,
        ) as session:
            collector = session.collector
            # Partners commit no offsets: every replica reads every request partition
            # without a group (their lag is their own fedscreen_consumer_lag gauge).
            groups = {
                "fedscreen-intake": ["bank.candidates.v1"],
                "fedscreen-prescreen": [PENDING, FRAGMENTS],
            }
            probe = KafkaProbe(session.broker.settings(), groups)
            try:  # the probe stops first: before the producer, collector and pipeline
                await probe.start()
                sampler = ProcessSampler(session.pids(), {HARNESS: os.getpid()})
                await self.load(session.pipeline, session.producer, collector, sampler, probe)
                await self.drain(collector)
                for task in self.probes:
                    await task
                for delivery in self.deliveries:
                    await delivery
            finally:
                await probe.stop()
        self.leftovers(collector)
        self.result.problems += self.problems()
        return self.result

    # -- load ---------------------------------------------------------------------
    async def load(
        self,
        pipeline: Pipeline,
        producer: Any,
        collector: DecisionCollector,
        sampler: ProcessSampler,
        probe: KafkaProbe,
    ) -> None:
        o, t = self.options, self.world.templates
        self.result.start = {n: asdict(s) for n, s in sampler.read().items()}
        tick = o.tick_ms / 1000
        self.say(
            f"[soak] {o.rate:g}/s for {o.windows * o.interval_s:g}s, "
            f"sampled every {o.interval_s:g}s ({o.windows} windows)"
        )
        start = time.monotonic()
        window = Window(0, 0.0, o.interval_s)
        last_cpu = {n: s.cpu_s for n, s in sampler.read().items()}
        last_busy = machine_busy_s()
        last_sample, last_decided = start, self._decided(collector)
        sent_total = 0
        futures: list[Awaitable[Any]] = []
        next_tick = start
        while True:
            now = time.monotonic()
            if now >= start + (window.index + 1) * o.interval_s:
                # -- close the window: sample, then account for older windows ---------
                decided = self._decided(collector)
                samples = sampler.read()
                window.t_end_s = now - start
                window.span_s = now - last_sample
                window.decisions = decided - last_decided
                window.backlog = sent_total - decided
                for name, s in samples.items():
                    cores = (s.cpu_s - last_cpu.get(name, s.cpu_s)) / window.span_s
                    window.processes[name] = {**asdict(s), "cores": cores}
                last_cpu = {n: s.cpu_s for n, s in samples.items()}
                busy = machine_busy_s()
                if busy is not None and last_busy is not None:
                    window.machine_cores = (busy - last_busy) / window.span_s
                    ours = sum(p["cores"] for p in window.processes.values())
                    window.other_cores = max(0.0, window.machine_cores - ours)
                last_busy = busy
                window.load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                last_sample, last_decided = now, decided
                self.probes.append(asyncio.create_task(self._probe(window, probe)))
                if futures:
                    self.deliveries.append(asyncio.gather(*futures))
                    futures = []
                self._prune_done()
                self.result.windows.append(window)
                self.pending.append(window)
                self._progress(window)
                self.account(collector, final=False)
                dead = [n for n, s in pipeline.fleet.services.items() if not s.alive]
                if dead:
                    self.result.problems.append(f"exited during the soak: {', '.join(dead)}")
                    return
                if window.index + 1 >= o.windows:
                    return
                window = Window(window.index + 1, 0.0, o.interval_s)
            due = math.ceil(o.rate * (now - start)) or 1
            if due > sent_total:
                count = due - sent_total
                stamp = now_iso()  # occurred_at = the burst's send time
                customers = self.rng.integers(0, len(t), size=count)
                burst = [
                    t.message(int(c), f"{window.tag}-{window.offered + i}", stamp)
                    for i, c in enumerate(customers)
                ]
                futures += await send_messages(producer, burst)
                window.offered += count
                sent_total = due
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    def _prune_done(self) -> None:
        """Drop finished sends and probes (re-raising a failed send), so that the
        harness's memory stays flat however long the soak."""
        for delivery in [d for d in self.deliveries if d.done()]:
            delivery.result()
        self.deliveries = [d for d in self.deliveries if not d.done()]
        for probe in [t for t in self.probes if t.done()]:
            probe.result()
        self.probes = [t for t in self.probes if not t.done()]

    @staticmethod
    def _decided(collector: DecisionCollector) -> int:
        return sum(n for tag, n in collector.arrivals.items() if tag.startswith("s"))

    async def _probe(self, window: Window, probe: KafkaProbe) -> None:
        sample = await probe.read()
        window.records, window.dlq, window.lag = sample.records, sample.dlq, sample.lag
        window.probe_error = sample.error

    def _progress(self, window: Window) -> None:
        rss = sum(v["rss_mb"] for n, v in window.processes.items() if n not in UNJUDGED)
        self.say(
            f"[soak] t={window.t_end_s:5.0f}s offered {window.offered_per_s:5.0f}/s "
            f"decided {window.decided_per_s:5.0f}/s backlog {window.backlog:5d} "
            f"services RSS {rss:7.1f} MB, broker {window.rss(BROKER):6.1f} MB"
        )

    # -- accounting -----------------------------------------------------------------
    def account(self, collector: DecisionCollector, *, final: bool) -> None:
        """Account for every closed window whose candidates are all decided (at the
        end, ``final``: every window, the rest missing), then drop its decisions from
        the collector so a long soak's harness stays flat. A window is never given up
        on during the run: an overloaded pipeline decides late, not never."""
        keep = []
        for window in self.pending:
            if not (final or collector.arrivals[window.tag] >= window.offered):
                keep.append(window)
                continue
            ids = [f"{window.tag}-{i}" for i in range(window.offered)]
            seen: list[Seen | None] = [collector.seen.pop(e, None) for e in ids]
            found = [s for s in seen if s is not None]
            window.missing_ids = {e for e, s in zip(ids, seen, strict=True) if s is None}
            window.accounting = Accounting.of(seen).__dict__
            window.decided_ms = percentiles_ms(
                [parse_ts(s.decided_at) - parse_ts(s.occurred_at) for s in found]
            )
            window.received_ms = percentiles_ms(
                [s.received - parse_ts(s.occurred_at) for s in found]
            )
            window.final = True
        self.pending = keep

    async def drain(self, collector: DecisionCollector) -> None:
        """Until every offered candidate is decided, or no decision came for a while."""
        o = self.options
        started = last_change = time.monotonic()
        expected = sum(w.offered for w in self.result.windows)
        count = self._decided(collector)
        while count < expected:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if self._decided(collector) != count:
                count, last_change = self._decided(collector), now
            if now - last_change > o.idle_timeout_s + o.deadline_ms / 1000:
                break
        self.result.drain_s = time.monotonic() - started
        self.account(collector, final=True)

    def leftovers(self, collector: DecisionCollector) -> None:
        """Decisions still in the collector belong to accounted windows: second copies,
        or candidates the drain gave up on that were decided after all."""
        missing = {e for w in self.result.windows for e in w.missing_ids}
        for event_id in collector.seen:
            if not tag_of(event_id).startswith("s"):
                continue
            if event_id in missing:
                self.result.late += 1
            else:
                self.result.duplicates_late += 1

    def problems(self) -> list[str]:
        a = self.result.accounting
        out = []
        if a["missing"]:
            late = f" ({a['late']} of them decided later)" if a["late"] else ""
            out.append(f"soak: {a['missing']} of {a['expected']} candidates got no decision{late}")
        if a["conflicting"]:
            out.append(f"soak: {a['conflicting']} candidates got conflicting decisions")
        if a["decided"] and a["scored"] < a["decided"]:
            out.append(f"soak: {a['decided'] - a['scored']} candidates decided without a score")
        dlq = max((w.dlq for w in self.result.windows if w.dlq is not None), default=0)
        if dlq:
            out.append(f"soak: {dlq} records dead-lettered")
        return out


# -- analysis (pure) ------------------------------------------------------------------
def slope_per_hour(times_s: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` against ``times_s`` (seconds), per hour; None
    with fewer than two finite points or no spread in time."""
    points = [
        (t, v)
        for t, v in zip(times_s, values, strict=True)
        if math.isfinite(v) and math.isfinite(t)
    ]
    if len(points) < 2:
        return None
    t = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    tc = t - t.mean()
    spread = float((tc * tc).sum())
    if spread <= 0:
        return None
    return float((tc * (y - y.mean())).sum() / spread * HOUR_S)


@dataclass(frozen=True)
class MemoryGrowth:
    first_mb: float  # the first window
    last_mb: float  # the last window
    peak_mb: float
    slope_mb_per_h: float | None  # second half of the run
    anon_slope_mb_per_h: float | None
    samples: int  # in the second half

    @property
    def change_mb(self) -> float:
        return self.last_mb - self.first_mb


def memory_growth(
    times_s: Sequence[float], rss_mb: Sequence[float], anon_mb: Sequence[float] | None = None
) -> MemoryGrowth:
    """First vs last window, and the RSS slope over the second half of the run (the
    first half is where caches fill and bounded state reaches its bound)."""
    if not times_s:
        return MemoryGrowth(math.nan, math.nan, math.nan, None, None, 0)
    half = times_s[0] + (times_s[-1] - times_s[0]) / 2
    second = [i for i, t in enumerate(times_s) if t >= half]
    t2 = [times_s[i] for i in second]
    anon = anon_mb if anon_mb is not None else [math.nan] * len(times_s)
    return MemoryGrowth(
        first_mb=rss_mb[0],
        last_mb=rss_mb[-1],
        peak_mb=max(rss_mb),
        slope_mb_per_h=slope_per_hour(t2, [rss_mb[i] for i in second]),
        anon_slope_mb_per_h=slope_per_hour(t2, [anon[i] for i in second]),
        samples=len(second),
    )


@dataclass(frozen=True)
class LatencyDrift:
    windows: int  # after warm-up, with a latency
    first_p99_ms: float  # the first window after warm-up
    last_p99_ms: float  # the last window
    edge: int  # windows in each median below
    baseline_p99_ms: float  # median p99 of the first ``edge`` windows after warm-up
    end_p99_ms: float  # median p99 of the last ``edge`` windows
    slope_ms_per_h: float | None  # p99 against time, after warm-up

    @property
    def drift(self) -> float:
        """Relative change of the edge medians (the judged number)."""
        if not self.baseline_p99_ms > 0:
            return math.nan
        return self.end_p99_ms / self.baseline_p99_ms - 1

    @property
    def window_drift(self) -> float:
        """Relative change, last window against the first after warm-up."""
        if not self.first_p99_ms > 0:
            return math.nan
        return self.last_p99_ms / self.first_p99_ms - 1


def latency_drift(
    starts_s: Sequence[float],
    times_s: Sequence[float],
    p99_ms: Sequence[float],
    warmup_s: float,
    max_edge: int = 3,
) -> LatencyDrift:
    """p99 after warm-up (windows starting at or after ``warmup_s``): the last window(s)
    against the first, as single windows and as medians of up to ``max_edge`` windows
    (a quarter of the windows at most), and the least-squares slope."""
    post = [
        (t, p)
        for s, t, p in zip(starts_s, times_s, p99_ms, strict=True)
        if s >= warmup_s - 1e-9 and math.isfinite(p)
    ]
    if not post:
        return LatencyDrift(0, math.nan, math.nan, 0, math.nan, math.nan, None)
    edge = max(1, min(max_edge, len(post) // 4))
    values = [p for _, p in post]
    return LatencyDrift(
        windows=len(post),
        first_p99_ms=values[0],
        last_p99_ms=values[-1],
        edge=edge,
        baseline_p99_ms=float(np.median(values[:edge])),
        end_p99_ms=float(np.median(values[-edge:])),
        slope_ms_per_h=slope_per_hour([t for t, _ in post], values),
    )


@dataclass(frozen=True)
class Check:
    name: str
    goal: str
    measured: float | None
    unit: str
    passed: bool | None  # None: could not be judged (too few samples)

    @property
    def status(self) -> str:
        return "NOT JUDGED" if self.passed is None else "PASS" if self.passed else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


@dataclass(frozen=True)
class CpuDrift:
    """Cores busy, median of the first and of the last windows after warm-up."""

    first_cores: float
    last_cores: float


def cpu_drift(cores: Sequence[float], edge: int) -> CpuDrift:
    values = [c for c in cores if math.isfinite(c)]
    if not values:
        return CpuDrift(math.nan, math.nan)
    edge = max(1, min(edge, len(values)))
    return CpuDrift(float(np.median(values[:edge])), float(np.median(values[-edge:])))


@dataclass
class SoakAnalysis:
    memory: dict[str, MemoryGrowth]
    cpu: dict[str, CpuDrift]
    other_cores_mean: float | None  # what else ran on the machine, after warm-up
    other_cores_max: float | None
    broker_mb_per_100k_records: float | None
    latency: LatencyDrift
    offered_per_s: float  # after warm-up
    decided_per_s: float  # after warm-up
    checks: list[Check]

    @property
    def verdict(self) -> str:
        if any(c.passed is False for c in self.checks):
            return "FAIL"
        return "PASS" if any(c.passed for c in self.checks) else "NOT JUDGED"

    def to_json(self) -> dict[str, Any]:
        return {
            "memory": {
                n: {**asdict(g), "change_mb": g.change_mb, "judged": n not in UNJUDGED}
                for n, g in self.memory.items()
            },
            "cpu": {n: asdict(c) for n, c in self.cpu.items()},
            "other_cores_mean": self.other_cores_mean,
            "other_cores_max": self.other_cores_max,
            "broker_mb_per_100k_records": self.broker_mb_per_100k_records,
            "latency": {
                **asdict(self.latency),
                "drift": self.latency.drift,
                "window_drift": self.latency.window_drift,
            },
            "throughput": {
                "offered_per_s": self.offered_per_s,
                "decided_per_s": self.decided_per_s,
            },
            "checks": [c.to_json() for c in self.checks],
            "verdict": self.verdict,
        }


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None or not math.isfinite(value) else value <= limit


def analyse(windows: Sequence[Window], options: SoakOptions) -> SoakAnalysis:
    th = options.thresholds
    times = [w.t_end_s for w in windows]
    names: list[str] = []
    for w in windows:
        names += [n for n in w.processes if n not in names]
    memory = {}
    for name in names:
        rows = [w for w in windows if name in w.processes]
        memory[name] = memory_growth(
            [w.t_end_s for w in rows],
            [w.processes[name]["rss_mb"] for w in rows],
            [w.processes[name]["anon_mb"] for w in rows],
        )
    broker_per_record = None
    half = [w for w in windows if w.t_end_s >= times[-1] / 2 and w.records is not None]
    if len(half) >= 2 and BROKER in half[0].processes and BROKER in half[-1].processes:
        written = (half[-1].records or 0) - (half[0].records or 0)
        grown = half[-1].rss(BROKER) - half[0].rss(BROKER)
        broker_per_record = grown / written * 100_000 if written > 0 else None
    starts = [w.t_end_s - w.span_s for w in windows]
    latency = latency_drift(
        starts, times, [w.decided_ms.get("p99", math.nan) for w in windows], options.warmup
    )
    post = [w for w, s in zip(windows, starts, strict=True) if s >= options.warmup - 1e-9]
    cpu = {
        name: cpu_drift(
            [w.processes.get(name, {}).get("cores", math.nan) for w in post], latency.edge
        )
        for name in names
    }
    others = [w.other_cores for w in post if w.other_cores is not None]
    span = sum(w.span_s for w in post)
    offered = sum(w.offered for w in post) / span if span > 0 else math.nan
    decided = sum(w.decisions for w in post) / span if span > 0 else math.nan
    checks = [
        Check(
            f"RSS growth, {name} (second half)",
            f"<= {th.growth_mb_per_h:g} MB/h",
            g.slope_mb_per_h,
            "MB/h",
            _le(g.slope_mb_per_h, th.growth_mb_per_h),
        )
        for name, g in memory.items()
        if name not in UNJUDGED
    ]
    checks.append(
        Check(
            f"p99 drift, median of last {latency.edge} vs first {latency.edge} windows",
            f"<= {th.p99_drift:+.0%}",
            latency.drift * 100 if math.isfinite(latency.drift) else None,
            "%",
            _le(latency.drift, th.p99_drift),
        )
    )
    ratio = decided / offered if offered > 0 else math.nan
    checks.append(
        Check(
            "keeps up: decided / offered after warm-up",
            f">= {th.keep_up:.0%}",
            ratio * 100 if math.isfinite(ratio) else None,
            "%",
            None if not math.isfinite(ratio) else ratio >= th.keep_up,
        )
    )
    other_mean = float(np.mean(others)) if others else None
    checks.append(
        Check(
            "machine quiet: other work after warm-up",
            f"<= {th.other_cores:g} cores",
            other_mean,
            "cores",
            _le(other_mean, th.other_cores),
        )
    )
    return SoakAnalysis(
        memory,
        cpu,
        other_mean,
        max(others) if others else None,
        broker_per_record,
        latency,
        offered,
        decided,
        checks,
    )


# -- the command ----------------------------------------------------------------------
@dataclass
class SoakRequest:
    """What ``fedscreen bench --soak`` was asked to do."""

    duration_s: float = 600.0
    rate: float = 300.0
    interval_s: float = 10.0
    rows: int | None = 2000
    out: Path = Path(".fedscreen/bench/soak-results.json")
    workdir: Path = Path(".fedscreen/bench")
    linger_ms: float = 20.0
    warmup_s: float | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def options(self) -> SoakOptions:
        return SoakOptions(
            workdir=self.workdir,
            duration_s=self.duration_s,
            rate=self.rate,
            interval_s=self.interval_s,
            rows=self.rows,
            linger_ms=self.linger_ms,
            warmup_s=self.warmup_s,
            thresholds=self.thresholds,
        )


@dataclass
class SoakOutcome:
    results: dict[str, Any]
    problems: list[str]
    analysis: SoakAnalysis


def soak_policy(policy: PolicyConfig, cap_window_s: float) -> PolicyConfig:
    """The benchmark's policy (nothing stops a candidate before scoring) with a short
    frequency-cap window: with no cap on the count, the window is what bounds the
    screenings intake remembers per customer (production bounds them by the count)."""
    cap = policy.frequency_cap.model_copy(update={"window_hours": cap_window_s / HOUR_S})
    return policy.model_copy(update={"frequency_cap": cap})


async def soak(request: SoakRequest, console: Console) -> SoakOutcome:
    from services.bench import report

    info = report.machine()  # first, so the load average is the one before we add ours
    options = request.options()

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    console.rule("soak (federated, embedded broker, real processes)")
    say("[soak] loading the data and building candidate payloads")
    world = prepare_world(
        BenchOptions(workdir=options.workdir, rows=options.rows, partitions=options.partitions)
    )
    world = replace(world, policy=soak_policy(world.policy, options.cap_window_s))
    result = await SoakBench(options, world, say).run()
    analysis = result.analysis()
    print_soak(console, result, analysis, info)
    for problem in result.problems:
        console.print(f"[red]problem:[/red] {problem}")
    results = {
        "machine": info,
        "config": {
            "mode": "federated",
            "duration_s": options.windows * options.interval_s,
            "rate": options.rate,
            "interval_s": options.interval_s,
            "windows": options.windows,
            "warmup_s": options.warmup,
            "rows": options.rows,
            "key_bits": options.key_bits,
            "partitions": options.partitions,
            "intake_linger_ms": options.linger_ms,
            "deadline_ms": options.deadline_ms,
            "prescreen_decided_retention_s": options.decided_retention_s,
            "frequency_cap_window_s": options.cap_window_s,
            "thresholds": asdict(options.thresholds),
        },
        "soak": {
            "model_build_s": result.model_build_s,
            "pipeline_start_s": result.pipeline_start_s,
            "drain_s": result.drain_s,
            "accounting": result.accounting,
            "start": result.start,
            "windows": [w.to_json() for w in result.windows],
            **analysis.to_json(),
        },
        "problems": result.problems,
    }
    return SoakOutcome(results, result.problems, analysis)


def run_soak(request: SoakRequest, console: Console | None = None) -> int:
    """Run, print, write the JSON; 0 unless the run broke (a candidate undecided,
    decided twice differently or unscored, a record dead-lettered, a service exited).
    A failed verdict is a measurement, printed and written, not an exit code."""
    console = console or Console(width=None if sys.stdout.isatty() else 140)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds like Ctrl-C: the pipeline's processes are stopped

    # A soak runs long and is often stopped with `kill` (or from a background job, where
    # SIGINT is ignored); without this its services would outlive it in their sessions.
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        outcome = asyncio.run(soak(request, console))
    finally:
        signal.signal(signal.SIGTERM, previous)
    request.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite(outcome.results), indent=2, allow_nan=False)
    request.out.write_text(text + "\n")
    console.print(f"results written to {request.out}")
    return 1 if outcome.problems else 0


# -- printing -------------------------------------------------------------------------
SHORT = {BROKER: "broker", HARNESS: "bench"}


def _short(name: str) -> str:
    return SHORT.get(name, name.removeprefix("partner-"))


def _f(value: float | None, digits: int = 0) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def print_soak(
    console: Console, result: SoakResult, analysis: SoakAnalysis, info: dict[str, Any]
) -> None:
    names = list(analysis.memory)
    table = Table(
        title="Soak windows (others: cores busy with other work on the machine; "
        "RSS in MB at the end of each window)"
    )
    columns = ("t s", "offered/s", "decided/s", "p50 ms", "p99 ms", "backlog", "lag", "dlq")
    for column in (*columns, "others"):
        table.add_column(column, justify="right")
    for name in names:
        table.add_column(_short(name), justify="right")
    for w in result.windows:
        lags = [v for v in w.lag.values() if v is not None]
        table.add_row(
            _f(w.t_end_s),
            _f(w.offered_per_s),
            _f(w.decided_per_s),
            _f(w.decided_ms.get("p50"), 1),
            _f(w.decided_ms.get("p99"), 1),
            str(w.backlog),
            str(sum(lags)) if lags else "-",
            "-" if w.dlq is None else str(w.dlq),
            _f(w.other_cores, 2),
            *[_f(w.rss(n), 1) for n in names],
        )
    console.print(table)

    table = Table(title="Memory per process (slope: least squares over the second half)")
    for column in ("process", "first MB", "last MB", "change MB", "peak MB"):
        table.add_column(column, justify="left" if column == "process" else "right")
    table.add_column("slope MB/h", justify="right")
    table.add_column("heap slope MB/h", justify="right")
    table.add_column("cores first/last", justify="right")
    for name, g in analysis.memory.items():
        cpu = analysis.cpu.get(name, CpuDrift(math.nan, math.nan))
        table.add_row(
            name + (" (not judged)" if name in UNJUDGED else ""),
            _f(g.first_mb, 1),
            _f(g.last_mb, 1),
            _f(g.change_mb, 1),
            _f(g.peak_mb, 1),
            _f(g.slope_mb_per_h, 1),
            _f(g.anon_slope_mb_per_h, 1),
            f"{_f(cpu.first_cores, 2)} / {_f(cpu.last_cores, 2)}",
        )
    console.print(table)
    if analysis.broker_mb_per_100k_records is not None:
        console.print(
            "broker (in-memory storage keeps every record): "
            f"{analysis.broker_mb_per_100k_records:.1f} MB per 100k records written"
        )
    lat = analysis.latency
    console.print(
        f"latency after warm-up ({lat.windows} windows): p99 first window "
        f"{_f(lat.first_p99_ms, 1)} ms, last {_f(lat.last_p99_ms, 1)} ms; median of "
        f"{lat.edge}: {_f(lat.baseline_p99_ms, 1)} -> {_f(lat.end_p99_ms, 1)} ms "
        f"({_f(lat.drift * 100, 1)} %); slope {_f(lat.slope_ms_per_h, 1)} ms/h"
    )
    if analysis.other_cores_mean is not None and analysis.other_cores_mean > 0.25:
        console.print(
            f"[yellow]the machine was not quiet:[/yellow] other work used "
            f"{analysis.other_cores_mean:.2f} cores on average after warm-up (at most "
            f"{_f(analysis.other_cores_max, 2)}): latency drift may be contention, not the pipeline"
        )
    a = result.accounting
    console.print(
        f"candidates: {a['expected']} offered, {a['decided']} decided, {a['missing']} missing, "
        f"{a['duplicated']} duplicated, {a['decided'] - a['scored']} unscored; "
        f"throughput after warm-up {_f(analysis.decided_per_s)}/s of "
        f"{_f(analysis.offered_per_s)}/s offered; drained in {result.drain_s:.1f}s"
    )

    table = Table(title=f"Soak verdict: {analysis.verdict}")
    for column in ("check", "goal", "measured", "status"):
        table.add_column(column, justify="right" if column == "measured" else "left")
    colours = {"PASS": "green", "FAIL": "red", "NOT JUDGED": "yellow"}
    for c in analysis.checks:
        measured = "-" if c.measured is None else f"{_f(c.measured, 1)} {c.unit}"
        table.add_row(c.name, c.goal, measured, f"[{colours[c.status]}]{c.status}")
    console.print(table)
    print_machine(console, info)

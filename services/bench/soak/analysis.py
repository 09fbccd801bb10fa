"""The soak's analysis, pure functions unit-tested on synthetic series: a least-squares
line through each process's RSS over the second half of the run (MB/hour), the first
and last window compared, and the p99 latency of the last windows against the first
windows after warm-up; the verdict's checks against :class:`Thresholds`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from services.bench.capacity import BROKER
from services.bench.soak.options import HOUR_S, UNJUDGED, SoakOptions
from services.bench.soak.sampling import Window


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

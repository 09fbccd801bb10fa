"""What a soak is asked to do (:class:`SoakOptions`) and what its verdict calls a pass
(:class:`Thresholds`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.bench.capacity import BROKER, HARNESS

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

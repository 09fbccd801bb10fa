"""Statistics of a benchmark phase: decision accounting, rates, latency percentiles,
and the CPU each process spent (which service saturates a core when the pipeline
tops out)."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from services.bench.capacity import HARNESS
from services.bench.load import Seen
from services.bench.probes import ProcessSampler


@dataclass
class Accounting:
    """Did every candidate of a phase get exactly one decision?"""

    expected: int
    decided: int
    missing: int
    duplicated: int
    conflicting: int
    scored: int
    reasons: dict[str, int]

    @classmethod
    def of(cls, seen: Sequence[Seen | None]) -> Accounting:
        found = [s for s in seen if s is not None]
        return cls(
            expected=len(seen),
            decided=len(found),
            missing=len(seen) - len(found),
            duplicated=sum(1 for s in found if s.copies > 1),
            conflicting=sum(1 for s in found if s.conflicting),
            scored=sum(1 for s in found if s.scored),
            reasons=dict(Counter(s.reason for s in found)),
        )

    def problems(self, what: str) -> list[str]:
        out = []
        if self.missing:
            out.append(f"{what}: {self.missing} of {self.expected} candidates got no decision")
        if self.conflicting:
            out.append(f"{what}: {self.conflicting} candidates got conflicting decisions")
        if self.decided and self.scored < self.decided:
            out.append(
                f"{what}: {self.decided - self.scored} candidates decided without a score "
                f"({self.reasons})"
            )
        return out


def steady_rate(received: Sequence[float]) -> float:
    """Decisions/s between the 10th and 90th percentile of arrival times: leaves out
    the ramp-up and the tail, where the rate says more about batching than capacity."""
    times = sorted(received)
    lo, hi = int(0.1 * (len(times) - 1)), int(0.9 * (len(times) - 1))
    span = times[hi] - times[lo]
    if hi <= lo or span <= 0:
        return math.nan
    return (hi - lo) / span


def percentiles_ms(values_s: Sequence[float]) -> dict[str, float]:
    if not values_s:
        return {k: math.nan for k in ("p50", "p95", "p99", "max", "mean")}
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class CpuMeter:
    """CPU seconds each pipeline process (with its process group: services run in
    groups of their own) and the load generator spend in a phase, read from /proc by
    the soak's sampler: shows which service saturates a core when the pipeline tops
    out, and is what the CPU per candidate is computed from."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.sampler = ProcessSampler(pids, {HARNESS: os.getpid()})
        self.started = time.monotonic()
        self.before = self.sampler.read()

    def read(self) -> dict[str, dict[str, float]]:
        """Per process: ``cpu_s``, ``cores`` and, of ``cpu_s``, ``pool_cpu_s`` (the
        partners' factor-pool threads)."""
        wall = time.monotonic() - self.started
        out = {}
        for name, sample in self.sampler.read().items():
            then = self.before.get(name)
            if then is not None:
                used = sample.cpu_s - then.cpu_s
                out[name] = {
                    "cpu_s": used,
                    "cores": used / wall if wall else 0.0,
                    "pool_cpu_s": max(0.0, sample.pool_cpu_s - then.pool_cpu_s),
                }
        return out

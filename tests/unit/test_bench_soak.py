"""``fedscreen bench --soak`` without a pipeline: the growth and drift maths on synthetic
series, the verdict, reading a process from ``/proc``, and the options' bounds (the
short soak end to end is tests/integration/test_soak.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from services.bench.capacity import BROKER
from services.bench.cli import run_soak_command
from services.bench.probes import process_groups, read_processes
from services.bench.run import finite
from services.bench.soak.analysis import analyse, latency_drift, memory_growth, slope_per_hour
from services.bench.soak.options import SoakOptions
from services.bench.soak.sampling import Window
from services.kernel.errors import CliError


# -- the maths ------------------------------------------------------------------------
def _series(
    slope_mb_per_h: float, minutes: float = 10, every_s: float = 10, noise_mb: float = 0.5
) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(1)
    times = [every_s * (i + 1) for i in range(int(minutes * 60 / every_s))]
    rss = [200 + slope_mb_per_h * t / 3600 + rng.normal(0, noise_mb) for t in times]
    return times, rss


def test_slope_of_a_line_is_exact() -> None:
    times = [0.0, 10.0, 20.0, 30.0]
    assert slope_per_hour(times, [5.0, 6.0, 7.0, 8.0]) == pytest.approx(360.0)
    assert slope_per_hour([1.0], [2.0]) is None
    assert slope_per_hour([1.0, 1.0], [2.0, 3.0]) is None  # no spread in time
    assert slope_per_hour([0.0, 1.0, 2.0], [1.0, math.nan, 1.0]) == 0.0  # NaN left out


def test_a_leak_of_100_mb_per_hour_is_detected() -> None:
    times, rss = _series(100.0)
    growth = memory_growth(times, rss)
    assert growth.slope_mb_per_h == pytest.approx(100.0, abs=15.0)
    assert growth.samples == 30  # the second half of 60 samples
    assert growth.change_mb == pytest.approx(100.0 * 590 / 3600, abs=2.0)


def test_flat_memory_is_not_growth() -> None:
    times, rss = _series(0.0)
    growth = memory_growth(times, rss)
    assert growth.slope_mb_per_h is not None
    assert abs(growth.slope_mb_per_h) < 15.0


def test_bounded_state_filling_in_the_first_half_is_not_growth() -> None:
    """Caches and retention-bounded tables fill early; only the second half counts."""
    times, rss = _series(0.0)
    filling = [r + min(t, 200.0) * 0.2 for t, r in zip(times, rss, strict=True)]  # +40 MB
    growth = memory_growth(times, filling)
    assert growth.change_mb > 35
    assert growth.slope_mb_per_h is not None and abs(growth.slope_mb_per_h) < 15.0


def test_latency_drift_skips_warm_up_and_compares_edges() -> None:
    times = [10.0 * (i + 1) for i in range(20)]
    starts = [t - 10 for t in times]
    flat = [900.0, 700.0] + [200.0 + (5 if i % 2 else -5) for i in range(18)]  # slow start
    drift = latency_drift(starts, times, flat, warmup_s=20.0)
    assert drift.windows == 18 and drift.edge == 3
    assert drift.baseline_p99_ms == pytest.approx(195.0)
    assert abs(drift.drift) < 0.06
    rising = [200.0 + 10 * i for i in range(20)]  # +50 %/... per 200 s
    drift = latency_drift(starts, times, rising, warmup_s=0.0)
    assert drift.first_p99_ms == 200.0 and drift.last_p99_ms == 390.0
    assert drift.window_drift == pytest.approx(0.95)
    assert drift.drift == pytest.approx(380.0 / 210.0 - 1)
    assert drift.slope_ms_per_h == pytest.approx(3600.0)
    empty = latency_drift([0.0], [10.0], [math.nan], warmup_s=0.0)
    assert empty.windows == 0 and math.isnan(empty.drift) and empty.slope_ms_per_h is None


def _windows(
    leak_mb_per_h: float, p99_growth_ms: float, other_cores: float | None = 0.05
) -> list[Window]:
    windows = []
    for i in range(60):
        t = 10.0 * (i + 1)
        w = Window(i, t, 10.0, offered=3000, decisions=3000)
        for name, base in (("intake", 60.0), ("prescreen", 180.0), (BROKER, 30.0)):
            rss = base + (leak_mb_per_h if name == "prescreen" else 0) * t / 3600
            if name == BROKER:
                rss += 0.0005 * t * 300  # keeps every record: grows, but is not judged
            w.processes[name] = {"rss_mb": rss, "anon_mb": rss - 20, "processes": 1, "cores": 0.3}
        w.records = int(t * 300 * 6)
        w.other_cores = other_cores
        w.decided_ms = {"p50": 100.0, "p99": 200.0 + p99_growth_ms * i / 59}
        windows.append(w)
    return windows


def test_verdict_passes_a_steady_run_and_fails_a_leak_or_drift() -> None:
    options = SoakOptions(workdir=Path("unused"), duration_s=600, interval_s=10, rate=300)
    steady = analyse(_windows(0.0, 0.0), options)
    assert steady.verdict == "PASS"
    assert [c.status for c in steady.checks] == ["PASS"] * 5  # intake, prescreen, p99, ...
    broker_slope = steady.memory[BROKER].slope_mb_per_h
    assert broker_slope is not None and broker_slope > 100  # reported ...
    assert not any(BROKER in c.name for c in steady.checks)  # ... not judged
    assert steady.broker_mb_per_100k_records is not None
    assert steady.broker_mb_per_100k_records > 0
    assert steady.cpu["prescreen"].first_cores == steady.cpu["prescreen"].last_cores == 0.3
    assert steady.other_cores_mean == pytest.approx(0.05)

    leaking = analyse(_windows(100.0, 0.0), options)
    assert leaking.verdict == "FAIL"
    failed = [c.name for c in leaking.checks if c.status == "FAIL"]
    assert failed == ["RSS growth, prescreen (second half)"]

    drifting = analyse(_windows(0.0, 100.0), options)  # p99 200 -> 300 ms
    assert [c.name.split(",")[0] for c in drifting.checks if c.status == "FAIL"] == ["p99 drift"]
    json.dumps(finite(drifting.to_json()), allow_nan=False)

    busy = analyse(_windows(0.0, 0.0, other_cores=0.8), options)  # others' work: not trusted
    assert [c.name.split(":")[0] for c in busy.checks if c.status == "FAIL"] == ["machine quiet"]
    unsampled = analyse(_windows(0.0, 0.0, other_cores=None), options)
    assert unsampled.checks[-1].status == "NOT JUDGED" and unsampled.verdict == "PASS"


def test_process_memory_is_read_from_proc() -> None:
    me = read_processes([os.getpid()])
    assert me is not None and me.rss_mb > 1 and me.processes == 1 and me.cpu_s > 0
    assert os.getpid() in process_groups()[os.getpgid(0)]
    assert read_processes([2**22 + 7]) is None  # no such process


@pytest.mark.parametrize(
    ("duration", "interval", "rate", "rows"),
    [
        (3601.0, 10.0, 300.0, 2000),
        (30.0, 10.0, 300.0, 2000),
        (600.0, 0.5, 300.0, 2000),
        (600.0, 10.0, 0.0, 2000),
        (600.0, 10.0, 300.0, 50),
    ],
)
def test_soak_options_are_bounded(
    duration: float, interval: float, rate: float, rows: int, tmp_path: Path
) -> None:
    with pytest.raises(CliError):
        run_soak_command(rate, duration, interval, rows, tmp_path / "o.json", tmp_path, 20.0, False)

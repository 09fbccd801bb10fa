"""The soak's tables: every window, memory per process, latency, the candidates'
accounting and the verdict."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

from services.bench.capacity import BROKER, HARNESS
from services.bench.report import print_machine
from services.bench.soak.analysis import CpuDrift, SoakAnalysis
from services.bench.soak.options import UNJUDGED
from services.bench.soak.run import SoakResult

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

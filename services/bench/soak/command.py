"""``fedscreen bench --soak``: prepare the data, run the soak, analyse and print it, and
write the results as JSON."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from schemas import PolicyConfig
from services.bench.run import BenchOptions, finite, prepare_world
from services.bench.soak.analysis import SoakAnalysis
from services.bench.soak.options import HOUR_S, SoakOptions, Thresholds
from services.bench.soak.report import print_soak
from services.bench.soak.run import SoakBench


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

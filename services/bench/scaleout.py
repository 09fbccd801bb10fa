"""``fedscreen bench --scale-out``: several prescreen workers and partner replicas, a
rolling restart of every partner replica during the stream, and the same stream
again on one worker and one replica each, compared candidate by candidate.

One pipeline (the benchmark's: 2 partners, 2048-bit keys, secure aggregation), with
``workers`` prescreen processes (one app id, the partitions split between them) and
``replicas`` processes per partner sharing the partner's store (on one machine, its
SQLite file; in production a PostgreSQL database, tests/integration/
test_partner_replicas.py runs that):

1. **scaled**: candidates at ``rate``, at least ``candidates`` of them and until every
   partner replica has been restarted (SIGTERM, started again, ready, then the next);
2. **single**: every worker but the first and every replica but each partner's first
   stop cleanly; the same customers in the same order again.

Reported: per phase, candidates decided, missing, decided twice two ways, and decided
without a partner's answer (``PARTNER_UNAVAILABLE``); the restarts and their exit
codes; and how many positions of the stream were decided differently by the two set-ups
(outcome, reasons, pd, score band). The policy scores every candidate (no cap, no
quota), so a customer's decision depends on nothing but the customer.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from services.bench.load import DecisionCollector, now_iso, send_messages
from services.bench.session import PipelineSession, running_pipeline
from services.bench.stats import Accounting
from services.stack.pipeline import Pipeline, PipelineOptions, rolling_restart

Say = Callable[[str], None]


@dataclass
class ScaleOutOptions:
    workdir: Path
    candidates: int = 10_000
    rate: float = 250.0
    rows: int | None = None
    workers: int = 2
    replicas: int = 2
    linger_ms: float = 100.0
    deadline_ms: float = 3000.0
    # Four partner processes share the machine with everything else: each keeps fewer
    # factors ahead, so that refilling them in idle time does not crowd the stream.
    factor_pool: int = 256
    partitions: int = 4
    key_bits: int = 2048
    settle_s: float = 3.0  # the stream flows this long before the first restart
    seed: int = 0


@dataclass
class Phase:
    name: str
    workers: int
    replicas: int
    streamed: int = 0
    seconds: float = 0.0
    accounting: dict[str, Any] = field(default_factory=dict)
    unavailable: int = 0  # decided PARTNER_UNAVAILABLE (or without a partner's answer)


@dataclass
class ScaleOutResult:
    options: dict[str, Any]
    model_build_s: float = 0.0
    pipeline_start_s: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)  # replica -> exit code
    restart_s: dict[str, float] = field(default_factory=dict)  # SIGTERM to ready again
    compared: int = 0
    differing: int = 0
    examples: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ScaleOutBench:
    def __init__(self, options: ScaleOutOptions, world: Any, say: Say) -> None:
        self.options = options
        self.world = world
        self.say = say
        self.rng = np.random.default_rng(options.seed)
        # Customers by stream position, drawn as the stream grows (it outlasts
        # ``candidates`` while the restarts go on); both phases replay the same positions.
        self.customers: list[int] = []
        self.result = ScaleOutResult(options={k: str(v) for k, v in asdict(options).items()})

    def pipeline_options(self) -> PipelineOptions:
        o = self.options
        return PipelineOptions(
            linger_ms=o.linger_ms,
            deadline_ms=o.deadline_ms,
            log_level="WARNING",
            prescreen_workers=o.workers,
            partner_replicas=o.replicas,
            extra_env={
                Pipeline.replica_name(p.name, r): {"PARTNER_FACTOR_POOL": str(o.factor_pool)}
                for p in self.world.partners
                for r in range(1, o.replicas + 1)
            },
        )

    async def run(self) -> ScaleOutResult:
        o = self.options
        async with running_pipeline(
            o.workdir / "scale-out",
            self.world,
            self.pipeline_options(),
            self.result,
            label="scale-out",
            model_version="m-bench-scale-out",
            key_bits=o.key_bits,
            partitions=o.partitions,
            say=self.say,
        ) as session:
            scaled = Phase("scaled", o.workers, o.replicas)
            restarted = asyncio.Event()

            async def restart_all() -> None:
                if o.replicas < 2:
                    # Restarting a partner's only replica is an outage, not a rolling
                    # restart: with one replica the phase compares workers only.
                    restarted.set()
                    return
                await asyncio.sleep(o.settle_s)
                self.say(f"[scale-out] restarting {len(session.partners) * o.replicas} replicas")
                exits, took = await rolling_restart(
                    session.pipeline.fleet, session.partners, o.replicas
                )
                self.result.restarts, self.result.restart_s = exits, took
                restarted.set()

            await asyncio.gather(
                self.stream(session, scaled, "sc", o.candidates, restarted), restart_all()
            )
            await self.settle(session.collector, scaled, "sc")
            bad = {n: c for n, c in self.result.restarts.items() if c != 0}
            if bad:
                self.result.problems.append(f"replicas that did not stop cleanly: {bad}")

            self.say("[scale-out] stopping all but one prescreen worker and one replica each")
            await self.shrink(session)
            single = Phase("single", 1, 1)
            done = asyncio.Event()
            done.set()
            await self.stream(session, single, "si", scaled.streamed, done)
            await self.settle(session.collector, single, "si")
            self.result.phases = [scaled, single]
            self.compare(session.collector, scaled.streamed)
        return self.result

    async def shrink(self, session: PipelineSession) -> None:
        fleet, o = session.pipeline.fleet, self.options
        names = [f"prescreen-{n}" for n in range(2, o.workers + 1)] + [
            Pipeline.replica_name(p, r) for p in session.partners for r in range(2, o.replicas + 1)
        ]
        for name in names:
            code = await asyncio.to_thread(fleet[name].stop, 30.0)
            if code != 0:
                self.result.problems.append(f"{name} did not stop cleanly (exit {code})")
        # The remaining worker takes the partitions over (a rebalance): until it is
        # ready again, candidates would wait in the topic, not be lost; wait anyway, so
        # that the phase measures the steady single set-up.
        await fleet["prescreen"].wait_ready(timeout_s=120.0)

    async def stream(
        self,
        session: PipelineSession,
        phase: Phase,
        tag: str,
        at_least: int,
        until: asyncio.Event,
    ) -> None:
        """Candidates at the rate, in bursts every 10 ms, at least ``at_least`` and
        until ``until`` is set."""
        o, t = self.options, self.world.templates
        self.say(
            f"[scale-out] {phase.name}: {o.rate:g}/s, {phase.workers} prescreen "
            f"worker(s), {phase.replicas} replica(s) per partner"
        )
        futures: list[Any] = []
        sent, started = 0, time.monotonic()
        next_tick = started
        while sent < at_least or not until.is_set():
            due = math.ceil(o.rate * (time.monotonic() - started)) or 1
            if until.is_set():
                due = min(due, max(at_least, sent))
            while len(self.customers) < due:
                drawn = self.rng.integers(0, len(t), size=1_000)
                self.customers += [int(c) for c in drawn]
            if due > sent:
                stamp = now_iso()
                burst = [
                    t.message(self.customers[i], f"{tag}-{i}", stamp) for i in range(sent, due)
                ]
                futures += await send_messages(session.producer, burst)
                sent = due
            next_tick += 0.01
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        for future in futures:
            await future
        phase.streamed, phase.seconds = sent, time.monotonic() - started

    async def settle(self, collector: DecisionCollector, phase: Phase, tag: str) -> None:
        o = self.options
        await collector.wait_for(
            tag,
            phase.streamed,
            idle_s=30.0 + o.deadline_ms / 1000,
            timeout_s=max(300.0, phase.streamed / 20),
        )
        seen = [collector.seen.get(f"{tag}-{i}") for i in range(phase.streamed)]
        account = Accounting.of(seen)
        phase.accounting = account.__dict__
        phase.unavailable = sum(1 for s in seen if s is not None and s.partner_unavailable)
        self.result.problems += account.problems(phase.name)
        self.say(
            f"[scale-out] {phase.name}: {phase.streamed} candidates, "
            f"{phase.unavailable} decided without a partner's answer"
        )

    def compare(self, collector: DecisionCollector, count: int) -> None:
        differing = []
        compared = 0
        for i in range(count):
            a, b = collector.seen.get(f"sc-{i}"), collector.seen.get(f"si-{i}")
            if a is None or b is None:
                continue  # counted as missing in its phase
            compared += 1
            if a.verdict != b.verdict:
                differing.append(f"position {i}: {a.verdict} vs {b.verdict}")
        self.result.compared, self.result.differing = compared, len(differing)
        self.result.examples = differing[:5]
        if differing:
            self.result.problems.append(
                f"{len(differing)} of {compared} candidates decided differently by the "
                "scaled-out and the single set-up"
            )


# -- the command ------------------------------------------------------------------------
def print_scale_out(console: Console, result: ScaleOutResult) -> None:
    table = Table(title="Scale-out: the same stream on two set-ups (decisions read back)")
    columns = (
        "phase",
        "prescreen workers",
        "replicas / partner",
        "candidates",
        "decided",
        "missing",
        "decided two ways",
        "without a partner's answer",
        "s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in result.phases:
        a = phase.accounting
        table.add_row(
            phase.name,
            str(phase.workers),
            str(phase.replicas),
            f"{phase.streamed:,}",
            f"{a.get('decided', 0):,}",
            str(a.get("missing", 0)),
            str(a.get("conflicting", 0)),
            str(phase.unavailable),
            f"{phase.seconds:.0f}",
        )
    console.print(table)
    if result.restart_s:
        took = sorted(result.restart_s.values())
        console.print(
            f"rolling restart during the scaled phase: {len(result.restarts)} partner replicas "
            f"(SIGTERM, start, ready: {took[0]:.1f} to {took[-1]:.1f} s each), exit codes "
            f"{sorted(set(result.restarts.values()))}"
        )
    console.print(
        f"decided differently by the two set-ups: {result.differing:,} of "
        f"{result.compared:,} candidates (outcome, reasons, pd, score band)"
    )
    for example in result.examples:
        console.print(f"  {example}")


def run_scale_out(options: ScaleOutOptions, out: Path, console: Console | None = None) -> int:
    """Run, print, write the JSON to ``out``; 0 unless a candidate went undecided, was
    decided without a partner's answer or differently by the two set-ups, or a replica
    did not stop cleanly."""
    from services.bench import report
    from services.bench.run import BenchOptions, finite, prepare_world

    console = console or Console(width=None if sys.stdout.isatty() else 120)
    info = report.machine()
    world = prepare_world(BenchOptions(workdir=options.workdir, rows=options.rows))
    console.rule("scale-out (embedded broker, real processes)")

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    result = asyncio.run(ScaleOutBench(options, world, say).run())
    print_scale_out(console, result)
    for problem in result.problems:
        console.print(f"[red]problem:[/red] {problem}")
    results = {"machine": info, "scale_out": result.to_json(), "problems": result.problems}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(finite(results), indent=2, allow_nan=False) + "\n")
    console.print(f"results written to {out}")
    return 1 if result.problems else 0

"""``fedscreen bench``'s pipeline benchmark: the serving pipeline as real processes on
the embedded broker, once per mode (federated = Paillier, plaintext = crypto off).

Per mode: a fresh broker, partner stores with every customer, a quick model, a policy
that scores every candidate (no frequency cap, no quotas), then
(a) throughput: every candidate produced as fast as the producer goes, decisions/s
    measured over the steady state (10th to 90th percentile of arrival times) and
    overall (first produce to last decision);
(b) latency at a fixed offered load: candidates paced in small bursts, each stamped
    with its send time; latency = ``decided_at - occurred_at`` (same host clock), and
    ``received - occurred_at`` as the end-to-end view from a decision consumer.
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

from schemas import PolicyConfig
from services.bench.capacity import (
    Assumptions,
    CapacityPlan,
    PlanError,
    PlanInputs,
    inputs_from_results,
    plan,
)
from services.bench.factors import FactorPools, read_pools, wait_for_full_pools
from services.bench.load import CandidateTemplates, DecisionCollector, now_iso, send_messages
from services.bench.micro import MicroOptions, MicroResult, run_micro
from services.bench.probes import KafkaProbe, topic_traffic, true_ends
from services.bench.session import PipelineSession, running_pipeline
from services.bench.stats import Accounting, CpuMeter, parse_ts, percentiles_ms, steady_rate
from services.bench.training_crypto import (
    TrainingCryptoResult,
    print_training,
    run_training_crypto,
)
from services.stack import dataset as ds
from services.stack.fixtures import BankData, PartnerData
from services.stack.pipeline import PipelineOptions
from services.training.policy_file import load_policy

MODES = ("federated", "plaintext")
Say = Callable[[str], None]


@dataclass
class BenchOptions:
    workdir: Path
    candidates: int = 40_000
    rate: float = 500.0
    duration_s: float = 20.0
    modes: tuple[str, ...] = MODES
    rows: int | None = None  # customers: the first N of the 30,000 (tests use fewer)
    key_bits: int = 2048
    partitions: int = 4
    linger_ms: float = 20.0
    deadline_ms: float = 3000.0
    warmup: int = 1000
    # Each partner's PARTNER_FACTOR_POOL; the throughput phase starts once they are full.
    factor_pool: int = 1024
    tick_ms: float = 10.0
    chunk: int = 1000  # throughput phase: messages per round of record batches
    idle_timeout_s: float = 30.0
    seed: int = 0


@dataclass
class World:
    """Every party's data, as the harness (never a service) sees it."""

    bank: BankData
    partners: list[PartnerData]
    templates: CandidateTemplates
    policy: PolicyConfig


def prepare_world(options: BenchOptions) -> World:
    table = ds.load()
    if options.rows is not None:
        table = table.take(np.arange(min(options.rows, len(table.rows))))
    bank = BankData(
        table.ids, ds.BANK_FEATURES, table.select(ds.BANK_FEATURES), table.column(ds.LABEL)
    )
    partners = [
        PartnerData(name, columns, table.select(columns), ds.blacklist(table, name))
        for name, columns in ds.REFERENCE_PARTNERS.items()
    ]
    templates = CandidateTemplates(
        bank.ids, ds.campaigns(table), bank.features, bank.values.tolist(), options.partitions
    )
    return World(bank, partners, templates, scoring_policy())


def scoring_policy() -> PolicyConfig:
    """The deployed policy minus everything that would stop a candidate before scoring."""
    policy = load_policy()  # the packaged default, deploy/policy.toml
    return policy.model_copy(
        update={
            "campaigns": [c.model_copy(update={"quota": None}) for c in policy.campaigns],
            "frequency_cap": policy.frequency_cap.model_copy(
                update={"max_screenings": 1_000_000_000}
            ),
        }
    )


# -- one mode -------------------------------------------------------------------------
@dataclass
class ModeRun:
    mode: str
    model_build_s: float = 0.0
    pipeline_start_s: float = 0.0
    throughput: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ModeBench:
    def __init__(self, options: BenchOptions, world: World, mode: str, say: Say) -> None:
        self.options = options
        self.world = world
        self.mode = mode
        self.say = say
        self.root = options.workdir / mode
        # The same seed in every mode: both modes see the same candidate stream.
        self.rng = np.random.default_rng(options.seed)
        self.result = ModeRun(mode)

    async def run(self) -> ModeRun:
        o = self.options
        options = PipelineOptions(
            plaintext=self.mode == "plaintext",
            linger_ms=o.linger_ms,
            deadline_ms=o.deadline_ms,
            log_level="WARNING",  # per-request logging would cost measured CPU
            extra_env={
                f"partner-{p.name}": {"PARTNER_FACTOR_POOL": str(o.factor_pool)}
                for p in self.world.partners
            },
        )
        async with running_pipeline(
            self.root,
            self.world,
            options,
            self.result,
            label=self.mode,
            model_version=f"m-bench-{self.mode}",
            key_bits=o.key_bits,
            partitions=o.partitions,
            say=self.say,
        ) as session:
            producer, collector = session.producer, session.collector
            await self.warm_up(producer, collector)
            pools = await self.fill_pools(session)
            probe = KafkaProbe(session.broker.settings(), {})
            await probe.start()
            try:
                settings = session.broker.settings()
                before = await true_ends(settings, await probe.end_offsets())
                meter = CpuMeter(session.pids())
                await self.throughput(producer, collector)
                self.result.throughput["cpu"] = meter.read()
                after = await probe.end_offsets()
            finally:
                await probe.stop()
            pools = await self.drawn(session, pools, self.result.throughput)
            # After the CPU was read: reading records back costs the broker CPU.
            traffic = await topic_traffic(settings, before, after)
            self.result.throughput["traffic"] = {t: asdict(v) for t, v in traffic.items()}
            meter = CpuMeter(session.pids())
            await self.latency(producer, collector)
            self.result.latency["cpu"] = meter.read()
            await self.drawn(session, pools, self.result.latency)
        return self.result

    async def fill_pools(self, session: PipelineSession) -> FactorPools | None:
        """Partners answer from factors computed ahead: start the flood with full pools
        (as after a quiet spell), and report what it drew, so that a reader can tell a
        burst served from the pools from what the partners sustain."""
        if self.mode != "federated":
            return None
        target = self.options.factor_pool
        self.say(f"[{self.mode}] waiting for the partners' factor pools ({target} each)")
        pools = await wait_for_full_pools(session, target, timeout_s=max(120.0, target / 8))
        if any(count < target for count in pools.ready.values()):
            self.result.problems.append(
                f"factor pools not full before the throughput phase: {pools.ready}"
            )
        return pools

    async def drawn(
        self, session: PipelineSession, before: FactorPools | None, phase: dict[str, Any]
    ) -> FactorPools | None:
        """Record in ``phase`` the pools at its start and end, and the factors the
        partners had to compute on the request path during it."""
        if before is None:
            return None
        after = await read_pools(session)
        phase["factor_pools"] = {
            "target": self.options.factor_pool,
            "ready_at_start": before.ready,
            "ready_at_end": after.ready,
            "computed_inline": {p: after.inline[p] - before.inline.get(p, 0) for p in after.inline},
        }
        return after

    def sample(self, count: int) -> list[int]:
        """Customers drawn with replacement: repeats are normal in a campaign stream."""
        return [int(i) for i in self.rng.integers(0, len(self.world.templates), size=count)]

    async def _wait(self, collector: DecisionCollector, tag: str, count: int) -> bool:
        def report(done: int) -> None:
            self.say(f"[{self.mode}]   {done}/{count} decided")

        return await collector.wait_for(
            tag,
            count,
            idle_s=self.options.idle_timeout_s + self.options.deadline_ms / 1000,
            timeout_s=max(300.0, count / 50),
            report=report,
        )

    async def warm_up(self, producer: Any, collector: DecisionCollector) -> None:
        """Fills lazily initialised paths (first LightGBM predict, table pages, client
        metadata) so that the throughput phase measures the steady state."""
        count = self.options.warmup
        if count <= 0:
            return
        tag, stamp = f"w{self.mode[0]}", now_iso()
        t = self.world.templates
        messages = [t.message(c, f"{tag}-{i}", stamp) for i, c in enumerate(self.sample(count))]
        await send_messages(producer, messages)
        if not await self._wait(collector, tag, count):
            self.result.problems.append(f"warm-up: only {collector.arrivals[tag]}/{count} decided")

    async def throughput(self, producer: Any, collector: DecisionCollector) -> None:
        o, t = self.options, self.world.templates
        tag, stamp = f"t{self.mode[0]}", now_iso()
        ids = [f"{tag}-{i}" for i in range(o.candidates)]
        messages = [
            t.message(c, e, stamp) for c, e in zip(self.sample(o.candidates), ids, strict=True)
        ]
        self.say(f"[{self.mode}] throughput: producing {o.candidates} candidates")
        first_send = time.time()
        futures = []
        for start in range(0, len(messages), o.chunk):
            futures += await send_messages(producer, messages[start : start + o.chunk])
        for future in futures:
            await future
        produced = time.time()
        await self._wait(collector, tag, o.candidates)
        seen = [collector.seen.get(e) for e in ids]
        account = Accounting.of(seen)
        received = [s.received for s in seen if s is not None]
        self.result.throughput = {
            "candidates": o.candidates,
            "produce_s": produced - first_send,
            "produce_rate": o.candidates / max(produced - first_send, 1e-9),
            "steady_decisions_per_s": steady_rate(received),
            # Decisions made without a partner score (a missed deadline) are cheap: the
            # capacity that counts is that of scored ones.
            "steady_scored_per_s": steady_rate([s.received for s in seen if s and s.scored]),
            "overall_decisions_per_s": (
                len(received) / (max(received) - first_send) if received else math.nan
            ),
            "span_s": (max(received) - first_send) if received else math.nan,
            "accounting": account.__dict__,
        }
        self.result.problems += account.problems("throughput")
        self.say(
            f"[{self.mode}] throughput: "
            f"{self.result.throughput['steady_decisions_per_s']:.0f} decisions/s steady, "
            f"{self.result.throughput['overall_decisions_per_s']:.0f}/s overall"
        )

    async def latency(self, producer: Any, collector: DecisionCollector) -> None:
        o, t = self.options, self.world.templates
        tag = f"l{self.mode[0]}"
        total = max(1, round(o.rate * o.duration_s))
        customers = self.sample(total)
        self.say(f"[{self.mode}] latency: {o.rate:g}/s for {o.duration_s:g}s ({total} candidates)")
        futures: list[Any] = []
        tick = o.tick_ms / 1000
        sent, first_send = 0, time.time()
        start = time.monotonic()
        next_tick = start
        while sent < total:
            due = min(total, math.ceil(o.rate * (time.monotonic() - start)) or 1)
            if due > sent:
                stamp = now_iso()  # occurred_at = the burst's send time
                burst = [t.message(customers[i], f"{tag}-{i}", stamp) for i in range(sent, due)]
                futures += await send_messages(producer, burst)
                sent = due
            next_tick += tick
            await _sleep_until(next_tick)
        last_send = time.time()
        for future in futures:
            await future
        await self._wait(collector, tag, total)
        seen = [collector.seen.get(f"{tag}-{i}") for i in range(total)]
        account = Accounting.of(seen)
        found = [s for s in seen if s is not None]
        decided = [parse_ts(s.decided_at) - parse_ts(s.occurred_at) for s in found]
        received = [s.received - parse_ts(s.occurred_at) for s in found]
        self.result.latency = {
            "offered_rate": o.rate,
            "achieved_rate": total / max(last_send - first_send, 1e-9),
            "duration_s": last_send - first_send,
            "candidates": total,
            "decided_ms": percentiles_ms(decided),
            "received_ms": percentiles_ms(received),
            "accounting": account.__dict__,
        }
        self.result.problems += account.problems("latency")
        p = self.result.latency["decided_ms"]
        self.say(
            f"[{self.mode}] latency: p50 {p['p50']:.0f} ms, p95 {p['p95']:.0f} ms, "
            f"p99 {p['p99']:.0f} ms"
        )


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    await asyncio.sleep(max(0.0, delay))


# -- all modes ------------------------------------------------------------------------
@dataclass
class PipelineBench:
    modes: dict[str, ModeRun]

    @property
    def ratio(self) -> float | None:
        """Federated over plaintext steady-state throughput, measured in the same run."""
        fed, plain = self.modes.get("federated"), self.modes.get("plaintext")
        if fed is None or plain is None:
            return None
        a = fed.throughput.get("steady_decisions_per_s", math.nan)
        b = plain.throughput.get("steady_decisions_per_s", math.nan)
        return float(a / b) if b and not math.isnan(a) and not math.isnan(b) else None

    @property
    def problems(self) -> list[str]:
        return [f"{m}: {p}" for m, run in self.modes.items() for p in run.problems]

    def to_json(self) -> dict[str, Any]:
        return {
            "modes": {m: run.to_json() for m, run in self.modes.items()},
            "federated_plaintext_ratio": self.ratio,
        }


async def run_pipeline_bench(options: BenchOptions, say: Say = print) -> PipelineBench:
    for mode in options.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    say("loading the data and building candidate payloads")
    world = prepare_world(options)
    runs = {}
    for mode in options.modes:
        runs[mode] = await ModeBench(options, world, mode, say).run()
    return PipelineBench(runs)


# -- the command ----------------------------------------------------------------------
@dataclass
class BenchRequest:
    """What ``fedscreen bench`` was asked to do."""

    candidates: int = 40_000
    rate: float = 500.0
    duration_s: float = 20.0
    modes: tuple[str, ...] = MODES
    micro: bool = True
    pipeline: bool = True
    out: Path = Path(".fedscreen/bench/bench-results.json")
    workdir: Path = Path(".fedscreen/bench")
    rows: int | None = None
    linger_ms: float = 20.0
    training: bool = False
    training_sample_rows: int = 200
    warmup: int = 1000
    factor_pool: int = BenchOptions.factor_pool
    micro_options: MicroOptions = field(default_factory=MicroOptions)
    plans: tuple[float, ...] = ()  # --plan: target rates, candidates/s
    assumptions: Assumptions = field(default_factory=Assumptions)


@dataclass
class BenchOutcome:
    results: dict[str, Any]
    problems: list[str]


async def bench(request: BenchRequest, console: Console) -> BenchOutcome:
    from services.bench import report

    info = report.machine()  # first, so the load average is the one before we add ours
    micro: MicroResult | None = None
    pipeline: PipelineBench | None = None
    if request.micro:
        console.rule("crypto micro-benchmark (no Kafka)")
        # CPU-bound for seconds: off the event loop, though nothing else runs yet.
        micro = await asyncio.to_thread(run_micro, request.micro_options)
        report.print_micro(console, micro)
    training: TrainingCryptoResult | None = None
    if request.training:
        console.rule("training round: fedscreen vs naive python-paillier (no Kafka)")
        training = await asyncio.to_thread(
            run_training_crypto, sample_rows=request.training_sample_rows
        )
        print_training(console, training)
    if request.pipeline:
        console.rule("pipeline benchmark (embedded broker, real processes)")
        options = BenchOptions(
            workdir=request.workdir,
            candidates=request.candidates,
            rate=request.rate,
            duration_s=request.duration_s,
            modes=request.modes,
            rows=request.rows,
            linger_ms=request.linger_ms,
            warmup=request.warmup,
            factor_pool=request.factor_pool,
        )
        pipeline = await run_pipeline_bench(
            options, say=lambda text: console.print(text, markup=False, highlight=False)
        )
        report.print_pipeline(console, pipeline)
    measured = measured_cpu(info, pipeline, micro)
    if measured is not None:
        report.print_measured(console, measured)
    plans: list[CapacityPlan] = []
    if measured is not None:
        plans = [
            plan(measured.cpu, measured.traffic, r, request.assumptions) for r in request.plans
        ]
    elif request.plans:
        console.print("[red]--plan:[/red] no CPU figures from a federated run to plan from")
    for made in plans:
        report.print_plan(console, made)
    found = report.targets(pipeline, micro, measured.cpu if measured else None)
    console.rule("targets")
    report.print_targets(console, found, info)
    problems = pipeline.problems if pipeline else []
    for problem in problems:
        console.print(f"[red]problem:[/red] {problem}")
    results = {
        "machine": info,
        "config": {
            "candidates": request.candidates,
            "rate": request.rate,
            "duration_s": request.duration_s,
            "modes": list(request.modes),
            "rows": request.rows,
            "warmup": request.warmup,
            "partner_factor_pool": request.factor_pool,
            "partners": list(ds.REFERENCE_PARTNERS),
            "key_bits": BenchOptions.key_bits,
            "partitions": BenchOptions.partitions,
            "intake_linger_ms": request.linger_ms,
            "deadline_ms": BenchOptions.deadline_ms,
        },
        "pipeline": pipeline.to_json() if pipeline else None,
        "micro": micro.to_json() if micro else None,
        "training_round": training.to_json() if training else None,
        "cpu_per_candidate": measured.cpu.to_json() if measured else None,
        "plans": [p.to_json() for p in plans],
        "targets": [t.to_json() for t in found],
        "problems": problems,
    }
    return BenchOutcome(results, problems)


def measured_cpu(
    info: dict[str, Any], pipeline: PipelineBench | None, micro: MicroResult | None
) -> PlanInputs | None:
    """CPU per candidate and traffic of the federated run, read the way ``--plan
    --from`` reads a saved run (one code path); None without a federated run."""
    if pipeline is None or "federated" not in pipeline.modes:
        return None
    results = {
        "machine": info,
        "pipeline": finite(pipeline.to_json()),
        "micro": finite(micro.to_json()) if micro else None,
    }
    try:
        return inputs_from_results(results)
    except PlanError:
        return None  # a run that decided nothing: its problems say so


def finite(value: Any) -> Any:
    """NaN (a rate over too few decisions, a percentile of nothing) becomes null: JSON
    has no NaN, and readers in other languages reject Python's extension."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def run_bench(request: BenchRequest, console: Console | None = None) -> int:
    """Run, print, write the JSON; 0 unless a candidate went undecided or unscored
    (a missed target is a measurement, not a failure)."""
    # Piped output (a CI log, `| tee`) would otherwise be cut to 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    outcome = asyncio.run(bench(request, console))
    request.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite(outcome.results), indent=2, allow_nan=False)
    request.out.write_text(text + "\n")
    console.print(f"results written to {request.out}")
    return 1 if outcome.problems else 0

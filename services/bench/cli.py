"""``fedscreen bench``: pipeline throughput and latency per mode, the crypto
micro-benchmark, and every number with the machine in one JSON file; ``--soak``: a long
steady run for memory growth and latency drift (services/bench/soak/);
``--scale-out``: workers and replicas, a rolling restart, decisions compared
(services/bench/scaleout.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

# Standard library only (fedscreen --help stays fast); the rest is imported when run.
from services.bench.capacity import Assumptions
from services.kernel.errors import CliError

VALID_MODES = ("federated", "plaintext")
DEFAULT_WORKDIR = Path(".fedscreen/bench")


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes:
        raise CliError("--modes needs at least one of federated, plaintext")
    unknown = [m for m in modes if m not in VALID_MODES]
    if unknown:
        raise CliError(f"--modes: unknown mode {unknown[0]!r} (use federated, plaintext)")
    if len(set(modes)) != len(modes):
        raise CliError("--modes lists a mode twice")
    return modes


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        candidates: Annotated[
            int | None,
            typer.Option(
                help="Candidates in the throughput run, per mode (default 40,000); at "
                "least this many in --scale-out's stream (default 10,000).",
                show_default=False,
            ),
        ] = None,
        rate: Annotated[
            float | None,
            typer.Option(
                help="Offered load of the latency run (default 500) or of the soak "
                "(default 300), candidates/s.",
                show_default=False,
            ),
        ] = None,
        duration: Annotated[
            float | None,
            typer.Option(
                help="Length of the latency run (default 20) or of the soak (default 600), s.",
                show_default=False,
            ),
        ] = None,
        modes: Annotated[
            str, typer.Option(help="Comma-separated: federated, plaintext.")
        ] = "federated,plaintext",
        micro: Annotated[
            bool, typer.Option("--micro/--no-micro", help="Run the crypto micro-benchmark.")
        ] = True,
        pipeline: Annotated[
            bool,
            typer.Option("--pipeline/--no-pipeline", help="Run the pipeline benchmark."),
        ] = True,
        out: Annotated[
            Path | None,
            typer.Option(
                help="Where to write the JSON results (default bench-results.json, "
                "or soak-results.json with --soak, in --workdir).",
                show_default=False,
            ),
        ] = None,
        workdir: Annotated[
            Path,
            typer.Option(
                help="Where everything the bench writes goes: keys, stores, logs per mode, "
                "and the JSON results unless --out."
            ),
        ] = DEFAULT_WORKDIR,
        rows: Annotated[
            int | None,
            typer.Option(
                help="Customers: the first N of the 30,000 (default all; 2,000 with --soak).",
                show_default=False,
            ),
        ] = None,
        training: Annotated[
            bool,
            typer.Option(
                help="Also time one training round against the naive python-paillier protocol."
            ),
        ] = False,
        linger_ms: Annotated[
            float | None,
            typer.Option(
                help="Intake's batch linger (INTAKE_LINGER_MS): latency vs batch size "
                "(default 20; 100 with --scale-out).",
                show_default=False,
            ),
        ] = None,
        factor_pool: Annotated[
            int,
            typer.Option(
                help="Each partner's PARTNER_FACTOR_POOL; the federated throughput run "
                "starts once the pools are full.",
            ),
        ] = 1024,
        soak: Annotated[
            bool,
            typer.Option(
                "--soak",
                help="Instead: the federated pipeline at a steady --rate for --duration, "
                "sampled every --interval (RSS per process, latency per window, lag, DLQ); "
                "reports memory growth and latency drift against thresholds "
                "(docs/benchmarks.md#soak). --modes, --candidates, --micro and --training "
                "do not apply.",
            ),
        ] = False,
        interval: Annotated[
            float, typer.Option(help="--soak: seconds per sampling window.")
        ] = 10.0,
        scale_out: Annotated[
            bool,
            typer.Option(
                "--scale-out",
                help="Instead: --workers prescreen workers and --replicas replicas per "
                "partner take a stream of at least --candidates (default 10,000) at --rate "
                "(default 250/s) while every partner replica is restarted in turn; then one "
                "worker and one replica each take the same stream; decisions compared "
                "(docs/benchmarks.md#scale-out).",
            ),
        ] = False,
        workers: Annotated[int, typer.Option(help="--scale-out: prescreen workers.")] = 2,
        replicas: Annotated[
            int,
            typer.Option(
                help="--scale-out: replicas per partner (sharing its store); with 1, no "
                "rolling restart (it would be an outage)."
            ),
        ] = 2,
        plan: Annotated[
            list[float] | None,
            typer.Option(
                "--plan",
                help="Target rate, candidates/s (repeatable): print the cores, instances, "
                "Kafka partitions and broker throughput it needs, from the CPU per "
                "candidate the federated run measures (docs/benchmarks.md#capacity-plan).",
                show_default=False,
            ),
        ] = None,
        from_: Annotated[
            Path | None,
            typer.Option(
                "--from",
                help="With --plan: plan from this saved results JSON instead of running.",
                show_default=False,
            ),
        ] = None,
        headroom: Annotated[
            float, typer.Option(help="--plan: the share of its cores an instance may keep busy.")
        ] = 0.7,
    ) -> None:
        """Benchmark the pipeline (federated and plaintext) and the crypto; write JSON.
        With --soak, a long steady run for memory growth and latency drift instead; with
        --plan RATE --from FILE, a capacity plan from a saved run."""
        rates = tuple(plan or ())
        assumptions = check_plan(rates, headroom)
        if from_ is not None:
            if soak:
                raise CliError("--from does not apply to --soak")
            plan_from_file(from_, rates, assumptions)
            return
        if soak and scale_out:
            raise CliError("--soak and --scale-out are two different runs: choose one")
        if scale_out:
            if rates:
                raise CliError("--plan does not apply to --scale-out (use a federated bench run)")
            run_scale_out_command(
                10_000 if candidates is None else candidates,
                rate,
                rows,
                out,
                workdir,
                100.0 if linger_ms is None else linger_ms,
                workers,
                replicas,
            )
            return
        linger_ms = 20.0 if linger_ms is None else linger_ms
        if soak:
            if rates:
                raise CliError("--plan does not apply to --soak (use a federated bench run)")
            run_soak_command(rate, duration, interval, rows, out, workdir, linger_ms, training)
            return
        from services.bench.run import BenchRequest, run_bench

        candidates = 40_000 if candidates is None else candidates

        rate = 500.0 if rate is None else rate
        duration = 20.0 if duration is None else duration
        out = default_out(out, workdir, "bench-results.json")
        if candidates < 1:
            raise CliError("--candidates must be at least 1")
        check_load(rate, duration)
        check_setup(rows, linger_ms)
        if factor_pool < 1:
            raise CliError("--factor-pool must be at least 1")
        if not micro and not pipeline and not training:
            raise CliError("nothing to run: --no-micro and --no-pipeline without --training")
        parsed = parse_modes(modes)
        if rates and (not pipeline or "federated" not in parsed):
            raise CliError(
                "--plan needs the federated pipeline run (--modes federated, no "
                "--no-pipeline), or --from a saved results file"
            )
        if out.exists() and out.is_dir():
            raise CliError(f"--out {out} is a directory")
        request = BenchRequest(
            candidates=candidates,
            rate=rate,
            duration_s=duration,
            modes=parsed,
            micro=micro,
            pipeline=pipeline,
            out=out,
            workdir=workdir,
            rows=rows,
            linger_ms=linger_ms,
            training=training,
            factor_pool=factor_pool,
            plans=rates,
            assumptions=assumptions,
        )
        run_or_fail(
            lambda: run_bench(request),
            could_not="the benchmark could not run",
            broke=f"the benchmark found problems (listed above; results in {out})",
        )


def default_out(out: Path | None, workdir: Path, name: str) -> Path:
    """The results file: ``--out``, or ``name`` in the work directory, so that a run
    leaves nothing in the directory it was started from."""
    return workdir / name if out is None else out


def check_plan(rates: tuple[float, ...], headroom: float) -> Assumptions:
    for rate in rates:
        if not 0 < rate <= 100_000_000:
            raise CliError(f"--plan {rate:g}: a target rate must be in (0, 100000000] candidates/s")
    if not 0 < headroom <= 1:
        raise CliError("--headroom must be in (0, 1]")
    return Assumptions(headroom=headroom)


def plan_from_file(path: Path, rates: tuple[float, ...], assumptions: Assumptions) -> None:
    """``--plan RATE --from FILE``: print the plans from a saved run; no run, no file."""
    from rich.console import Console

    from services.bench.capacity import PlanError, inputs_from_results, plan
    from services.bench.report import print_measured, print_plan

    if not rates:
        raise CliError("--from needs at least one --plan RATE")
    if not path.is_file():
        raise CliError(f"--from {path}: no such file")
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"--from {path}: not a bench results JSON file ({exc})") from exc
    if not isinstance(results, dict):
        raise CliError(f"--from {path}: not a bench results JSON file (not an object)")
    try:
        measured = inputs_from_results(results)
        plans = [plan(measured.cpu, measured.traffic, r, assumptions) for r in rates]
    except (PlanError, KeyError, TypeError, ValueError) as exc:
        raise CliError(f"--from {path}: {exc}") from exc
    console = Console(width=None if sys.stdout.isatty() else 120)
    print_measured(console, measured)
    for made in plans:
        print_plan(console, made, measured_on=measured.machine)


def check_load(rate: float, duration: float) -> None:
    """--rate and --duration, as the benchmark and --soak both bound them."""
    if not 0 < rate <= 100_000:
        raise CliError("--rate must be in (0, 100000] candidates/s")
    if not 0 < duration <= 3600:
        raise CliError("--duration must be in (0, 3600] seconds")


def check_setup(rows: int | None, linger_ms: float) -> None:
    """--rows and --linger-ms, as the benchmark and --soak both bound them."""
    if rows is not None and not 100 <= rows <= 30_000:
        raise CliError("--rows must be between 100 and 30000")
    if not 0 < linger_ms <= 10_000:
        raise CliError("--linger-ms must be in (0, 10000]")


def run_or_fail(run: Callable[[], int], *, could_not: str, broke: str) -> None:
    """Run the benchmark or the soak; a run that could not start or found problems is a
    CliError (``could_not: <why>``, or ``broke``)."""
    try:
        code = run()
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        # A service that would not start, a broker port, the data file: the message
        # (with the failing service's log tail) is the useful part, not the traceback.
        raise CliError(f"{could_not}: {exc}") from exc
    if code != 0:
        raise CliError(broke)


def run_scale_out_command(
    candidates: int,
    rate: float | None,
    rows: int | None,
    out: Path | None,
    workdir: Path,
    linger_ms: float,
    workers: int,
    replicas: int,
) -> None:
    from services.bench.scaleout import ScaleOutOptions, run_scale_out

    rate = 250.0 if rate is None else rate
    out = default_out(out, workdir, "scale-out-results.json")
    if candidates < 1:
        raise CliError("--candidates must be at least 1")
    check_load(rate, 1.0)
    check_setup(rows, linger_ms)
    if not 1 <= workers <= 8:
        raise CliError("--workers must be between 1 and 8")
    if not 1 <= replicas <= 8:
        raise CliError("--replicas must be between 1 and 8")
    if workers == 1 and replicas == 1:
        raise CliError("--scale-out needs more than one worker or replica to compare with one")
    if out.exists() and out.is_dir():
        raise CliError(f"--out {out} is a directory")
    options = ScaleOutOptions(
        workdir=workdir,
        candidates=candidates,
        rate=rate,
        rows=rows,
        workers=workers,
        replicas=replicas,
        linger_ms=linger_ms,
    )
    run_or_fail(
        lambda: run_scale_out(options, out),
        could_not="the scale-out run could not run",
        broke=f"the scale-out run found problems (listed above; results in {out})",
    )


def run_soak_command(
    rate: float | None,
    duration: float | None,
    interval: float,
    rows: int | None,
    out: Path | None,
    workdir: Path,
    linger_ms: float,
    training: bool,
) -> None:
    from services.bench.soak.command import SoakRequest, run_soak

    rate = 300.0 if rate is None else rate
    duration = 600.0 if duration is None else duration
    out = default_out(out, workdir, "soak-results.json")
    rows = 2000 if rows is None else rows
    if training:
        raise CliError("--training does not apply to --soak")
    check_load(rate, duration)
    if not 1 <= interval <= 600:
        raise CliError("--interval must be in [1, 600] seconds")
    if duration < 4 * interval:
        raise CliError("--duration must be at least 4 x --interval (warm-up, two halves)")
    check_setup(rows, linger_ms)
    if out.exists() and out.is_dir():
        raise CliError(f"--out {out} is a directory")
    request = SoakRequest(
        duration_s=duration,
        rate=rate,
        interval_s=interval,
        rows=rows,
        out=out,
        workdir=workdir,
        linger_ms=linger_ms,
    )
    run_or_fail(
        lambda: run_soak(request),
        could_not="the soak could not run",
        broke=f"the soak run broke (problems listed above; results in {out})",
    )

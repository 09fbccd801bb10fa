"""``fedscreen bench``: pipeline throughput and latency per mode, the crypto
micro-benchmark, and every number with the machine in one JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.kernel.errors import CliError

VALID_MODES = ("federated", "plaintext")


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
            int, typer.Option(help="Candidates in the throughput run, per mode.")
        ] = 40_000,
        rate: Annotated[
            float, typer.Option(help="Offered load of the latency run, candidates/s.")
        ] = 500.0,
        duration: Annotated[float, typer.Option(help="Length of the latency run, s.")] = 20.0,
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
        out: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path(
            "bench-results.json"
        ),
        workdir: Annotated[
            Path, typer.Option(help="Scratch directory: keys, stores, logs per mode.")
        ] = Path(".fedscreen/bench"),
        rows: Annotated[
            int | None,
            typer.Option(help="Customers: the first N of the 30,000 (default all)."),
        ] = None,
        training: Annotated[
            bool,
            typer.Option(
                help="Also time one training round against the naive python-paillier protocol."
            ),
        ] = False,
        linger_ms: Annotated[
            float,
            typer.Option(help="Intake's batch linger (INTAKE_LINGER_MS): latency vs batch size."),
        ] = 20.0,
    ) -> None:
        """Benchmark the pipeline (federated and plaintext) and the crypto; write JSON."""
        from services.bench.run import BenchRequest, run_bench

        if candidates < 1:
            raise CliError("--candidates must be at least 1")
        if not 0 < rate <= 100_000:
            raise CliError("--rate must be in (0, 100000] candidates/s")
        if not 0 < duration <= 3600:
            raise CliError("--duration must be in (0, 3600] seconds")
        if rows is not None and not 100 <= rows <= 30_000:
            raise CliError("--rows must be between 100 and 30000")
        if not 0 < linger_ms <= 10_000:
            raise CliError("--linger-ms must be in (0, 10000]")
        if not micro and not pipeline and not training:
            raise CliError("nothing to run: --no-micro and --no-pipeline without --training")
        if out.exists() and out.is_dir():
            raise CliError(f"--out {out} is a directory")
        request = BenchRequest(
            candidates=candidates,
            rate=rate,
            duration_s=duration,
            modes=parse_modes(modes),
            micro=micro,
            pipeline=pipeline,
            out=out,
            workdir=workdir,
            rows=rows,
            linger_ms=linger_ms,
            training=training,
        )
        try:
            code = run_bench(request)
        except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
            # A service that would not start, a broker port, the data file: the message
            # (with the failing service's log tail) is the useful part, not the traceback.
            raise CliError(f"the benchmark could not run: {exc}") from exc
        if code != 0:
            raise CliError(f"the benchmark found problems (listed above; results in {out})")

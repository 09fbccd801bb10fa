"""``fedscreen candidates send|decisions``: the bank systems' side, for trying it out."""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, TextIO

import typer

from services.kernel.errors import CliError


def register(app: typer.Typer) -> None:
    candidates = typer.Typer(
        help="Stand in for the bank's systems: send candidate events from a CSV, read the "
        "decisions back.",
        no_args_is_help=True,
    )
    app.add_typer(candidates, name="candidates")

    @candidates.command("send")
    def send(
        csv_path: Annotated[
            Path, typer.Option("--csv", help="The bank's CSV: ids and its features.")
        ],
        campaign: Annotated[str, typer.Option(help="The campaign every candidate is for.")],
        id_column: Annotated[str, typer.Option(help="Customer id column.")] = "ID",
        features: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated bank feature columns sent with each candidate. Default: "
                "every column but the id and the label."
            ),
        ] = None,
        label_column: Annotated[
            str, typer.Option(help="Never sent (when --features is not given).")
        ] = "default.payment.next.month",
        rows: Annotated[
            int | None, typer.Option(min=1, help="Only the first N rows (default: all).")
        ] = None,
        consent: Annotated[
            bool, typer.Option(help="The consent_marketing flag of every candidate.")
        ] = True,
    ) -> None:
        """Publish one CandidateEvent per row to bank.candidates.v1, keyed by customer id
        (KAFKA_* settings). Event ids are ev-<campaign>-<customer id>."""
        import asyncio

        from aiokafka.errors import KafkaError

        from services.candidates.events import read_candidates
        from services.candidates.events import send as send_events
        from services.kernel.config import KafkaSettings, load_settings

        names = None
        if features is not None:
            names = [c.strip() for c in features.split(",") if c.strip()]
            if not names:
                raise CliError(f"--features: expected comma-separated columns, got {features!r}")
        events = read_candidates(
            csv_path,
            id_column=id_column,
            features=names,
            exclude=[label_column],
            campaign=campaign,
            consent=consent,
            rows=rows,
        )
        kafka = load_settings(KafkaSettings)
        try:
            asyncio.run(send_events(kafka, events))
        except KafkaError as exc:
            raise CliError(f"Kafka at {kafka.bootstrap_servers}: {exc}") from exc
        typer.echo(f"sent {len(events)} candidates for {campaign} to bank.candidates.v1")

    @candidates.command("decisions")
    def decisions(
        count: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Wait until this many candidates are decided (default: read what is "
                "there and stop).",
            ),
        ] = None,
        timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait at most.")] = 300.0,
        out: Annotated[
            Path | None, typer.Option(help="JSON lines file (default: standard output).")
        ] = None,
    ) -> None:
        """Read prescreen.decisions.v1 from the beginning (no consumer group, KAFKA_*
        settings), one JSON line per decided candidate, then a summary on standard error; exits 1
        if fewer than --count candidates were decided within --timeout."""
        import asyncio

        from aiokafka.errors import KafkaError

        from services.candidates.events import collect
        from services.kernel.config import KafkaSettings, load_settings

        kafka = load_settings(KafkaSettings)
        with ExitStack() as stack:
            sink: TextIO = sys.stdout
            if out is not None:
                try:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    sink = stack.enter_context(out.open("w"))
                except OSError as exc:
                    raise CliError(f"cannot write {out}: {exc.strerror}") from exc
            try:
                seen = asyncio.run(collect(kafka, count, timeout, sink))
            except TimeoutError as exc:
                raise CliError(f"no topic prescreen.decisions.v1 within {timeout:.0f}s") from exc
            except KafkaError as exc:
                raise CliError(f"Kafka at {kafka.bootstrap_servers}: {exc}") from exc
        outcomes = Counter((d.outcome, d.reasons[0].value) for d in seen.decisions.values())
        summary = ", ".join(f"{o} {r}: {n}" for (o, r), n in sorted(outcomes.items()))
        typer.echo(
            f"{len(seen.decisions)} candidates decided ({summary or 'none'})"
            + (f"; {seen.invalid} records were not decisions" if seen.invalid else ""),
            err=True,
        )
        if count is not None and len(seen.decisions) < count:
            raise CliError(
                f"only {len(seen.decisions)} of {count} candidates decided within {timeout:.0f}s"
            )

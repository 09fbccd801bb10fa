"""``fedscreen evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        data: Annotated[Path, typer.Option(help="CSV with ids, every party's columns, label.")],
        id_column: Annotated[str, typer.Option("--id", help="Customer id column.")],
        label_column: Annotated[str, typer.Option("--label", help="0/1 label column.")],
        bank: Annotated[str, typer.Option(help="Comma-separated bank feature columns.")],
        partner: Annotated[
            list[str],
            typer.Option("--partner", help="NAME=COL1,COL2 (repeat per partner; a-z, 0-9, -)."),
        ],
        out: Annotated[Path, typer.Option(help="predictions.csv, report.json, report.html.")],
        test_size: Annotated[float, typer.Option(help="Share of rows held out, in (0, 1).")] = 0.3,
        seed: Annotated[
            int, typer.Option(min=0, max=2**32 - 1, help="Split and reference-model seed.")
        ] = 0,
        rounds: Annotated[
            int, typer.Option(min=1, max=200, help="Federated training rounds at most.")
        ] = 12,
        workdir: Annotated[
            Path | None,
            typer.Option(help="Scratch (keys, stores, logs); empty or new. Default: temp in OUT."),
        ] = None,
        audit: Annotated[
            bool,
            typer.Option(
                help="Also run the privacy attacks on this run (with the bank's key) and write "
                "audit.json and audit.html; exits 1 if any attack beats guessing."
            ),
        ] = False,
    ) -> None:
        """Federated model vs bank-only floor and pooled ceiling on one stratified split,
        through the real protocol (embedded broker, a process per party)."""
        import asyncio

        from services.evaluate.spec import build_spec
        from services.evaluate.split import read_dataset

        # Input problems surface before the heavy imports and before any process starts.
        spec = build_spec(
            data=data,
            id_column=id_column,
            label_column=label_column,
            bank=bank,
            partners=partner,
            test_size=test_size,
            seed=seed,
            out_dir=out,
            rounds=rounds,
            workdir=workdir,
            audit=audit,
        )
        dataset = read_dataset(spec)
        from services.evaluate.run import evaluate as run_evaluation

        outputs = asyncio.run(run_evaluation(spec, dataset, typer.echo))
        e = outputs.evaluation
        for key, model in e.models.items():
            typer.echo(f"{key}: AUC {model.auc:.4f}, KS {model.ks:.4f}")
        typer.echo(
            f"training {e.training.seconds:.0f}s, rounds {e.training.rounds_run} run / "
            f"{e.training.rounds_kept} kept; wrote {outputs.predictions}, "
            f"{outputs.report_json}, {outputs.report_html}"
        )
        if outputs.audit is not None:
            for attack in outputs.audit.attacks:
                typer.echo(
                    f"audit: {attack.verdict:>6}  {attack.adversary}: {attack.name} "
                    f"({attack.target}): {attack.recovered_fraction:.2%} recovered, "
                    f"baseline {attack.baseline_fraction:.2%}"
                )
            typer.echo(f"wrote {out / 'audit.json'}, {out / 'audit.html'}")
            if not outputs.audit.holds:
                raise typer.Exit(1)

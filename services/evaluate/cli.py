"""``fedscreen evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.kernel.errors import CliError

REFERENCE = "the reference split (data/README.md)"


def register(app: typer.Typer) -> None:
    @app.command("split")
    def split_command(
        data: Annotated[Path, typer.Option(help="CSV with ids, every party's columns, label.")],
        out: Annotated[
            Path,
            typer.Option(
                help="Writes OUT/bank/train.csv, test.csv (ids, bank columns, label), "
                "OUT/bank/customers.csv (every id) and OUT/partners/<name>/features.csv."
            ),
        ],
        id_column: Annotated[str, typer.Option("--id", help="Customer id column.")] = "ID",
        label_column: Annotated[
            str, typer.Option("--label", help="0/1 label column.")
        ] = "default.payment.next.month",
        bank: Annotated[
            str | None,
            typer.Option(help=f"Comma-separated bank feature columns. Default: {REFERENCE}."),
        ] = None,
        partner: Annotated[
            list[str] | None,
            typer.Option(
                "--partner",
                help=f"NAME=COL1,COL2 (repeat per partner; a-z, 0-9, -). Default: {REFERENCE}.",
            ),
        ] = None,
        rows: Annotated[
            int | None,
            typer.Option(min=10, help="Keep a stratified sample of this many rows first."),
        ] = None,
        test_size: Annotated[float, typer.Option(help="Share of rows held out, in (0, 1).")] = 0.3,
        seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Split seed.")] = 0,
    ) -> None:
        """Split a data set between the bank and its partners, as `fedscreen evaluate` does:
        each party's own file with only its own columns (stratified on the label)."""
        from services.evaluate.spec import build_spec
        from services.evaluate.split import PartyFiles, read_dataset, sample, split, write_parties
        from services.stack import dataset as reference

        partners = partner or [
            f"{name}={','.join(columns)}" for name, columns in reference.REFERENCE_PARTNERS.items()
        ]
        spec = build_spec(
            data=data,
            id_column=id_column,
            label_column=label_column,
            bank=bank if bank is not None else ",".join(reference.BANK_FEATURES),
            partners=partners,
            test_size=test_size,
            seed=seed,
            out_dir=out,
        )
        dataset = read_dataset(spec)
        total = len(dataset.ids)
        if rows is not None:
            if rows > total:
                raise CliError(f"--rows {rows}: {data} has only {total} rows")
            dataset = dataset.take(sample(dataset.labels, rows, seed))
        parts = split(dataset.labels, spec.test_size, spec.seed)
        if out.exists() and not out.is_dir():
            raise CliError(f"--out {out} exists and is not a directory")
        files = PartyFiles.at(out, list(spec.partners))
        try:
            write_parties(dataset, spec, parts, files)
        except OSError as exc:
            raise CliError(f"cannot write under {out}: {exc.strerror}") from exc
        typer.echo(
            f"{len(dataset.ids)} of {total} rows: {len(parts.train)} to train, "
            f"{len(parts.test)} to test (stratified on {spec.label_column}, seed {spec.seed})"
        )
        typer.echo(
            f"bank: {files.train}, {files.test} ({spec.id_column}, "
            f"{','.join(spec.bank_columns)}, {spec.label_column}); {files.customers}"
        )
        for name, columns in spec.partners.items():
            typer.echo(f"{name}: {files.partners[name]} ({spec.id_column}, {','.join(columns)})")

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
        out: Annotated[
            Path,
            typer.Option(
                help="predictions.csv, predictions_reference.csv, report.json, report.html."
            ),
        ],
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
        quota_candidates: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="How many candidates the policy's campaign quotas are sized for: the "
                "outcome report releases each quota as the same share of the test rows. "
                "Default: 9000 (the demo's stream, which the packaged policy is sized for).",
            ),
        ] = None,
    ) -> None:
        """Federated model vs bank-only floor and pooled ceiling on one stratified split,
        through the real protocol (embedded broker, a process per party)."""
        import asyncio

        from services.evaluate.outcome import QUOTA_CANDIDATES
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
            quota_candidates=quota_candidates or QUOTA_CANDIDATES,
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
            f"{outputs.reference_predictions}, {outputs.report_json}, {outputs.report_html}"
        )
        if e.outcome is not None:
            typer.echo(f"outcome: {e.outcome.answer()}")
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

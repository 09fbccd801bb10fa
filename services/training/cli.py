"""``fedscreen train``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from services.kernel.errors import CliError


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        data: Annotated[Path, typer.Option(help="The bank's training CSV (ids, features, label).")],
        bank_features: Annotated[str, typer.Option(help="Comma-separated bank feature columns.")],
        partner: Annotated[list[str], typer.Option("--partner", help="A partner taking part.")],
        id_column: Annotated[str, typer.Option()] = "ID",
        label_column: Annotated[str, typer.Option()] = "default.payment.next.month",
        eval_data: Annotated[
            Path | None, typer.Option(help="Held-out rows: scored through the protocol, never fit.")
        ] = None,
        policy: Annotated[
            Path | None,
            typer.Option(
                help="Policy TOML embedded in the bundle. Default: the policy shipped with "
                "fedscreen (the same as deploy/policy.toml)."
            ),
        ] = None,
        token_keys_dir: Annotated[Path, typer.Option()] = Path("keys/tokens"),
        paillier_dir: Annotated[Path, typer.Option(help="Where the new key is written.")] = Path(
            "keys/paillier"
        ),
        signing_key: Annotated[
            Path,
            typer.Option(
                help="The bank's Ed25519 key (`fedscreen keys signing`): it signs every message "
                "to the partners and every bundle; they pin its public half.",
                envvar="FEDSCREEN_BANK_SIGNING_KEY_FILE",
            ),
        ] = Path("keys/bank-signing.pem"),
        partner_keys: Annotated[
            str,
            typer.Option(
                help="The partners' Ed25519 public keys, name=base64url,... (from each partner, "
                "out of band): every training reply must verify under its partner's key.",
                envvar="FEDSCREEN_PARTNER_KEYS",
            ),
        ] = "",
        out: Annotated[Path, typer.Option(help="Bundles and report go to OUT/<version>/.")] = Path(
            "models"
        ),
        rounds: Annotated[int, typer.Option(min=1, max=200)] = 12,
        key_bits: Annotated[int, typer.Option(min=2048)] = 2048,
        flag_bits: Annotated[
            int,
            typer.Option(
                min=8,
                max=64,
                help="t of the blacklist field: a candidate flagged by several partners "
                "reads as unflagged, and one flag is told from two, with probability "
                "1/(2^t - 1) (docs/crypto.md).",
            ),
        ] = 24,  # DEFAULT_FLAG_BITS (not imported: the CLI loads gmpy2 only when it runs)
        allow_hmac_tokens: Annotated[
            bool,
            typer.Option(
                help="Use keyed-HMAC tokens (<partner>.key) where no PSI token map exists: the "
                "partner can compute any id's token, so only for ids that cannot be guessed.",
                envvar="FEDSCREEN_ALLOW_HMAC_TOKENS",
            ),
        ] = False,
        trace_dir: Annotated[
            Path | None,
            typer.Option(
                help="Write what the bank holds after the session (its gradients, steps and "
                "decrypted aggregate scores) to DIR/trace.npz, for `fedscreen evaluate --audit`."
            ),
        ] = None,
        model_version: Annotated[str | None, typer.Option()] = None,
        rollout: Annotated[bool, typer.Option(help="Publish the bundles over Kafka.")] = True,
    ) -> None:
        """Federated training with the partners over Kafka (KAFKA_* settings)."""
        from rich.progress import Progress

        from services.kernel.config import KafkaSettings, load_settings
        from services.kernel.lifecycle import configure_logging
        from services.training.policy_file import load_policy
        from services.training.run import DataError, TrainJob, read_bank_csv, run_training
        from services.training.trainer import TrainParams

        configure_logging("WARNING")
        features = _names(bank_features)
        params = TrainParams(rounds=rounds, flag_bits=flag_bits)
        try:
            job = TrainJob(
                train=read_bank_csv(data, id_column, features, label_column),
                test=read_bank_csv(eval_data, id_column, features, label_column)
                if eval_data
                else None,
                bank_features=features,
                partners=partner,
                token_keys_dir=token_keys_dir,
                paillier_dir=paillier_dir,
                signing_key_file=signing_key,
                partner_keys=partner_keys,
                policy=load_policy(policy),
                out_dir=out,
                params=params,
                key_bits=key_bits,
                model_version=model_version,
                rollout=rollout,
                allow_hmac_tokens=allow_hmac_tokens,
                trace_dir=trace_dir,
            )
        except (DataError, ValueError) as exc:
            raise CliError(str(exc)) from exc
        with Progress() as bar:
            task = bar.add_task("federated training", total=1.0)

            def progress(stage: str, fraction: float) -> None:
                bar.update(task, completed=fraction, description=stage)

            result = asyncio.run(run_training(job, load_settings(KafkaSettings), progress))
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.trained.metrics.items())
        typer.echo(f"model {result.model_version} in {result.seconds:.0f}s: {metrics}")

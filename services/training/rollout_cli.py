"""``fedscreen rollout``: publish a stored model version again, e.g. to roll back.

Training writes each version's bundles to ``<out>/<version>/``. Publishing them again
with a fresh timestamp makes that version the newest: partners and prescreen still
hold its binning and key, announce it ready, and intake switches to it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from services.kernel.errors import CliError


def register(app: typer.Typer) -> None:
    @app.command("rollout")
    def rollout(
        model_dir: Annotated[
            Path, typer.Option(help="A version's directory written by `fedscreen train`.")
        ],
        signing_key: Annotated[
            Path,
            typer.Option(
                help="The bank's Ed25519 key: the republished partner bundles are signed again.",
                envvar="FEDSCREEN_BANK_SIGNING_KEY_FILE",
            ),
        ] = Path("keys/bank-signing.pem"),
    ) -> None:
        """Publish a stored model version (bank and partner bundles) as the newest."""
        from schemas import BankBundle, PartnerBundle
        from services.kernel.config import KafkaSettings, load_settings
        from services.kernel.crypto.signing import load_signing_key, signed
        from services.kernel.kafka.topics import ROLLOUT_BANK, rollout_topic
        from services.kernel.model.rollout import publish_bundle

        bank_file = model_dir / "bank-bundle.json"
        if not bank_file.is_file():
            raise CliError(f"{model_dir} has no bank-bundle.json (not a model directory)")
        now = datetime.now(UTC)
        try:
            bank = BankBundle.model_validate_json(bank_file.read_text())
            partners = {
                p.name.removeprefix("partner-").removesuffix(
                    ".json"
                ): PartnerBundle.model_validate_json(p.read_text())
                for p in sorted(model_dir.glob("partner-*.json"))
            }
        except ValidationError as exc:
            raise CliError(f"{model_dir}: unreadable bundle: {exc.error_count()} error(s)") from exc
        missing = {c.partner for c in bank.partners} - set(partners)
        if missing:
            raise CliError(
                f"{model_dir} lacks the bundle of partner(s) {', '.join(sorted(missing))}"
            )
        try:
            key = load_signing_key(signing_key)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        kafka = load_settings(KafkaSettings)

        async def publish() -> None:
            # Partners first, like training: they are ready before intake switches.
            for name, bundle in partners.items():
                fresh = signed(bundle.model_copy(update={"created_at": now}), key)
                await publish_bundle(kafka, rollout_topic(name), name, fresh)
            await publish_bundle(
                kafka, ROLLOUT_BANK, "bank", bank.model_copy(update={"created_at": now})
            )

        asyncio.run(publish())
        typer.echo(f"published {bank.model_version} to {len(partners)} partner(s) and the bank")

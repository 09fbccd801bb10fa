"""``fedscreen partner load|run``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from services.kernel.errors import CliError


def register(app: typer.Typer) -> None:
    partner = typer.Typer(help="The partner service (runs in the partner's domain).")
    app.add_typer(partner, name="partner")

    @partner.command("load")
    def load(
        csv_path: Annotated[Path, typer.Option("--csv", help="CSV with ids and features.")],
        id_column: Annotated[str, typer.Option(help="Customer id column (tokenised).")],
        features: Annotated[str, typer.Option(help="Comma-separated feature columns.")],
        token_key: Annotated[
            Path, typer.Option(help="File with the token key shared with the bank.")
        ],
        db: Annotated[Path, typer.Option(help="SQLite feature store to (re)create.")],
        blacklist_column: Annotated[str | None, typer.Option(help="0/1 blacklist column.")] = None,
    ) -> None:
        """Load the feature store from CSV; raw ids are tokenised and never stored."""
        from services.kernel.crypto.tokens import Tokenizer
        from services.partner.store import FeatureStore, StoreError

        names = [f.strip() for f in features.split(",") if f.strip()]
        try:
            tokenizer = Tokenizer.from_file(token_key)
            store = FeatureStore(db)
            try:
                count = store.load_csv(
                    csv_path,
                    id_column=id_column,
                    features=names,
                    tokenizer=tokenizer,
                    blacklist_column=blacklist_column,
                )
            finally:
                store.close()
        except (StoreError, ValueError) as exc:
            raise CliError(str(exc)) from exc
        typer.echo(f"loaded {count} customers with {len(names)} features into {db}")

    @partner.command("run")
    def run(
        log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    ) -> None:
        """Serve fragment requests and training rounds (settings from PARTNER_* / KAFKA_*)."""
        from services.kernel.config import KafkaSettings, load_settings
        from services.kernel.lifecycle import configure_logging
        from services.partner.service import PartnerService
        from services.partner.settings import PartnerSettings
        from services.partner.store import StoreError

        configure_logging(log_level)
        try:
            service = PartnerService(load_settings(PartnerSettings), load_settings(KafkaSettings))
        except (StoreError, ValueError) as exc:
            raise CliError(str(exc)) from exc
        asyncio.run(service.run())

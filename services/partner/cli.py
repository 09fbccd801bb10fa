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
        db: Annotated[
            str | None,
            typer.Option(
                help="The feature store to (re)load: a SQLite file, or a store URL "
                "(sqlite:///path, postgresql://user@host:port/db).",
            ),
        ] = None,
        store_url: Annotated[
            str | None,
            typer.Option(help="The store URL, as PARTNER_STORE_URL (instead of --db)."),
        ] = None,
        store_url_file: Annotated[
            Path | None,
            typer.Option(help="A file holding the store URL (a mounted Secret), instead."),
        ] = None,
        token_key: Annotated[
            Path | None, typer.Option(help="File with the token key shared with the bank (HMAC).")
        ] = None,
        token_map: Annotated[
            Path | None,
            typer.Option(
                help="customer_id,token CSV from `partner align` (PSI): shared customers only."
            ),
        ] = None,
        blacklist_column: Annotated[str | None, typer.Option(help="0/1 blacklist column.")] = None,
        allow_hmac_tokens: Annotated[
            bool,
            typer.Option(
                help="Required with --token-key: keyed-HMAC tokens let this partner compute any "
                "id's token, so the bank's ids must not be guessable (docs/privacy.md).",
            ),
        ] = False,
    ) -> None:
        """Load the feature store from CSV; raw ids are tokenised and never stored."""
        from services.kernel.crypto.tokens import HMAC_OPT_IN, Tokenizer, TokenMap, TokenSource
        from services.partner.store import (
            StoreError,
            as_store_url,
            open_store,
            read_store_url,
            redact,
        )

        names = [f.strip() for f in features.split(",") if f.strip()]
        try:
            tokenizer: TokenSource
            if token_key is not None and token_map is None:
                if not allow_hmac_tokens:
                    raise CliError(
                        "--token-key needs --allow-hmac-tokens: use a PSI --token-map unless the "
                        "ids cannot be guessed"
                    )
                typer.echo(f"warning: {HMAC_OPT_IN}", err=True)
                tokenizer = Tokenizer.from_file(token_key)
            elif token_map is not None and token_key is None:
                tokenizer = TokenMap.from_csv(token_map)
            else:
                raise CliError("give exactly one of --token-key (HMAC) and --token-map (PSI)")
            if [db, store_url, store_url_file].count(None) != 2:
                raise CliError("give exactly one of --db, --store-url and --store-url-file")
            if store_url_file is not None:
                url = read_store_url(store_url_file)
            else:
                url = as_store_url(store_url or db or "")
            store = open_store(url, create=True)
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
        where = db if db is not None and url.endswith(db) else redact(url)
        typer.echo(f"loaded {count} customers with {len(names)} features into {where}")

    @partner.command("align")
    def align(
        name: Annotated[str, typer.Option(envvar="PARTNER_NAME", help="This partner's name.")],
        csv_path: Annotated[Path, typer.Option("--csv", help="The partner's customers (CSV).")],
        id_column: Annotated[str, typer.Option(help="Customer id column.")],
        out: Annotated[
            Path, typer.Option(help="Writes customer_id,token for the shared customers (0600).")
        ],
        secret_file: Annotated[
            Path, typer.Option(help="This partner's PSI secret (created if missing, 0600).")
        ] = Path("keys/psi-partner.scalar"),
        timeout: Annotated[
            float, typer.Option(min=1.0, help="Seconds to wait for the bank's offer.")
        ] = 600.0,
        bank_key: Annotated[
            str,
            typer.Option(
                envvar="PARTNER_BANK_KEY",
                help="The bank's Ed25519 public key (base64url), obtained out of band: only "
                "an offer it signed gets this partner's secret applied.",
            ),
        ] = "",
        signing_key: Annotated[
            Path,
            typer.Option(
                envvar="PARTNER_SIGNING_KEY_FILE",
                help="This partner's Ed25519 key (signs its answer).",
            ),
        ] = Path("partner-signing.pem"),
        max_points: Annotated[
            int,
            typer.Option(min=1, help="Refuse offers of more points (ids) than this."),
        ] = 10_000_000,
    ) -> None:
        """Answer one private set intersection session from the bank (KAFKA_* settings), then
        exit. The token map it writes feeds `partner load --token-map`."""
        from aiokafka.errors import KafkaError

        from services.alignment.cli import check_partner_name
        from services.alignment.files import AlignmentInputError, read_ids, write_token_map
        from services.alignment.partner import OfferPolicy, answer_one
        from services.alignment.transport import AlignmentError
        from services.kernel.config import KafkaSettings, load_settings
        from services.kernel.crypto import psi, ristretto
        from services.kernel.crypto.signing import BankKey, load_signing_key
        from services.kernel.lifecycle import configure_logging

        configure_logging("WARNING")
        check_partner_name(name)
        unusable = (AlignmentInputError, psi.PsiProtocolError, ristretto.RistrettoUnavailableError)
        try:
            ids = read_ids(csv_path, id_column)
            secret, created = psi.load_or_create_secret(secret_file)
            policy = OfferPolicy(
                bank_key=BankKey.configured(bank_key, None),
                signing_key=load_signing_key(signing_key),
                max_points=max_points,
                answered_log=secret_file.with_name(secret_file.name + ".sessions"),
            )
        except (*unusable, ValueError) as exc:
            raise CliError(str(exc)) from exc
        if created:
            typer.echo(f"new PSI secret in {secret_file}: tokens differ from earlier runs")
        typer.echo(f"{name}: {len(ids)} customers, waiting for the bank's offer")
        kafka = load_settings(KafkaSettings)
        try:
            done = asyncio.run(answer_one(kafka, name, ids, secret, policy, timeout_s=timeout))
        except TimeoutError as exc:
            raise CliError(f"no offer from the bank within {timeout:.0f}s") from exc
        except KafkaError as exc:
            raise CliError(f"Kafka at {kafka.bootstrap_servers}: {exc}") from exc
        except (AlignmentError, *unusable) as exc:
            raise CliError(str(exc)) from exc
        write_token_map(out, done.intersection.tokens)
        typer.echo(
            f"session {done.session_id}: {len(done.intersection.tokens)} shared of "
            f"{done.intersection.other_size} bank customers -> {out}"
        )

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

"""``fedscreen align`` (the bank's side of ID alignment)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated

import typer

from services.kernel.errors import CliError

_PARTNER = re.compile(r"^[a-z0-9-]{1,48}$")


def check_partner_name(name: str) -> str:
    if not _PARTNER.match(name):
        raise CliError(f"partner name {name!r} is not lower-case letters, digits and dashes")
    return name


def register(app: typer.Typer) -> None:
    @app.command("align")
    def align(
        csv_path: Annotated[Path, typer.Option("--csv", help="The bank's customers (CSV).")],
        partner: Annotated[
            list[str], typer.Option("--partner", help="A partner to align with (repeatable).")
        ],
        id_column: Annotated[str, typer.Option(help="Customer id column.")] = "ID",
        secret_dir: Annotated[
            Path,
            typer.Option(help="The bank's PSI secrets, <partner>.scalar (created if missing)."),
        ] = Path("keys/psi"),
        out: Annotated[
            Path, typer.Option(help="Writes OUT/<partner>.csv: customer_id,token (shared only).")
        ] = Path("aligned"),
        timeout: Annotated[
            float, typer.Option(min=1.0, help="Seconds to wait for each partner's answer.")
        ] = 600.0,
        signing_key: Annotated[
            Path,
            typer.Option(
                help="The bank's Ed25519 key: partners act only on offers it signed.",
                envvar="FEDSCREEN_BANK_SIGNING_KEY_FILE",
            ),
        ] = Path("keys/bank-signing.pem"),
        partner_keys: Annotated[
            str,
            typer.Option(
                help="The partners' Ed25519 public keys, name=base64url,...: an answer counts "
                "only if it verifies under the key of the partner it names.",
                envvar="FEDSCREEN_PARTNER_KEYS",
            ),
        ] = "",
    ) -> None:
        """Private set intersection with each partner over Kafka (KAFKA_* settings): per
        partner, tokens for the customers both hold, and nothing about the others."""
        from aiokafka.errors import KafkaError
        from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

        from services.alignment.bank import AlignJob
        from services.alignment.bank import align as run_align
        from services.alignment.files import AlignmentInputError, read_ids
        from services.alignment.transport import AlignmentError
        from services.kernel.config import KafkaSettings, load_settings
        from services.kernel.crypto import ristretto
        from services.kernel.crypto.signing import PartnerKeyRegistry, load_signing_key
        from services.kernel.lifecycle import configure_logging

        configure_logging("WARNING")
        partners = list(dict.fromkeys(check_partner_name(p) for p in partner))
        try:
            ids = read_ids(csv_path, id_column)
            ristretto.require()
            key = load_signing_key(signing_key)
            registry = PartnerKeyRegistry.parse(partner_keys)
        except (AlignmentInputError, ristretto.RistrettoUnavailableError, ValueError) as exc:
            raise CliError(str(exc)) from exc
        job = AlignJob(ids, partners, secret_dir, out, key, registry, timeout)
        kafka = load_settings(KafkaSettings)
        with Progress(
            TextColumn("{task.fields[partner]:<16}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        ) as bar:
            tasks: dict[str, TaskID] = {
                name: bar.add_task("starting", total=1.0, partner=name) for name in partners
            }

            def progress(name: str, stage: str, fraction: float) -> None:
                bar.update(tasks[name], completed=fraction, description=stage)

            try:
                outcomes, failures = asyncio.run(run_align(job, kafka, progress))
            except AlignmentError as exc:
                raise CliError(str(exc)) from exc
            except KafkaError as exc:
                raise CliError(f"Kafka at {kafka.bootstrap_servers}: {exc}") from exc
        typer.echo(f"{len(ids)} bank customers")
        for outcome in outcomes:
            note = " (new secret: tokens differ from earlier runs)" if outcome.new_secret else ""
            typer.echo(
                f"{outcome.partner}: {outcome.shared} shared of {outcome.partner_size} "
                f"partner customers in {outcome.seconds:.1f}s, "
                f"{outcome.bytes_sent + outcome.bytes_received} bytes -> {outcome.path}{note}"
            )
        if failures:
            raise CliError(
                "alignment failed for " + "; ".join(f"{p}: {e}" for p, e in failures.items())
            )

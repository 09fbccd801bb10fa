"""``fedscreen keys ...``: generate the keys each party needs (never committed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    keys = typer.Typer(
        help="Generate keys: Paillier (bank), signing and agreement (partner), token (shared)."
    )
    app.add_typer(keys, name="keys")

    @keys.command("paillier")
    def paillier(
        out_dir: Annotated[Path, typer.Option(help="Directory for <key_id>.json (mode 0600).")],
        bits: Annotated[int, typer.Option(min=2048, help="Modulus size.")] = 2048,
    ) -> None:
        """The bank's Paillier key pair for a model version."""
        from services.kernel.crypto.paillier import generate_keypair, save_private_key

        key = generate_keypair(bits)
        save_private_key(key, out_dir / f"{key.key_id}.json")
        typer.echo(key.key_id)

    @keys.command("signing")
    def signing(out: Annotated[Path, typer.Option(help="PEM file for the private key.")]) -> None:
        """A partner's Ed25519 fragment-signing key; prints the public key to register."""
        from services.kernel.crypto.signing import new_signing_key, public_key_b64, save_signing_key

        key = new_signing_key()
        save_signing_key(key, out)
        typer.echo(public_key_b64(key))

    @keys.command("agreement")
    def agreement(
        out: Annotated[Path, typer.Option(help="PEM file for the private key (mode 0600).")],
    ) -> None:
        """A partner's X25519 key for secure aggregation; prints the public key. The partner
        publishes it itself (signed) on fed.agreement-keys.v1 when it starts."""
        from services.partner.agreement import (
            agreement_public_b64,
            new_agreement_key,
            save_agreement_key,
        )

        key = new_agreement_key()
        save_agreement_key(key, out)
        typer.echo(agreement_public_b64(key))

    @keys.command("token")
    def token(out: Annotated[Path, typer.Option(help="File for the shared token key.")]) -> None:
        """A bank-partner token key (keyed-HMAC pseudonyms)."""
        from services.kernel.crypto.paillier import write_secret
        from services.kernel.crypto.tokens import new_token_key

        write_secret(out, (new_token_key() + "\n").encode())
        typer.echo(f"wrote {out}")

"""``fedscreen keys ...``: generate the keys each party needs (never committed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SIGNING_LABEL = (
    "public key (hand it over out of band: the bank's is pinned as PARTNER_BANK_KEY; "
    "a partner's goes into FEDSCREEN_PARTNER_KEYS, PRESCREEN_PARTNER_KEYS and "
    "the other partners' PARTNER_PEER_SIGNING_KEYS)"
)
"""What ``keys signing`` prints before ``: <key>``; scripts take the last word."""
AGREEMENT_LABEL = (
    "agreement public key (nothing to hand over: the partner publishes it, signed, "
    "on fed.agreement-keys.v1)"
)


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
    def signing(
        out: Annotated[Path, typer.Option(help="PEM file for the private key (mode 0600).")],
        public_out: Annotated[
            Path | None,
            typer.Option(help="Also write the bare public key (base64url) to this file."),
        ] = None,
    ) -> None:
        """An Ed25519 signing key (the bank's or a partner's); prints its public key on one
        line, `public key (...): <base64url>`: the key is the last word."""
        from services.kernel.crypto.signing import new_signing_key, public_key_b64, save_signing_key

        key = new_signing_key()
        save_signing_key(key, out)
        public = public_key_b64(key)
        if public_out is not None:
            public_out.parent.mkdir(parents=True, exist_ok=True)
            public_out.write_text(public + "\n")
        typer.echo(f"{SIGNING_LABEL}: {public}")

    @keys.command("agreement")
    def agreement(
        out: Annotated[Path, typer.Option(help="PEM file for the private key (mode 0600).")],
    ) -> None:
        """A partner's X25519 key for secure aggregation; prints the public key (labelled).
        The partner publishes it itself (signed) on fed.agreement-keys.v1 when it starts."""
        from services.partner.agreement import (
            agreement_public_b64,
            new_agreement_key,
            save_agreement_key,
        )

        key = new_agreement_key()
        save_agreement_key(key, out)
        typer.echo(f"{AGREEMENT_LABEL}: {agreement_public_b64(key)}")

    @keys.command("token")
    def token(out: Annotated[Path, typer.Option(help="File for the shared token key.")]) -> None:
        """A bank-partner token key (keyed-HMAC pseudonyms)."""
        from services.kernel.crypto.paillier import write_secret
        from services.kernel.crypto.tokens import new_token_key

        write_secret(out, (new_token_key() + "\n").encode())
        typer.echo(f"wrote {out}")

"""ID alignment for a local run: ECDH-PSI between the bank and each partner, every side
its own process over the embedded broker (as in production: `fedscreen align` and
`fedscreen partner align`), then each partner's store loaded with its PSI tokens only
(`fedscreen partner load --token-map`). The demo and `fedscreen evaluate` use it, so
both run on the tokens the product uses by default."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.kernel.kafka.broker import EmbeddedBroker
from services.stack.fixtures import Deployment


@dataclass(frozen=True)
class PartnerInput:
    """A partner's own CSV (its ids and features) and where its files go."""

    name: str
    csv: Path
    features: list[str]
    blacklist_column: str | None = None

    @property
    def directory(self) -> Path:
        return self.csv.parent


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


async def align_and_load(
    broker: EmbeddedBroker,
    deployment: Deployment,
    bank_ids: Path,
    id_column: str,
    partners: list[PartnerInput],
    logs: Path,
    timeout_s: float = 600.0,
) -> dict[str, int]:
    """Align every partner with the bank, load each store; returns the shared customers
    per partner. The bank's token maps land in ``deployment.token_dir``."""
    env = {**os.environ, **broker.env()}
    logs.mkdir(parents=True, exist_ok=True)
    # The partners are other organisations: their output goes to their logs.
    handles = {p.name: (logs / f"align-{p.name}.log").open("wb") for p in partners}
    try:
        answering = [
            await asyncio.create_subprocess_exec(
                *_cli(
                    "partner",
                    "align",
                    "--name",
                    p.name,
                    "--csv",
                    str(p.csv),
                    "--id-column",
                    id_column,
                    "--secret-file",
                    str(p.directory / "psi.scalar"),
                    "--out",
                    str(p.directory / "tokens.csv"),
                    "--bank-key",
                    deployment.bank_public_key,
                    "--signing-key",
                    str(deployment.new_signing_key(p.name)),
                    "--timeout",
                    str(timeout_s),
                ),
                env=env,
                stdout=handles[p.name],
                stderr=subprocess.STDOUT,
            )
            for p in partners
        ]
        with (logs / "align-bank.log").open("wb") as bank_log:
            bank = await asyncio.create_subprocess_exec(
                *_cli(
                    "align",
                    "--csv",
                    str(bank_ids),
                    "--id-column",
                    id_column,
                    *(arg for p in partners for arg in ("--partner", p.name)),
                    "--secret-dir",
                    str(deployment.root / "keys" / "psi"),
                    "--out",
                    str(deployment.token_dir),
                    "--signing-key",
                    str(deployment.bank_signing_key),
                    "--partner-keys",
                    deployment.registry_spec,
                    "--timeout",
                    str(timeout_s),
                ),
                env=env,
                stdout=bank_log,
                stderr=subprocess.STDOUT,
            )
            codes = await asyncio.gather(bank.wait(), *(p.wait() for p in answering))
    finally:
        for handle in handles.values():
            handle.close()
    if any(codes):
        raise RuntimeError(f"alignment failed (exit codes {codes}; logs in {logs})")
    shared = {}
    for p in partners:
        db = p.directory / "features.sqlite"
        loaded = await asyncio.to_thread(
            subprocess.run,
            _cli(
                "partner",
                "load",
                "--csv",
                str(p.csv),
                "--id-column",
                id_column,
                "--features",
                ",".join(p.features),
                *(["--blacklist-column", p.blacklist_column] if p.blacklist_column else []),
                "--token-map",
                str(p.directory / "tokens.csv"),
                "--db",
                str(db),
            ),
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if loaded.returncode != 0:
            raise RuntimeError(f"partner load failed for {p.name}: {loaded.stderr.strip()}")
        deployment.partner_dbs[p.name] = db
        shared[p.name] = len((deployment.token_dir / f"{p.name}.csv").read_text().splitlines()) - 1
    return shared

"""Prescreen settings (env prefix ``PRESCREEN_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.config import InstanceId, MetricsHost


class PrescreenSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRESCREEN_", extra="ignore")

    app_id: str = "fedscreen-prescreen"
    private_keys_dir: Path = Field(
        default=Path("keys/paillier"), description="Paillier private keys (<key_id>.json)."
    )
    partner_keys: str = Field(
        default="", description="Registered fragment-signing keys: name=base64url,..."
    )
    signing_key_file: Path = Field(
        default=Path("keys/bank-signing.pem"),
        description="Ed25519 key that signs this worker's readiness announcements on "
        "model.ready.v1: the bank's signing key by default (intake verifies under its own "
        "key's public half), or a key of prescreen's own whose public half intake is given "
        "in INTAKE_PRESCREEN_KEY. Partners cannot forge either.",
    )
    instance_id: InstanceId = ""
    allow_plaintext: bool = Field(
        default=False, description="Benchmark only: accept plaintext-mode fragments."
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Input handlers in this worker: while one waits for the broker to "
        "acknowledge a batch's decisions, the others join and decide other batches.",
    )
    deadline_check_s: float = Field(default=0.05, gt=0, description="Deadline timer period.")
    orphan_fragment_s: float = Field(
        default=60.0, gt=0, description="Drop fragments whose batch never arrives after this."
    )
    decided_retention_s: float = Field(
        default=3600.0, gt=0, description="How long a decided batch id is remembered."
    )
    quota_redecide_window_s: float = Field(
        default=120.0,
        gt=0,
        description="After a restart, the releases of this many seconds before a "
        "partition's last counted release are read back: a batch whose releases reached "
        "the broker just before a crash but whose decision was not recorded is decided "
        "again, and releases them again without counting them twice. Far longer than a "
        "decision takes to be recorded after its releases are acknowledged.",
    )
    data_dir: Path = Field(default=Path(".fedscreen/prescreen"), description="faust data dir.")
    metrics_port: int = 0
    metrics_host: MetricsHost = "0.0.0.0"

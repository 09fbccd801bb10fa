"""Partner settings (env prefix ``PARTNER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PartnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARTNER_", extra="ignore")

    name: str = Field(default="partner", pattern=r"^[a-z0-9-]+$")
    db: Path = Field(default=Path("partner.sqlite"), description="The feature store (SQLite).")
    signing_key_file: Path = Field(
        default=Path("partner-signing.pem"), description="Ed25519 key that signs fragments."
    )
    max_bins: int = Field(default=32, ge=2, le=255, description="Cap on bins per feature.")
    allow_plaintext: bool = Field(
        default=False, description="Benchmark only: answer plaintext bundles without encryption."
    )
    metrics_port: int = Field(default=0, description="0 disables /metrics, /healthz, /readyz.")
    bundle_wait_s: float = Field(
        default=5.0, description="How long a request may wait for its model version to load."
    )

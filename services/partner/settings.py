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
        default=Path("partner-signing.pem"),
        description="Ed25519 key that signs fragments and this partner's agreement key.",
    )
    agreement_key_file: Path = Field(
        default=Path("partner-agreement.pem"),
        description="X25519 key for the pairwise masks of secure aggregation "
        "(`fedscreen keys agreement`).",
    )
    peer_signing_keys: str = Field(
        default="",
        description="The other partners' Ed25519 signing keys, name=base64url,... (obtained "
        "from each partner, not through the bank): only agreement keys they sign are used, "
        "and only these partners may appear in a request's participants.",
    )
    min_participants: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Refuse requests with fewer participants: with 1, a partner left alone "
        "after the others missed the deadline answers unmasked, so the bank reads its "
        "blacklist bits; 2 refuses that.",
    )
    max_bins: int = Field(default=32, ge=2, le=255, description="Cap on bins per feature.")
    allow_plaintext: bool = Field(
        default=False, description="Benchmark only: answer plaintext bundles without encryption."
    )
    metrics_port: int = Field(default=0, description="0 disables /metrics, /healthz, /readyz.")
    bundle_wait_s: float = Field(
        default=5.0, description="How long a request may wait for its model version to load."
    )

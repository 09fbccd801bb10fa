"""Intake settings (env prefix ``INTAKE_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.config import MetricsHost


class IntakeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore")

    token_keys_dir: Path = Field(
        default=Path("keys/tokens"),
        description="Per partner: <partner>.csv, the token map from `fedscreen align` (PSI), "
        "or, with INTAKE_ALLOW_HMAC_TOKENS, <partner>.key, a keyed-HMAC token key.",
    )
    allow_hmac_tokens: bool = Field(
        default=False,
        description="Opt in to keyed-HMAC tokens where no PSI token map exists. The partner "
        "can then compute any id's token: only for ids that cannot be guessed "
        "(docs/privacy.md).",
    )
    signing_key_file: Path = Field(
        default=Path("keys/bank-signing.pem"),
        description="The bank's Ed25519 key (`fedscreen keys signing`): it signs every fragment "
        "request, and every partner pins its public half (PARTNER_BANK_KEY).",
    )
    partner_keys: str = Field(
        default="",
        validation_alias=AliasChoices("INTAKE_PARTNER_KEYS", "FEDSCREEN_PARTNER_KEYS"),
        description="The partners' Ed25519 signing keys, name=base64url,... (as "
        "PRESCREEN_PARTNER_KEYS; FEDSCREEN_PARTNER_KEYS when unset): a partner replica's "
        "readiness announcement counts only if it verifies under its partner's key.",
    )
    prescreen_key: str = Field(
        default="",
        description="The public half (base64url) of the key prescreen signs its readiness "
        "announcements with (PRESCREEN_SIGNING_KEY_FILE); empty: the public half of "
        "INTAKE_SIGNING_KEY_FILE, for a prescreen that signs with the bank's key.",
    )
    linger_ms: float = Field(default=20.0, gt=0, description="Longest a batch waits to fill.")
    max_batch: int = Field(default=512, ge=1, description="Cap below the model's slot count.")
    deadline_ms: float = Field(default=3000.0, gt=0, description="Partner answer deadline.")
    group_id: str = "fedscreen-intake"
    max_poll_records: int = Field(default=2000, ge=1)
    recent_events: int = Field(
        default=32, ge=1, description="Event ids remembered per customer for de-duplication."
    )
    metrics_port: int = 0
    metrics_host: MetricsHost = "0.0.0.0"

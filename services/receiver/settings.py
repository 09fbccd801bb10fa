"""The demo receiver's settings (env prefix ``RECEIVER_``); CLI options override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.webhook_signing import secret_bytes


class ReceiverSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECEIVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535, description="0 picks a free port.")
    secret: str = Field(repr=False, description="The endpoint's whsec_ secret.")
    out: Path = Field(
        default=Path("deliveries.jsonl"), description="First deliveries, one JSON line each."
    )
    fail_first: int = Field(default=0, ge=0, description="Answer 500 to the first N requests.")
    throttle_first: int = Field(
        default=0, ge=0, description="Answer 429 with Retry-After to the first N requests."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent when throttling.")

    @field_validator("secret")
    @classmethod
    def _secret_decodes(cls, value: str) -> str:
        secret_bytes(value)
        return value

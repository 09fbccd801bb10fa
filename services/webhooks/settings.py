"""The webhooks service's own settings (env prefix ``WEBHOOKS_``).

Kafka connection settings are not embedded here: they are read separately as
:class:`~services.kernel.config.KafkaSettings` (env prefix ``KAFKA_``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.config import MetricsHost

S = TypeVar("S", bound=BaseSettings)


class WebhooksSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WEBHOOKS_", extra="ignore")

    subscriptions_file: Path = Field(
        default=Path("subscriptions.json"),
        description="JSON file listing the endpoints and the campaigns each subscribes to.",
    )
    subscriptions_reload_s: float = Field(
        default=5.0,
        ge=0,
        description="How often the subscriptions file is checked for changed content, which "
        "takes effect with no restart (an invalid change is refused and logged). 0: read "
        "only at start.",
    )
    group_id: str = Field(default="fedscreen-webhooks", min_length=1)
    concurrency: int = Field(default=64, ge=1, description="HTTP requests in flight at most.")
    max_pending: int = Field(
        default=1000,
        ge=1,
        description="Releases fetched but not finished before fetching pauses (backpressure).",
    )
    request_timeout_s: float = Field(default=10.0, gt=0, description="Per attempt.")
    # Doubling from 0.5 s, capped at 60 s, over 12 attempts: at least ~150 s (and at
    # most ~300 s) of retrying before a release is dead-lettered, so an endpoint that
    # is down for a minute or two loses nothing.
    max_attempts: int = Field(default=12, ge=1)
    initial_backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)
    max_retry_after_s: float = Field(
        default=60.0, ge=0, description="A receiver's Retry-After is honoured up to this."
    )
    commit_interval_s: float = Field(default=1.0, gt=0)
    shutdown_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="On SIGTERM, how long in-flight deliveries may finish before they are "
        "abandoned (uncommitted, so redelivered after the restart).",
    )
    retry_log_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Retries to one endpoint are logged as they start, then summarised at "
        "most once per this interval, with counts by cause.",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 disables /metrics.")
    metrics_host: MetricsHost = "0.0.0.0"

    @model_validator(mode="after")
    def _backoff_bounds(self) -> WebhooksSettings:
        if self.initial_backoff_s > self.max_backoff_s:
            raise ValueError("initial_backoff_s must not exceed max_backoff_s")
        return self

"""Settings shared by every service: where Kafka is and how to talk to it.

Every setting comes from the environment (pydantic-settings) with a default that
works against the embedded broker on a laptop. Service-specific settings live in
each service's own ``settings.py``; a service reads those and :class:`KafkaSettings`
side by side, through :func:`load_settings`.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.errors import CliError

S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Settings from the environment plus explicit (non-None) overrides; an invalid value
    becomes a one-line error naming its environment variable."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    try:
        return cls(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{prefix}{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise CliError(f"invalid configuration: {problems}") from exc


class KafkaSettings(BaseSettings):
    """Connection settings for any Kafka: the embedded Tansu broker or a production cluster."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port list."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = Field(default=None, description="CA bundle (PEM) for the brokers.")
    ssl_certfile: str | None = Field(default=None, description="Client certificate for mTLS.")
    ssl_keyfile: str | None = Field(default=None, description="Client key for mTLS.")
    partitions: int = Field(
        default=4,
        ge=1,
        description="Partition count for every topic the project creates; co-partitioned "
        "topics must agree, so one number serves all.",
    )
    replication_factor: int = Field(default=1, ge=1)
    max_message_bytes: int = Field(
        default=1_000_000,
        description="Largest message a producer sends; bigger payloads are chunked.",
    )
    # The embedded broker holds a group join for half the rebalance timeout, so a
    # short timeout makes local starts fast; production clusters can raise it.
    fetch_max_wait_ms: int = Field(
        default=50,
        ge=0,
        description="Longest a fetch on the candidate-to-decision path waits for data. "
        "Brokers answer a waiting fetch when data arrives or when this expires; the "
        "embedded broker tends to the latter, so every hop's latency follows this value.",
    )
    rebalance_timeout_s: float = 6.0
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in {"SSL", "SASL_SSL"}:
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to AIOKafkaProducer, AIOKafkaConsumer and the admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if (context := self.ssl_context()) is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    def faust_broker_kwargs(self) -> dict[str, Any]:
        """faust.App keyword arguments for the same connection."""
        import faust

        kwargs: dict[str, Any] = {
            "broker": [f"kafka://{server}" for server in self.bootstrap_servers.split(",")],
            "topic_replication_factor": self.replication_factor,
            "topic_partitions": self.partitions,
            "broker_rebalance_timeout": self.rebalance_timeout_s,
            "broker_session_timeout": self.session_timeout_s,
            "broker_heartbeat_interval": self.heartbeat_interval_s,
            "producer_max_request_size": max(self.max_message_bytes * 2, 1_048_576),
        }
        context = self.ssl_context()
        if self.security_protocol.startswith("SASL"):
            kwargs["broker_credentials"] = faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism or "PLAIN",
                ssl_context=context,
            )
        elif context is not None:
            kwargs["broker_credentials"] = faust.SSLCredentials(context)
        return kwargs

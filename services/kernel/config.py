"""Settings shared by every service: where Kafka is and how to talk to it.

Every setting comes from the environment (pydantic-settings) with a default that
works against the embedded broker on a laptop. Service-specific settings live in
each service's own ``settings.py``; a service reads those and :class:`KafkaSettings`
side by side, through :func:`load_settings`.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import ssl
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.errors import CliError

S = TypeVar("S", bound=BaseSettings)

MetricsHost = Annotated[
    str,
    Field(
        min_length=1,
        description="Address the /metrics, /healthz and /readyz server listens on: every "
        "interface by default, for probes and scrapers outside the container; 127.0.0.1 keeps "
        "it to this machine.",
    ),
]
"""Every service's ``<PREFIX>_METRICS_HOST`` (default ``0.0.0.0``)."""

InstanceId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9._:@/+=-]*$",
        max_length=128,
        description="This instance's id in its readiness announcements on model.ready.v1 "
        "(empty: host name and process id). A stable, unique id per instance (the pod name) "
        "lets a restarted instance replace its announcement instead of leaving one to expire.",
    ),
]
"""A partner replica's or prescreen worker's ``<PREFIX>_INSTANCE_ID``."""

log = logging.getLogger(__name__)

SHARED_PREFIXES = frozenset({"KAFKA_"})
"""Prefixes other software uses too (Kafka's own scripts read KAFKA_HEAP_OPTS and
KAFKA_OPTS, broker images KAFKA_CFG_*): an unknown name there is only reported when it
is close to a setting (a typo of ours), not for every unknown name."""

_SERVICE_LINK = re.compile(
    r"^[A-Z0-9_]+_"
    r"(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)$"
)
_SERVICE_LINK_PORT = re.compile(r"^(tcp|udp|sctp)://")
"""What Kubernetes (``enableServiceLinks``, on by default) and Docker links inject for a
service named, say, ``intake`` or ``partner-payments``: INTAKE_SERVICE_HOST,
PARTNER_PAYMENTS_PORT_9100_TCP_ADDR, and ``<NAME>_PORT=tcp://…`` (recognised by its
value, so that a misspelt ``INTAKE_METRIC_PORT=9100`` is still reported). Never ours."""


def _service_link(name: str, value: str) -> bool:
    return bool(_SERVICE_LINK.match(name)) or (
        name.endswith("_PORT") and bool(_SERVICE_LINK_PORT.match(value))
    )


_warned: set[str] = set()


def unknown_settings(
    cls: type[BaseSettings], environ: Mapping[str, str] | None = None
) -> list[str]:
    """One message per environment variable that carries ``cls``'s prefix but names no
    setting, with the closest setting when one is close: a misspelt variable is ignored
    by pydantic-settings, so without this the service silently runs on the default."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    if not prefix:
        return []
    known = {prefix + name.upper() for name in cls.model_fields}
    environ = os.environ if environ is None else environ
    messages = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(prefix) or name in known or _service_link(name, environ[variable]):
            continue
        shared = prefix in SHARED_PREFIXES
        # Compared without the prefix, which every candidate shares.
        close = difflib.get_close_matches(
            name.removeprefix(prefix),
            sorted(known_name.removeprefix(prefix) for known_name in known),
            n=1,
            cutoff=0.8 if shared else 0.6,
        )
        if close:
            messages.append(f"unknown setting {variable} (did you mean {prefix}{close[0]}?)")
        elif not shared:
            messages.append(f"unknown setting {variable} (no {prefix}* setting is close; ignored)")
    return messages


def warn_unknown_settings(cls: type[BaseSettings]) -> None:
    """Log :func:`unknown_settings` as warnings, each variable once per process."""
    for message in unknown_settings(cls):
        variable = message.split()[2]
        if variable not in _warned:
            _warned.add(variable)
            log.warning(message, extra={"variable": variable})


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Settings from the environment plus explicit (non-None) overrides; an invalid value
    becomes a one-line error naming its environment variable, and an unknown variable
    with the settings' prefix a warning (:func:`unknown_settings`)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    warn_unknown_settings(cls)
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

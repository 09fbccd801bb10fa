"""Which endpoint receives which campaign's releases: a validated JSON file.

{"endpoints": [{"name": "crm", "url": "https://crm.example/hooks",
                "secret": "whsec_<base64>", "campaigns": ["card-upgrade"] or ["*"]}]}

A rotation keeps the old secret signing too until a given time: ``previous_secret`` and
``previous_secret_until`` (an aware timestamp). Until then every attempt carries two
signatures (Standard Webhooks allows several, space-separated), so a campaign tool that
still holds the old secret and one that already holds the new both verify.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from services.kernel.errors import CliError
from services.kernel.webhook_signing import secret_bytes

ALL_CAMPAIGNS = "*"

EndpointName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
]


class SubscriptionsError(CliError):
    """The subscriptions file is missing or invalid; the message is one line."""


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: EndpointName
    url: AnyHttpUrl
    secret: str = Field(repr=False, description="whsec_ followed by the base64 key.")
    campaigns: tuple[str, ...] = Field(min_length=1)
    previous_secret: str | None = Field(
        default=None, repr=False, description="The secret being rotated out, still signing."
    )
    previous_secret_until: AwareDatetime | None = Field(
        default=None, description="When the previous secret stops signing."
    )

    @field_validator("secret", "previous_secret")
    @classmethod
    def _secret_decodes(cls, value: str | None) -> str | None:
        if value is not None:
            secret_bytes(value)  # raises ValueError with a message naming the problem
        return value

    @model_validator(mode="after")
    def _rotation_is_complete(self) -> Endpoint:
        if (self.previous_secret is None) != (self.previous_secret_until is None):
            raise ValueError("previous_secret and previous_secret_until go together")
        if self.previous_secret is not None and secret_bytes(self.previous_secret) == self.key:
            raise ValueError("previous_secret is the same key as secret")
        return self

    @property
    def key(self) -> bytes:
        return secret_bytes(self.secret)

    def keys_at(self, now: datetime) -> tuple[bytes, ...]:
        """The keys that sign an attempt made at ``now``: the current one first, then the
        previous one while its overlap lasts (``now`` before ``previous_secret_until``)."""
        if (
            self.previous_secret is not None
            and self.previous_secret_until is not None
            and now < self.previous_secret_until
        ):
            return (self.key, secret_bytes(self.previous_secret))
        return (self.key,)

    def wants(self, campaign_id: str) -> bool:
        return ALL_CAMPAIGNS in self.campaigns or campaign_id in self.campaigns


class Subscriptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: tuple[Endpoint, ...]

    @model_validator(mode="after")
    def _unique_names(self) -> Subscriptions:
        # The name identifies the endpoint in logs and dead letters, so it must be unique.
        names = [endpoint.name for endpoint in self.endpoints]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate endpoint names: {', '.join(duplicates)}")
        return self

    def for_campaign(self, campaign_id: str) -> list[Endpoint]:
        return [endpoint for endpoint in self.endpoints if endpoint.wants(campaign_id)]

    def subscriber(self, name: str, campaign_id: str) -> Endpoint | None:
        """The endpoint called ``name`` if it (still) takes ``campaign_id``'s releases."""
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint if endpoint.wants(campaign_id) else None
        return None


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "file"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def read_subscriptions(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SubscriptionsError(f"cannot read subscriptions file {path}: {exc.strerror}") from exc


def parse_subscriptions(content: bytes, path: Path) -> Subscriptions:
    """``content`` (read from ``path``, which the error names) as subscriptions."""
    try:
        return Subscriptions.model_validate_json(content)
    except ValidationError as exc:
        raise SubscriptionsError(f"invalid subscriptions file {path}: {_one_line(exc)}") from exc


def load_subscriptions(path: Path) -> Subscriptions:
    return parse_subscriptions(read_subscriptions(path), path)

"""Which endpoint receives which campaign's releases: a validated JSON file.

{"endpoints": [{"name": "crm", "url": "https://crm.example/hooks",
                "secret": "whsec_<base64>", "campaigns": ["card-upgrade"] or ["*"]}]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from services.kernel.errors import CliError
from services.webhooks.signing import secret_bytes

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

    @field_validator("secret")
    @classmethod
    def _secret_decodes(cls, value: str) -> str:
        secret_bytes(value)  # raises ValueError with a message naming the problem
        return value

    @property
    def key(self) -> bytes:
        return secret_bytes(self.secret)

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


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "file"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def load_subscriptions(path: Path) -> Subscriptions:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SubscriptionsError(f"cannot read subscriptions file {path}: {exc.strerror}") from exc
    try:
        return Subscriptions.model_validate_json(text)
    except ValidationError as exc:
        raise SubscriptionsError(f"invalid subscriptions file {path}: {_one_line(exc)}") from exc

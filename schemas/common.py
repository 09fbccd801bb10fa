"""Types every wire model shares."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, StringConstraints

Ident = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+=-]+$")
]
"""Identifiers (event, batch, campaign, partner, model version): printable, no spaces."""

PartnerName = Annotated[
    str, StringConstraints(min_length=1, max_length=48, pattern=r"^[a-z0-9-]+$")
]
"""A partner's name is part of its topic names, so it is lower-case and dash-separated."""

Token = Annotated[
    str, StringConstraints(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
]
"""A per-partner pseudonymous customer token (base64url, unpadded)."""

B64Int = Annotated[
    str, StringConstraints(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9_-]+$")
]
"""A non-negative big integer (ciphertext, modulus): unpadded base64url, big-endian."""

B64Bytes = Annotated[str, StringConstraints(max_length=8192, pattern=r"^[A-Za-z0-9_-]*$")]


class WireModel(BaseModel):
    """Base of every message on Kafka: strict, immutable, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    SCHEMA_ID: ClassVar[str]
    """Stable name of the message type and its major version, e.g. ``candidate.v1``."""


class ReasonCode(StrEnum):
    """Why a candidate was released or suppressed; one or more on every decision."""

    NO_CONSENT = "NO_CONSENT"
    UNKNOWN_CAMPAIGN = "UNKNOWN_CAMPAIGN"
    FREQUENCY_CAP = "FREQUENCY_CAP"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    PARTNER_UNAVAILABLE = "PARTNER_UNAVAILABLE"
    BLACKLISTED = "BLACKLISTED"
    RISK_TOO_HIGH = "RISK_TOO_HIGH"
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"
    SCORED_DEGRADED = "SCORED_DEGRADED"
    ELIGIBLE = "ELIGIBLE"

"""Types every wire model shares."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

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
    """Base of every message on Kafka: strict, immutable, no unknown fields.

    Strict means no coercion: a boolean is ``true`` or ``false`` (never ``"yes"`` or
    ``1``), a number is a JSON number (never ``"0.5"``), an integer has no fraction, and a
    timestamp carries its zone (``AwareDatetime``). JSON input still parses ISO-8601
    strings to datetimes; Python callers pass ``datetime``, enum members and lists."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, str_strip_whitespace=False)

    SCHEMA_ID: ClassVar[str]
    """Stable name of the message type and its major version, e.g. ``candidate.v1``."""


def canonical_bytes(domain: str, body: dict[str, object]) -> bytes:
    """``domain`` then ``name=value`` lines for every field but ``signature``, sorted by
    name, each value rendered with Python's ``str()`` of its JSON value (a list of names
    reads ``['a', 'b']``). The domain line keeps a signature over one message type from
    being valid for another, although the same key signs several."""
    parts = [f"{name}={body[name]}" for name in sorted(body) if name != "signature"]
    return (domain + "\n" + "\n".join(parts)).encode()


class SignedMessage(WireModel):
    """A message that crosses the bank/partner boundary, signed by its sender's Ed25519
    key over :meth:`signing_bytes`; the receiver verifies it against the sender's key,
    which it was given out of band (never learned from Kafka)."""

    signature: B64Bytes = Field(
        default="", description="Ed25519 over signing_bytes(), base64url; empty until signed."
    )

    def signing_bytes(self) -> bytes:
        """``fedscreen.<schema id>`` and every field but the signature (:func:`canonical_bytes`)."""
        return canonical_bytes(f"fedscreen.{self.SCHEMA_ID}", self.model_dump(mode="json"))


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
    DAILY_QUOTA_EXHAUSTED = "DAILY_QUOTA_EXHAUSTED"
    CAMPAIGN_PAUSED = "CAMPAIGN_PAUSED"
    CAMPAIGN_ENDED = "CAMPAIGN_ENDED"
    OUTSIDE_CAMPAIGN_DATES = "OUTSIDE_CAMPAIGN_DATES"
    SCORED_DEGRADED = "SCORED_DEGRADED"
    ELIGIBLE = "ELIGIBLE"

"""What bank systems publish on ``bank.candidates.v1`` (key: customer id)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime, Field

from schemas.common import Ident, WireModel


class CandidateEvent(WireModel):
    """One customer proposed for one marketing campaign."""

    SCHEMA_ID: ClassVar[str] = "candidate.v1"

    event_id: Ident = Field(description="Unique per event; duplicates are decided once.")
    customer_id: Ident = Field(description="The bank's customer id; never leaves the bank.")
    campaign_id: Ident
    consent_marketing: bool = Field(description="Marketing consent on record at event time.")
    occurred_at: AwareDatetime
    features: dict[str, float | None] = Field(
        default_factory=dict,
        max_length=256,
        description="The bank's own features for this customer (null = missing).",
    )

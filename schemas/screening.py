"""Bank-internal messages of the pre-screening flow and what campaign tools receive."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from schemas.common import B64Bytes, Ident, PartnerName, ReasonCode, Token, WireModel


class PendingCandidate(WireModel):
    event_id: Ident
    customer_id: Ident
    campaign_id: Ident
    occurred_at: AwareDatetime
    features: dict[str, float | None]
    source_partition: int | None = Field(
        default=None,
        ge=0,
        description="The bank.candidates.v1 partition the event came from: a restarted "
        "intake reads recent pending batches back to recognise events it already batched.",
    )


class PendingBatch(WireModel):
    """``prescreen.pending.v1`` (key: batch id): the bank's side of a batch, for the joiner."""

    SCHEMA_ID: ClassVar[str] = "pending-batch.v1"

    batch_id: Ident
    model_version: Ident
    created_at: AwareDatetime
    deadline_at: AwareDatetime
    partners: list[PartnerName] = Field(min_length=1)
    candidates: list[PendingCandidate] = Field(min_length=1, max_length=512)
    tokens: dict[PartnerName, list[Token]] = Field(
        description="Each partner's tokens, slot by slot, as in its request: prescreen "
        "re-requests the batch from the partners that answered when another one missed "
        "the deadline."
    )

    @model_validator(mode="after")
    def _tokens_match(self) -> PendingBatch:
        if set(self.tokens) != set(self.partners) or any(
            len(tokens) != len(self.candidates) for tokens in self.tokens.values()
        ):
            raise ValueError("tokens must hold one token per candidate for every partner")
        return self


class DeadlineTick(WireModel):
    """On ``fed.fragments.v1`` (key: batch id, header ``fedscreen-kind: deadline-tick``): the
    prescreen's timer telling itself that a batch's deadline has passed.

    It travels in the batch's own fragment partition, so Kafka's order guarantees that
    every fragment that reached the broker before the deadline is processed before the
    tick, however far the joiner lags. A message rather than a direct call, so the
    decision is made inside stream processing where table updates are durable. Partners
    write to this topic too, so the tick carries an HMAC under a key only the bank holds
    (derived from the batch's Paillier private key). A batch re-requested from the
    partners that answered has a second deadline: the tick names the attempt it ends, so
    a stale tick of the first attempt cannot end the second."""

    SCHEMA_ID: ClassVar[str] = "deadline-tick.v1"

    batch_id: Ident
    attempt: int = Field(default=1, ge=1, le=16)
    fired_at: AwareDatetime
    mac: B64Bytes


class Decision(WireModel):
    """``prescreen.decisions.v1`` (key: event id): exactly one per candidate event."""

    SCHEMA_ID: ClassVar[str] = "decision.v1"

    decision_id: Ident = Field(description="Deterministic from the event id: retries reuse it.")
    event_id: Ident
    customer_id: Ident
    campaign_id: Ident
    outcome: Literal["released", "suppressed"]
    reasons: list[ReasonCode] = Field(min_length=1)
    pd: float | None = Field(default=None, ge=0.0, le=1.0, description="Probability of default.")
    score_band: str | None = None
    batch_id: Ident | None = None
    model_version: Ident | None = None
    degraded: bool = False
    missing_partners: list[PartnerName] = Field(default_factory=list)
    occurred_at: AwareDatetime
    decided_at: AwareDatetime
    decided_by: Literal["intake", "prescreen"]
    campaign_config_version: int = Field(
        default=0,
        ge=0,
        description="The campaign configuration (campaign.config.v1) it was decided under; "
        "0: the campaigns of the model bundle's policy.",
    )


class Release(WireModel):
    """``campaign.released.v1`` (key: decision id): what a campaign tool may learn, no more."""

    SCHEMA_ID: ClassVar[str] = "release.v1"

    decision_id: Ident
    campaign_id: Ident
    candidate_ref: Ident = Field(description="The candidate event id; the CRM resolves it.")
    score_band: str
    released_at: AwareDatetime
    expires_at: AwareDatetime

"""Model bundles, rolled out as versioned events on compacted topics.

The bank bundle (``model.rollouts.bank.v1``) holds the bank's models in plaintext and
never leaves the bank; it holds no partner weight (nobody holds those in plaintext).
Each partner's bundle (``model.rollouts.<partner>.v1``) holds the public key and the
slot layout, and names the training session whose bin edges and encrypted weights the
partner kept (``binning_id``): neither ever travels.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, Field, field_validator, model_validator

from schemas.common import B64Int, Ident, PartnerName, ReasonCode, SignedMessage, WireModel


class PackingSpec(WireModel):
    """Fixed-point slot packing shared by both sides of the protocol.

    A weight w becomes the integer ``round(w * 2**frac_bits) + entry_offset`` (never
    negative). Slot s of a plaintext occupies bits ``[s*slot_bits, (s+1)*slot_bits)``;
    inside a slot, bits below ``score_bits`` hold the summed partner score and the bits
    above hold the blacklist field. Under secure aggregation each partner puts a value
    below ``2**flag_bits`` there (a random tag if it flags the candidate, plus its share
    of a zero-sum mask), so the field read modulo ``2**flag_bits`` is 0 iff no partner
    flagged the candidate; the bits above ``flag_bits`` absorb the carries of the sum.
    """

    frac_bits: int = Field(ge=4, le=32)
    slot_bits: int = Field(ge=16, le=128)
    score_bits: int = Field(ge=8, le=120)
    flag_bits: int = Field(
        ge=1, le=64, description="t: partners' blacklist tags are uniform in [1, 2^t)."
    )
    slots: int = Field(ge=1, le=512)
    weight_clip: float = Field(gt=0, description="Every weight lies in [-clip, clip].")

    @model_validator(mode="after")
    def _fields_fit(self) -> PackingSpec:
        if self.score_bits + self.flag_bits > self.slot_bits:
            raise ValueError("score_bits + flag_bits must fit in slot_bits")
        return self

    @property
    def entry_offset(self) -> int:
        return round(self.weight_clip * (1 << self.frac_bits))


class ScoreBand(WireModel):
    band: str = Field(min_length=1, max_length=16)
    max_pd: float = Field(gt=0.0, le=1.0, description="Band applies when pd <= max_pd.")


CampaignState = Literal["active", "paused", "ended"]


class CampaignPolicy(WireModel):
    """One campaign: its risk cut-off and bands, its quotas and when it runs. Embedded in
    a bank bundle (the policy it was trained with) and, at run time, in the campaign
    configuration on ``campaign.config.v1`` (schemas/campaigns.py), which takes precedence."""

    campaign_id: Ident
    max_pd: float = Field(gt=0.0, le=1.0, description="Suppress when pd is above this.")
    quota: int | None = Field(
        default=None, ge=0, description="Most releases in total; None = no cap."
    )
    score_bands: list[ScoreBand] = Field(min_length=1)
    release_ttl_hours: float = Field(default=72.0, gt=0)
    daily_quota: int | None = Field(
        default=None,
        ge=0,
        description="Most releases per calendar day in ``timezone``; None = no daily cap.",
    )
    timezone: str = Field(
        default="UTC", min_length=1, max_length=64, description="IANA zone of the days."
    )
    starts_on: date | None = Field(
        default=None, description="First day it runs, in ``timezone``; None = already."
    )
    ends_on: date | None = Field(
        default=None, description="Last day it runs (inclusive), in ``timezone``; None = open."
    )
    state: CampaignState = Field(
        default="active", description="paused: suppressed until resumed; ended: for good."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name, e.g. Europe/Paris)"
            ) from exc
        return value

    @model_validator(mode="after")
    def _window_in_order(self) -> CampaignPolicy:
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            raise ValueError(f"ends_on {self.ends_on} is before starts_on {self.starts_on}")
        return self

    def day_of(self, at: datetime) -> date:
        """The calendar day ``at`` falls on in the campaign's time zone."""
        return at.astimezone(ZoneInfo(self.timezone)).date()

    def runs_on(self, day: date) -> bool:
        return (self.starts_on is None or day >= self.starts_on) and (
            self.ends_on is None or day <= self.ends_on
        )

    def closed_reason(self, at: datetime) -> ReasonCode | None:
        """Why the campaign takes no candidate at ``at`` (paused, ended, outside its
        dates), or None while it runs."""
        if self.state == "paused":
            return ReasonCode.CAMPAIGN_PAUSED
        if self.state == "ended":
            return ReasonCode.CAMPAIGN_ENDED
        dated = self.starts_on is not None or self.ends_on is not None
        if dated and not self.runs_on(self.day_of(at)):  # the day only when it matters
            return ReasonCode.OUTSIDE_CAMPAIGN_DATES
        return None


class FrequencyCap(WireModel):
    max_screenings: int = Field(ge=1, description="Screenings per customer inside the window.")
    window_hours: float = Field(gt=0)


class PolicyConfig(WireModel):
    campaigns: list[CampaignPolicy] = Field(min_length=1)
    frequency_cap: FrequencyCap
    deadline_outcome: Literal["suppress", "fallback"] = Field(
        default="suppress",
        description="A partner missing the deadline suppresses (PARTNER_UNAVAILABLE) or "
        "scores on the bank-only fallback model (SCORED_DEGRADED).",
    )

    def campaign(self, campaign_id: str) -> CampaignPolicy | None:
        for campaign in self.campaigns:
            if campaign.campaign_id == campaign_id:
                return campaign
        return None


class PartnerScorecard(WireModel):
    """What the bank knows of partner k's scorecard: how many bins each of its (unnamed)
    features has. The weights exist only encrypted, held by the partner."""

    partner: PartnerName
    bins_per_feature: list[int] = Field(min_length=1)


class BankBundle(WireModel):
    SCHEMA_ID: ClassVar[str] = "bank-bundle.v1"

    model_version: Ident
    created_at: AwareDatetime
    key_id: Ident
    public_key_n: B64Int
    packing: PackingSpec
    bank_features: list[str] = Field(min_length=1)
    partners: list[PartnerScorecard] = Field(min_length=1)
    booster: str = Field(description="LightGBM text model on bank features (+ partner score).")
    stacked: bool = Field(description="Whether the booster takes the partner score as input.")
    fallback_booster: str = Field(description="Bank-only LightGBM, for degraded scoring.")
    policy: PolicyConfig
    metrics: dict[str, float] = Field(default_factory=dict)


class ModelReady(SignedMessage):
    """``model.ready.v1`` (key: ``<party>/<instance>``): which model versions one instance
    of a party can serve right now. Each partner replica (its tables are built) and each
    prescreen worker (it holds the version's private key) announces its own, signed with
    its party's key, refreshes it every few seconds and withdraws it when it stops.
    Intake activates a bank bundle only once every live instance of every party it needs
    lists the version, so a rollout never sends a batch that an instance cannot answer.

    v2 (breaking): v1 was keyed ``<party>@<version>``, unsigned, never withdrawn and
    never expired, so one instance made its whole party ready and anyone who could
    write the topic could announce for any party."""

    SCHEMA_ID: ClassVar[str] = "model-ready.v2"

    party: PartnerName = Field(description="A partner's name, or 'prescreen'.")
    instance: Ident = Field(
        description="This instance's id, unique within its party (a pod name, or a name "
        "given by configuration): a restarted instance with the same id replaces its "
        "previous announcement."
    )
    model_versions: list[Ident] = Field(
        max_length=32, description="Every version the instance can serve; empty when withdrawn."
    )
    withdrawn: bool = Field(
        default=False,
        description="The instance stopped: it serves nothing and no longer counts as live.",
    )
    announced_at: AwareDatetime
    expires_at: AwareDatetime = Field(
        description="Readers take the instance for dead after this unless a newer "
        "announcement came: one that dies without withdrawing stops counting."
    )


class PartnerBundle(SignedMessage):
    """Signed by the bank: a partner accepts a Paillier key only inside a bundle or a
    ``TrainStart`` that verifies under the bank's key it was given out of band."""

    SCHEMA_ID: ClassVar[str] = "partner-bundle.v1"

    model_version: Ident
    created_at: AwareDatetime
    partner: PartnerName
    binning_id: Ident = Field(
        description="The training session whose bin edges and encrypted weights, kept by "
        "the partner, this model serves with."
    )
    key_id: Ident
    public_key_n: B64Int
    packing: PackingSpec

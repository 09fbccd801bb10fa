"""Model bundles, rolled out as versioned events on compacted topics.

The bank bundle (``model.rollouts.bank.v1``) holds the bank's models in plaintext and
never leaves the bank; it holds no partner weight (nobody holds those in plaintext).
Each partner's bundle (``model.rollouts.<partner>.v1``) holds the public key and the
slot layout, and names the training session whose bin edges and encrypted weights the
partner kept (``binning_id``): neither ever travels.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from schemas.common import B64Int, Ident, PartnerName, SignedMessage, WireModel


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


class CampaignPolicy(WireModel):
    campaign_id: Ident
    max_pd: float = Field(gt=0.0, le=1.0, description="Suppress when pd is above this.")
    quota: int | None = Field(default=None, ge=0, description="Most releases; None = no cap.")
    score_bands: list[ScoreBand] = Field(min_length=1)
    release_ttl_hours: float = Field(default=72.0, gt=0)


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

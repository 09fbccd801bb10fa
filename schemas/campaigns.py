"""The campaign configuration marketing changes at run time, on its own compacted topic
(``campaign.config.v1``, one key), apart from model rollouts.

Each publication is the whole configuration with the next version number; intake and
prescreen follow the topic and apply the newest without a restart, and every decision
records the version it was made under. Until a first configuration is published the
campaigns of the bank bundle's policy apply (version 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from pydantic import AwareDatetime, Field, model_validator

from schemas.common import WireModel
from schemas.rollout import CampaignPolicy


class CampaignConfig(WireModel):
    """``campaign.config.v1`` (key ``campaigns``): every campaign, as of one version."""

    SCHEMA_ID: ClassVar[str] = "campaign-config.v1"

    version: int = Field(ge=1, description="One more than the configuration it replaces.")
    campaigns: list[CampaignPolicy]
    published_at: AwareDatetime
    published_by: str = Field(default="", max_length=128, description="Who applied it.")

    @model_validator(mode="after")
    def _unique_ids(self) -> CampaignConfig:
        ids = [c.campaign_id for c in self.campaigns]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"campaign ids listed twice: {', '.join(twice)}")
        return self

    def campaign(self, campaign_id: str) -> CampaignPolicy | None:
        for campaign in self.campaigns:
            if campaign.campaign_id == campaign_id:
                return campaign
        return None


class QuotaCounts(WireModel):
    """prescreen's count of the releases it made, carried in the header
    ``fedscreen-quota`` of the last release record of every decided batch that released
    someone: the record and the count reach the broker together, so the count of the
    last such record is exactly the releases before it (docs/campaigns.md, "Quotas").
    A restarted prescreen starts counting from there; ``fedscreen campaigns list``
    shows it beside the releases it finds on ``campaign.released.v1``."""

    SCHEMA_ID: ClassVar[str] = "quota-counts.v1"
    HEADER: ClassVar[str] = "fedscreen-quota"
    """The record header that carries it."""

    partition: int = Field(ge=0, description="The input partition whose releases these are.")
    totals: dict[str, int] = Field(description="Releases by campaign id, ever.")
    days: dict[str, dict[str, int]] = Field(
        description="Releases by campaign id and day (ISO date in the campaign's time "
        "zone); the two latest days of each campaign."
    )

    @classmethod
    def in_headers(cls, headers: Iterable[tuple[str, bytes]]) -> QuotaCounts | None:
        """The count a record's headers carry, if any (raises ValidationError when the
        header is there but unreadable)."""
        for name, value in headers:
            if name == cls.HEADER:
                return cls.model_validate_json(value)
        return None

"""Follow the campaign configuration marketing publishes at run time
(``campaign.config.v1``, schemas/campaigns.py) and say which campaign rules apply.

Intake and prescreen each keep a board: the newest configuration they have read wins
(by version, so a copy read again changes nothing). Until one is published the
campaigns of the bank bundle's policy apply, as version 0.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from schemas import CampaignConfig, CampaignPolicy, PolicyConfig
from services.kernel.config import KafkaSettings
from services.kernel.kafka.topics import CAMPAIGN_CONFIG
from services.kernel.model.rollout import follow_topic

log = logging.getLogger(__name__)


class CampaignBoard:
    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.config: CampaignConfig | None = None
        self.caught_up = asyncio.Event()
        """Set once every configuration published before the start has been read: a
        restarted service waits for it, so it never judges a candidate by the bundle's
        campaigns while a newer configuration is still on its way."""

    @property
    def version(self) -> int:
        return 0 if self.config is None else self.config.version

    def accept(self, config: CampaignConfig) -> None:
        if config.version <= self.version:
            return
        self.config = config
        log.info(
            "campaign configuration version %s applied (%s)",
            config.version,
            ", ".join(f"{c.campaign_id} {c.state}" for c in config.campaigns) or "no campaign",
            extra={"campaign_config_version": config.version},
        )

    def resolve(self, campaign_id: str, policy: PolicyConfig) -> tuple[CampaignPolicy | None, int]:
        """The campaign's rules and the configuration version they come from: the
        published configuration once there is one (a campaign it lacks is unknown, even
        if the bundle had it), the bundle's policy before (version 0)."""
        if self.config is None:
            return policy.campaign(campaign_id), 0
        return self.config.campaign(campaign_id), self.config.version

    def handle(self, _partition: int, value: bytes | None, _headers: object = None) -> None:
        if value is None:
            return  # a tombstone: the configuration stays until a newer version
        try:
            self.accept(CampaignConfig.model_validate_json(value))
        except ValidationError as exc:
            # `fedscreen campaigns apply` validates before it publishes: anything else
            # on the topic is kept out, and the configuration in force stays.
            log.error("ignoring an invalid campaign configuration on %s: %s", CAMPAIGN_CONFIG, exc)

    async def run(self) -> None:
        await follow_topic(self.settings, CAMPAIGN_CONFIG, self.handle, self.caught_up)

"""The pre-screening policy (docs/design.md §4), after intake's consent and
frequency checks: campaign running → blacklist → risk → quota (total, then the day's)
→ release with a band and an expiry.

Pure functions: every decision carries the reason codes that produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from schemas import CampaignPolicy, ReasonCode


@dataclass(frozen=True, slots=True)
class Screening:
    """What the joiner learned about one candidate."""

    pd: float | None
    blacklisted: bool
    degraded: bool = False
    partner_unavailable: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Literal["released", "suppressed"]
    reasons: tuple[ReasonCode, ...]
    score_band: str | None = None
    expires_at: datetime | None = None


def score_band(campaign: CampaignPolicy, pd: float) -> str:
    for band in sorted(campaign.score_bands, key=lambda b: b.max_pd):
        if pd <= band.max_pd:
            return band.band
    return max(campaign.score_bands, key=lambda b: b.max_pd).band


def decide(
    campaign: CampaignPolicy | None,
    screening: Screening,
    take_quota: Callable[[CampaignPolicy], ReasonCode | None],
    now: datetime,
) -> Verdict:
    """``take_quota`` reserves one release for the campaign, or says which quota is
    spent (QUOTA_EXHAUSTED, DAILY_QUOTA_EXHAUSTED)."""
    extra = (ReasonCode.SCORED_DEGRADED,) if screening.degraded else ()
    if campaign is None:
        return Verdict("suppressed", (ReasonCode.UNKNOWN_CAMPAIGN,))
    # The campaign's state when the candidate is decided, not when intake saw it: a
    # pause applies at once, also to candidates already waiting for their partners.
    if (closed := campaign.closed_reason(now)) is not None:
        return Verdict("suppressed", (closed,))
    if screening.partner_unavailable and screening.pd is None:
        return Verdict("suppressed", (ReasonCode.PARTNER_UNAVAILABLE,))
    if screening.blacklisted:
        return Verdict("suppressed", (ReasonCode.BLACKLISTED, *extra))
    if screening.pd is None:
        return Verdict("suppressed", (ReasonCode.MODEL_UNAVAILABLE,))
    if screening.pd > campaign.max_pd:
        return Verdict("suppressed", (ReasonCode.RISK_TOO_HIGH, *extra))
    if (spent := take_quota(campaign)) is not None:
        return Verdict("suppressed", (spent, *extra))
    return Verdict(
        "released",
        (ReasonCode.ELIGIBLE, *extra),
        score_band=score_band(campaign, screening.pd),
        expires_at=now + timedelta(hours=campaign.release_ttl_hours),
    )


def quota_share(quota: int, partitions: int, partition: int) -> int:
    """This partition's share of a campaign quota. Shares sum to the quota exactly, so
    scaled-out workers can never release more than the campaign allows."""
    base, extra = divmod(quota, partitions)
    return base + (1 if partition < extra else 0)

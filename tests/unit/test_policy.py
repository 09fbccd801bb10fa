"""The pre-screening policy: order of the checks, reason codes, bands, quota shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import CampaignPolicy, ReasonCode, ScoreBand
from services.prescreen.policy import Screening, decide, quota_share, score_band

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
CAMPAIGN = CampaignPolicy(
    campaign_id="card-upgrade",
    max_pd=0.30,
    quota=10,
    release_ttl_hours=72,
    score_bands=[ScoreBand(band="B", max_pd=0.15), ScoreBand(band="A", max_pd=0.08)],
)


def always(_: CampaignPolicy) -> bool:
    return True


def never(_: CampaignPolicy) -> bool:
    return False


def test_an_eligible_candidate_is_released_with_band_and_expiry() -> None:
    verdict = decide(CAMPAIGN, Screening(pd=0.05, blacklisted=False), always, NOW)
    assert verdict.outcome == "released"
    assert verdict.reasons == (ReasonCode.ELIGIBLE,)
    assert verdict.score_band == "A"
    assert verdict.expires_at == NOW + timedelta(hours=72)


@pytest.mark.parametrize(
    ("pd", "band"), [(0.0, "A"), (0.08, "A"), (0.081, "B"), (0.15, "B"), (0.29, "B")]
)
def test_bands_pick_the_tightest_that_fits(pd: float, band: str) -> None:
    assert score_band(CAMPAIGN, pd) == band


def test_blacklist_wins_over_risk_and_quota() -> None:
    verdict = decide(CAMPAIGN, Screening(pd=0.9, blacklisted=True), never, NOW)
    assert verdict.reasons == (ReasonCode.BLACKLISTED,)


def test_risk_above_threshold_is_suppressed_without_using_quota() -> None:
    taken: list[str] = []

    def take(c: CampaignPolicy) -> bool:
        taken.append(c.campaign_id)
        return True

    verdict = decide(CAMPAIGN, Screening(pd=0.31, blacklisted=False), take, NOW)
    assert verdict.reasons == (ReasonCode.RISK_TOO_HIGH,)
    assert taken == []


def test_exhausted_quota_suppresses() -> None:
    verdict = decide(CAMPAIGN, Screening(pd=0.01, blacklisted=False), never, NOW)
    assert (verdict.outcome, verdict.reasons) == ("suppressed", (ReasonCode.QUOTA_EXHAUSTED,))


def test_partner_unavailable_without_fallback_suppresses_even_a_blacklisted_candidate() -> None:
    screening = Screening(pd=None, blacklisted=True, partner_unavailable=True)
    verdict = decide(CAMPAIGN, screening, always, NOW)
    assert verdict.reasons == (ReasonCode.PARTNER_UNAVAILABLE,)


def test_fallback_scoring_is_marked_degraded_on_every_outcome() -> None:
    released = decide(
        CAMPAIGN,
        Screening(pd=0.01, blacklisted=False, degraded=True, partner_unavailable=True),
        always,
        NOW,
    )
    assert released.outcome == "released"
    assert released.reasons == (ReasonCode.ELIGIBLE, ReasonCode.SCORED_DEGRADED)
    risky = decide(CAMPAIGN, Screening(pd=0.5, blacklisted=False, degraded=True), always, NOW)
    assert risky.reasons == (ReasonCode.RISK_TOO_HIGH, ReasonCode.SCORED_DEGRADED)


def test_unknown_campaign_and_missing_model_are_explicit() -> None:
    assert decide(None, Screening(0.1, False), always, NOW).reasons == (
        ReasonCode.UNKNOWN_CAMPAIGN,
    )
    assert decide(CAMPAIGN, Screening(None, False), always, NOW).reasons == (
        ReasonCode.MODEL_UNAVAILABLE,
    )


@pytest.mark.parametrize(("quota", "partitions"), [(10, 4), (3, 4), (0, 2), (1000, 7)])
def test_quota_shares_sum_to_the_quota(quota: int, partitions: int) -> None:
    shares = [quota_share(quota, partitions, p) for p in range(partitions)]
    assert sum(shares) == quota
    assert max(shares) - min(shares) <= 1

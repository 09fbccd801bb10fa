"""The pre-screening policy: order of the checks, reason codes, bands, quota shares."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

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


def always(_: CampaignPolicy) -> ReasonCode | None:
    return None  # a release taken


def never(_: CampaignPolicy) -> ReasonCode | None:
    return ReasonCode.QUOTA_EXHAUSTED


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

    def take(c: CampaignPolicy) -> ReasonCode | None:
        taken.append(c.campaign_id)
        return None

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


def test_a_paused_ended_or_out_of_dates_campaign_takes_nothing_and_no_quota() -> None:
    taken: list[str] = []

    def take(c: CampaignPolicy) -> ReasonCode | None:
        taken.append(c.campaign_id)
        return None

    eligible = Screening(pd=0.01, blacklisted=False)
    cases: list[tuple[dict[str, object], ReasonCode]] = [
        ({"state": "paused"}, ReasonCode.CAMPAIGN_PAUSED),
        ({"state": "ended"}, ReasonCode.CAMPAIGN_ENDED),
        ({"starts_on": date(2026, 11, 26)}, ReasonCode.OUTSIDE_CAMPAIGN_DATES),
        ({"ends_on": date(2026, 11, 24)}, ReasonCode.OUTSIDE_CAMPAIGN_DATES),
    ]
    for update, reason in cases:
        campaign = CAMPAIGN.model_copy(update=update)
        verdict = decide(campaign, eligible, take, NOW)
        assert (verdict.outcome, verdict.reasons) == ("suppressed", (reason,)), update
    assert taken == []
    last_day = CAMPAIGN.model_copy(update={"ends_on": NOW.date()})
    assert decide(last_day, eligible, take, NOW).outcome == "released"


def test_the_campaigns_dates_are_days_in_its_own_time_zone() -> None:
    # 23:30 UTC on the 25th is already the 26th in Auckland (UTC+13 in November).
    late = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    auckland = CAMPAIGN.model_copy(
        update={"timezone": "Pacific/Auckland", "ends_on": date(2026, 11, 25)}
    )
    assert auckland.day_of(late) == date(2026, 11, 26)
    verdict = decide(auckland, Screening(pd=0.01, blacklisted=False), always, late)
    assert verdict.reasons == (ReasonCode.OUTSIDE_CAMPAIGN_DATES,)
    assert CAMPAIGN.model_copy(update={"ends_on": date(2026, 11, 25)}).closed_reason(late) is None


def test_a_campaigns_zone_and_dates_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        CampaignPolicy.model_validate({**CAMPAIGN.model_dump(), "timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="before starts_on"):
        CampaignPolicy.model_validate(
            {**CAMPAIGN.model_dump(), "starts_on": date(2026, 12, 2), "ends_on": date(2026, 12, 1)}
        )

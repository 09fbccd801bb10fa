"""The campaign configuration: the file marketing edits, the changes it makes, the state
transitions, and how a service picks the newest version (no broker)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from schemas import CampaignConfig, CampaignPolicy, ReasonCode, ScoreBand
from services.campaigns.changes import describe_changes, with_state
from services.campaigns.spec_file import CampaignFileError, load_campaigns
from services.kernel.campaigns import CampaignBoard
from services.kernel.config import KafkaSettings
from services.kernel.errors import CliError
from services.training.policy_file import load_policy

CARD = CampaignPolicy(
    campaign_id="card-upgrade",
    max_pd=0.3,
    quota=100,
    score_bands=[ScoreBand(band="A", max_pd=0.3)],
)
NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)


def config(version: int, *campaigns: CampaignPolicy) -> CampaignConfig:
    return CampaignConfig(version=version, campaigns=list(campaigns), published_at=NOW)


def test_a_campaigns_file_with_every_run_time_field(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
[[campaigns]]
campaign_id = "card-upgrade"
max_pd = 0.3
quota = 3000
daily_quota = 200
timezone = "Europe/Paris"
starts_on = 2026-12-01
ends_on = 2026-12-31
score_bands = [{ band = "A", max_pd = 0.1 }, { band = "B", max_pd = 0.3 }]
"""
    )
    (campaign,) = load_campaigns(path)
    assert (campaign.quota, campaign.daily_quota, campaign.timezone) == (3000, 200, "Europe/Paris")
    assert (campaign.starts_on, campaign.ends_on) == (date(2026, 12, 1), date(2026, 12, 31))
    assert campaign.closed_reason(datetime(2027, 1, 1, 0, 30, tzinfo=UTC)) == (
        ReasonCode.OUTSIDE_CAMPAIGN_DATES  # 01:30 on January 1st in Paris
    )


def test_a_bad_file_says_every_problem_on_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
owner = "me"
[[campaigns]]
campaign_id = "a"
max_pd = 1.5
score_bands = [{ band = "A", max_pd = 0.3 }]
[[campaigns]]
campaign_id = "b"
max_pd = 0.3
quota = -1
timezone = "Nowhere/Land"
score_bands = [{ band = "A", max_pd = 0.3 }]
[[campaigns]]
campaign_id = "b"
max_pd = 0.3
score_bands = [{ band = "A", max_pd = 0.3 }]
"""
    )
    with pytest.raises(CampaignFileError) as caught:
        load_campaigns(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 5, lines
    for says in (
        "unknown top-level key 'owner'",
        "campaign a: max_pd",
        "campaign b: quota",
        "Nowhere/Land",
        "campaign b is listed twice",
    ):
        assert any(says in line for line in lines), says
    for text, says in [("not toml [", "not TOML"), ("x = 1", "no [[campaigns]] table")]:
        path.write_text(text)
        with pytest.raises(CampaignFileError, match=says.replace("[", r"\[")):
            load_campaigns(path)
    with pytest.raises(CampaignFileError, match="cannot read"):
        load_campaigns(tmp_path / "missing.toml")


def test_the_packaged_policy_campaigns_are_a_valid_campaigns_file() -> None:
    # What an operator copies to start from: the bundle policy's [[campaigns]].
    policy = load_policy()
    assert config(1, *policy.campaigns).campaigns == policy.campaigns


def test_changes_are_listed_field_by_field() -> None:
    loan = CARD.model_copy(update={"campaign_id": "personal-loan", "quota": None})
    lines = describe_changes(
        [CARD, loan], [CARD.model_copy(update={"quota": 150, "daily_quota": 10})]
    )
    assert lines == [
        "~ card-upgrade: daily_quota: None -> 10",
        "~ card-upgrade: quota: 100 -> 150",
        "- personal-loan: removed (its candidates become UNKNOWN_CAMPAIGN)",
    ]
    assert describe_changes([CARD], [CARD]) == []
    assert describe_changes([], [CARD]) == ["+ card-upgrade: added (max_pd 0.3, quota 100, active)"]


def test_pause_resume_end_and_what_they_refuse() -> None:
    paused = with_state([CARD], "card-upgrade", "pause")
    assert paused[0].state == "paused"
    assert with_state(paused, "card-upgrade", "resume")[0].state == "active"
    ended = with_state(paused, "card-upgrade", "end")
    assert ended[0].state == "ended"
    for campaigns, action, says in [
        (ended, "resume", "is ended"),
        ([CARD], "resume", "is active"),
        ([CARD], "nothing", ""),
    ]:
        if action == "nothing":
            with pytest.raises(CliError, match="no campaign 'x'"):
                with_state(campaigns, "x", "pause")
            continue
        with pytest.raises(CliError, match=says):
            with_state(campaigns, "card-upgrade", action)


def test_a_service_applies_the_newest_version_and_falls_back_to_the_bundle() -> None:
    board = CampaignBoard(KafkaSettings())
    policy = load_policy()
    campaign, version = board.resolve("card-upgrade", policy)
    assert version == 0 and campaign == policy.campaign("card-upgrade")
    board.handle(0, config(2, CARD.model_copy(update={"quota": 5})).model_dump_json().encode())
    board.handle(0, config(1, CARD).model_dump_json().encode())  # older: ignored
    board.handle(0, b'{"version": 3}')  # invalid: ignored, version 2 stays
    board.handle(0, None)  # a tombstone changes nothing
    campaign, version = board.resolve("card-upgrade", policy)
    assert version == 2 and campaign is not None and campaign.quota == 5
    # Once a configuration is published, a campaign it lacks is unknown.
    assert board.resolve("personal-loan", policy) == (None, 2)


def test_a_configuration_lists_each_campaign_once() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        config(1, CARD, CARD)

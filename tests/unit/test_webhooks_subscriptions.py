"""The subscriptions file and the webhook body's privacy contract."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import Release
from services.webhooks.payload import webhook_body
from services.webhooks.subscriptions import SubscriptionsError, load_subscriptions

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "subscriptions.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_endpoints_match_their_campaigns_or_all(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "endpoints": [
                {"name": "crm", "url": "http://crm/h", "secret": SECRET, "campaigns": ["a", "b"]},
                {"name": "all", "url": "https://x/h", "secret": SECRET, "campaigns": ["*"]},
            ]
        },
    )
    subscriptions = load_subscriptions(path)
    assert [e.name for e in subscriptions.for_campaign("a")] == ["crm", "all"]
    assert [e.name for e in subscriptions.for_campaign("zzz")] == ["all"]
    assert SECRET not in repr(subscriptions)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "Invalid JSON"),
        (
            {"endpoints": [{"name": "x", "url": "ftp://h", "secret": SECRET, "campaigns": ["a"]}]},
            "endpoints.0.url",
        ),
        (
            {"endpoints": [{"name": "x", "url": "http://h", "secret": "nope", "campaigns": ["a"]}]},
            "whsec_",
        ),
        (
            {"endpoints": [{"name": "x", "url": "http://h", "secret": SECRET, "campaigns": []}]},
            "endpoints.0.campaigns",
        ),
        (
            {
                "endpoints": [
                    {"name": "x", "url": "http://h", "secret": SECRET, "campaigns": ["a"]}
                ]
                * 2
            },
            "duplicate endpoint names: x",
        ),
        ({"endpoints": [], "extra": 1}, "extra"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_problem(
    tmp_path: Path, content: object, problem: str
) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(SubscriptionsError) as caught:
        load_subscriptions(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert problem in message


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SubscriptionsError, match="cannot read subscriptions file"):
        load_subscriptions(tmp_path / "absent.json")


def test_body_carries_the_release_and_nothing_else() -> None:
    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    release = Release(
        decision_id="dec-1",
        campaign_id="card-upgrade",
        candidate_ref="evt-1",
        score_band="A",
        released_at=now,
        expires_at=now + timedelta(days=7),
    )
    body = json.loads(webhook_body(release))
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "candidate.released"
    assert datetime.fromisoformat(body["timestamp"]) == now
    # extra fields would be refused
    assert Release.model_validate_json(json.dumps(body["data"])) == release
    assert webhook_body(release) == webhook_body(release)  # retries resend identical bytes

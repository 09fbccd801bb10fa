"""The subscriptions file and the webhook body's privacy contract."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import Release
from services.kernel.webhook_signing import secret_bytes
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


OTHER = "whsec_" + base64.b64encode(os.urandom(24)).decode()
UNTIL = datetime(2025, 3, 1, 12, tzinfo=UTC)


def _rotating(**fields: object) -> dict[str, object]:
    endpoint = {"name": "crm", "url": "http://crm/h", "secret": SECRET, "campaigns": ["a"]}
    return {"endpoints": [{**endpoint, **fields}]}


def test_a_rotation_signs_with_both_keys_until_the_overlap_ends(tmp_path: Path) -> None:
    rotation = _rotating(previous_secret=OTHER, previous_secret_until="2025-03-01T13:00:00+01:00")
    path = _write(tmp_path, rotation)
    (crm,) = load_subscriptions(path).endpoints
    assert crm.previous_secret_until == UNTIL  # any offset, compared as instants
    new, old = secret_bytes(SECRET), secret_bytes(OTHER)
    assert crm.keys_at(UNTIL - timedelta(seconds=1)) == (new, old)  # the new one first
    assert crm.keys_at(UNTIL) == (new,)
    assert crm.keys_at(UNTIL + timedelta(days=1)) == (new,)
    assert OTHER not in repr(crm)


def test_one_secret_signs_alone_at_any_time(tmp_path: Path) -> None:
    (crm,) = load_subscriptions(_write(tmp_path, _rotating())).endpoints
    assert crm.previous_secret is None
    assert crm.keys_at(datetime(1970, 1, 2, tzinfo=UTC)) == (secret_bytes(SECRET),)


def test_an_overlap_that_has_ended_is_still_a_valid_file(tmp_path: Path) -> None:
    # Otherwise a file would turn invalid by itself, and the next start would fail.
    ended = _rotating(previous_secret=OTHER, previous_secret_until="2001-01-01T00:00:00Z")
    path = _write(tmp_path, ended)
    (crm,) = load_subscriptions(path).endpoints
    assert crm.keys_at(datetime.now(UTC)) == (secret_bytes(SECRET),)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"previous_secret": OTHER}, "previous_secret and previous_secret_until go together"),
        (
            {"previous_secret_until": "2025-03-01T12:00:00Z"},
            "previous_secret and previous_secret_until go together",
        ),
        (
            {"previous_secret": OTHER, "previous_secret_until": "2025-03-01T12:00:00"},
            "endpoints.0.previous_secret_until: Input should have timezone info",
        ),
        (
            {"previous_secret": "whsec_short", "previous_secret_until": "2025-03-01T12:00:00Z"},
            "endpoints.0.previous_secret",
        ),
        (
            {"previous_secret": SECRET, "previous_secret_until": "2025-03-01T12:00:00Z"},
            "previous_secret is the same key as secret",
        ),
        ({"secrets": [SECRET]}, "endpoints.0.secrets: Extra inputs are not permitted"),
    ],
)
def test_a_bad_rotation_is_refused_naming_the_problem(
    tmp_path: Path, fields: dict[str, object], problem: str
) -> None:
    with pytest.raises(SubscriptionsError) as caught:
        load_subscriptions(_write(tmp_path, _rotating(**fields)))
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)
    assert OTHER not in str(caught.value) and SECRET not in str(caught.value)


def test_subscriber_is_the_named_endpoint_while_it_takes_the_campaign(tmp_path: Path) -> None:
    endpoints = [
        {"name": "crm", "url": "http://crm/h", "secret": SECRET, "campaigns": ["a"]},
        {"name": "all", "url": "http://all/h", "secret": SECRET, "campaigns": ["*"]},
    ]
    subscriptions = load_subscriptions(_write(tmp_path, {"endpoints": endpoints}))
    crm = subscriptions.subscriber("crm", "a")
    assert crm is not None and crm.name == "crm"
    assert subscriptions.subscriber("crm", "b") is None
    assert subscriptions.subscriber("gone", "a") is None
    every = subscriptions.subscriber("all", "anything")
    assert every is not None and every.name == "all"

"""Our Standard Webhooks signatures verify with the independent ``standardwebhooks`` library."""

from __future__ import annotations

import base64
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.kernel.webhook_signing import secret_bytes, sign, signed_headers
from services.webhooks.subscriptions import Endpoint

KEY = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()
BODY = b'{"type":"candidate.released","data":{"campaign_id":"card-upgrade","x":"\xc3\xa9"}}'


def test_signed_headers_verify_with_standardwebhooks() -> None:
    headers = signed_headers(secret_bytes(SECRET), "dec-1", int(time.time()), BODY)
    assert Webhook(SECRET).verify(BODY, headers)["data"]["campaign_id"] == "card-upgrade"


def test_signature_matches_the_librarys_own_for_the_same_inputs() -> None:
    timestamp = 1_700_000_000
    expected = Webhook(SECRET).sign("dec-1", datetime.fromtimestamp(timestamp, UTC), BODY.decode())
    assert sign(KEY, "dec-1", timestamp, BODY) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [("webhook-id", "dec-2"), ("webhook-timestamp", None), ("body", b'{"tampered":1}')],
)
def test_any_change_breaks_the_signature(field: str, value: str | bytes | None) -> None:
    now = int(time.time())
    headers = signed_headers(KEY, "dec-1", now, BODY)
    body = BODY
    if field == "body":
        assert isinstance(value, bytes)
        body = value
    else:
        headers[field] = str(value if value is not None else now - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, headers)


def test_another_secret_does_not_verify() -> None:
    headers = signed_headers(KEY, "dec-1", int(time.time()), BODY)
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


def test_secret_accepts_unpadded_base64_like_the_library() -> None:
    key = os.urandom(20)  # 20 bytes: base64 ends in one "=" of padding
    unpadded = "whsec_" + base64.b64encode(key).decode().rstrip("=")
    assert secret_bytes(unpadded) == key
    headers = signed_headers(key, "dec-1", int(time.time()), BODY)
    Webhook(unpadded).verify(BODY, headers)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("sk_" + base64.b64encode(KEY).decode(), "must start with 'whsec_'"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 16 bytes"),
    ],
)
def test_bad_secrets_are_refused_with_the_reason(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        secret_bytes(secret)


OLD_KEY = os.urandom(32)
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()


def test_two_keys_put_two_signatures_in_the_header_new_first() -> None:
    headers = signed_headers([KEY, OLD_KEY], "dec-1", 1_700_000_000, BODY)
    new, old = headers["webhook-signature"].split(" ")
    assert new == sign(KEY, "dec-1", 1_700_000_000, BODY)
    assert old == sign(OLD_KEY, "dec-1", 1_700_000_000, BODY)


def test_during_an_overlap_a_receiver_holding_either_secret_verifies() -> None:
    headers = signed_headers([KEY, OLD_KEY], "dec-1", int(time.time()), BODY)
    assert Webhook(SECRET).verify(BODY, headers)["data"]["campaign_id"] == "card-upgrade"
    assert Webhook(OLD_SECRET).verify(BODY, headers)["data"]["campaign_id"] == "card-upgrade"
    third = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(third).verify(BODY, headers)


def test_after_an_overlap_only_the_new_secret_verifies() -> None:
    until = datetime.now(UTC) + timedelta(hours=1)
    endpoint = Endpoint(
        name="crm",
        url="https://crm.example/h",
        secret=SECRET,
        campaigns=("*",),
        previous_secret=OLD_SECRET,
        previous_secret_until=until,
    )
    now = int(time.time())
    during = signed_headers(endpoint.keys_at(until - timedelta(minutes=1)), "dec-1", now, BODY)
    after = signed_headers(endpoint.keys_at(until), "dec-1", now, BODY)
    for secret in (SECRET, OLD_SECRET):
        Webhook(secret).verify(BODY, during)
    Webhook(SECRET).verify(BODY, after)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(BODY, after)


def test_no_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        signed_headers([], "dec-1", int(time.time()), BODY)

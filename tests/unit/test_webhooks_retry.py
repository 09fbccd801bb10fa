"""Retry decisions: which statuses, how long to wait, and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from services.webhooks.delivery import classify
from services.webhooks.retry import backoff_s, parse_retry_after, retry_delay_s

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),
        ("Saturday, 01-Mar-25 12:00:30 GMT", 30.0),  # obsolete RFC 850 form
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),  # in the past
    ],
)
def test_retry_after_delta_seconds_and_http_dates(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2025"])
def test_unusable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0), (60, 30.0)]:
        delays = [backoff_s(attempt, initial_s=0.5, max_s=30.0, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_retry_after_wins_when_longer_but_is_capped() -> None:
    rng = random.Random(1)

    def delay(attempt: int, retry_after_s: float | None) -> float:
        return retry_delay_s(
            attempt, retry_after_s, initial_s=0.5, max_s=30.0, max_retry_after_s=60.0, rng=rng
        )

    assert delay(1, 10.0) == 10.0
    assert delay(1, 3600.0) == 60.0
    assert delay(1, None) <= 0.5
    # a Retry-After shorter than our backoff does not make us retry sooner
    assert delay(6, 0.0) >= 8.0


@pytest.mark.parametrize(
    ("status", "result"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (301, "rejected"),
        (400, "rejected"),
        (401, "rejected"),
        (404, "rejected"),
        (410, "rejected"),
        (408, "retryable"),
        (429, "retryable"),
        (500, "retryable"),
        (502, "retryable"),
        (503, "retryable"),
    ],
)
def test_status_classes(status: int, result: str) -> None:
    assert classify(status, None).result == result


def test_retry_after_is_read_only_on_429_and_503() -> None:
    assert classify(429, "5").retry_after_s == 5.0
    assert classify(503, "5").retry_after_s == 5.0
    assert classify(500, "5").retry_after_s is None


def test_the_default_schedule_outlasts_an_endpoint_down_for_two_minutes() -> None:
    """A release is dead-lettered only after every attempt failed: with the defaults,
    the shortest possible retry span (every jitter at its minimum) exceeds 120 s."""

    class Lowest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return a

    from services.webhooks.settings import WebhooksSettings

    settings = WebhooksSettings()
    span = sum(
        backoff_s(
            attempt,
            initial_s=settings.initial_backoff_s,
            max_s=settings.max_backoff_s,
            rng=Lowest(),
        )
        for attempt in range(1, settings.max_attempts)
    )
    assert span > 120.0

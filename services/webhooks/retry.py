"""When to retry a webhook and how long to wait: exponential backoff with jitter, and the
receiver's ``Retry-After`` (RFC 9110: delta-seconds or an HTTP-date) when it sends one."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
_JITTER = random.Random()


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait, or None when the header is absent or unparseable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_s(
    attempt: int,
    *,
    initial_s: float,
    max_s: float,
    rng: random.Random | None = None,
) -> float:
    """The pause after failed attempt ``attempt`` (1-based): doubling from ``initial_s``,
    capped at ``max_s``, with "equal jitter" (half fixed, half random) so a fleet of
    senders that failed together does not retry together, yet never retries at once."""
    ceiling = min(max_s, initial_s * 2.0 ** (attempt - 1))
    return ceiling / 2 + (rng or _JITTER).uniform(0, ceiling / 2)


def retry_delay_s(
    attempt: int,
    retry_after_s: float | None,
    *,
    initial_s: float,
    max_s: float,
    max_retry_after_s: float,
    rng: random.Random | None = None,
) -> float:
    delay = backoff_s(attempt, initial_s=initial_s, max_s=max_s, rng=rng)
    if retry_after_s is not None:
        # The receiver knows best when it can take more; we wait at least that long,
        # up to our own cap so one endpoint cannot park a release for hours.
        delay = max(delay, min(retry_after_s, max_retry_after_s))
    return delay

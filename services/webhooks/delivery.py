"""One release to one endpoint over HTTP: signed attempts, retries with backoff, a verdict.

Concurrency is bounded per attempt, not per delivery: a delivery sleeping between
retries does not hold one of the HTTP slots.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import aiohttp

from services.kernel.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_UNSUBSCRIBED
from services.kernel.webhook_signing import signed_headers
from services.webhooks.retry import (
    RETRY_AFTER_STATUSES,
    is_retryable,
    parse_retry_after,
    retry_delay_s,
)
from services.webhooks.retry_log import RetryLog, error_cause, http_cause
from services.webhooks.settings import WebhooksSettings
from services.webhooks.subscriptions import Endpoint

log = logging.getLogger(__name__)

AttemptResult = Literal["delivered", "rejected", "retryable", "error"]
"""The ``result`` label of ``fedscreen_webhook_attempts_total``: 2xx, a non-retryable
status, a retryable status (408, 429, 5xx), a connection error or timeout."""

FailureReason = Literal["webhook-delivery-failed", "webhook-rejected"]


@dataclass(frozen=True)
class Attempt:
    result: AttemptResult
    status: int | None
    retry_after_s: float | None = None
    error: str = ""
    """What aiohttp said when there was no HTTP answer."""
    failure: str = ""
    """Why there was no HTTP answer, short (``error_cause``): what the retry log counts."""

    @property
    def cause(self) -> str:
        """What went wrong, short: ``HTTP 503``, ``connection refused``, ``timeout``, ..."""
        if self.status is not None:
            return http_cause(self.status)
        return self.failure or "no answer"


@dataclass(frozen=True)
class Outcome:
    endpoint: Endpoint
    attempts: int
    last: Attempt

    @property
    def delivered(self) -> bool:
        return self.last.result == "delivered"

    @property
    def reason(self) -> FailureReason:
        return "webhook-rejected" if self.last.result == "rejected" else "webhook-delivery-failed"

    def describe(self) -> str:
        last = self.last
        what = f"status {last.status}" if last.status is not None else last.cause
        detail = f" ({last.error})" if last.error else ""
        return (
            f"endpoint {self.endpoint.name} ({self.endpoint.url}): {what} "
            f"after {self.attempts} attempt(s){detail}"
        )


@dataclass(frozen=True)
class Unsubscribed:
    """Before an attempt, the endpoint no longer took the release: a subscriptions reload
    removed it, or removed the release's campaign from its list. The delivery ends."""

    name: str
    attempts: int

    def describe(self) -> str:
        return f"endpoint {self.name}: unsubscribed after {self.attempts} attempt(s)"


Subscriber = Callable[[str], Endpoint | None]
"""The endpoint of that name as the subscriptions in force have it, or None once it no
longer takes the release."""


class Deliverer:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: WebhooksSettings,
        rng: random.Random | None = None,
        retry_log: RetryLog | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.rng = rng or random.Random()
        self.retry_log = retry_log or RetryLog(settings.retry_log_interval_s)

    async def deliver(self, endpoint: Endpoint, msg_id: str, body: bytes) -> Outcome:
        """Deliver to ``endpoint`` as it is now, whatever the subscriptions become."""
        result = await self.follow(endpoint.name, lambda _: endpoint, msg_id, body)
        if isinstance(result, Unsubscribed):
            raise RuntimeError("a fixed endpoint cannot unsubscribe")
        return result

    async def follow(
        self, name: str, subscriber: Subscriber, msg_id: str, body: bytes
    ) -> Outcome | Unsubscribed:
        """Deliver to the endpoint called ``name``, looking it up before every attempt:
        each attempt goes to its URL and is signed with its secret(s) as they are then,
        and the delivery ends (:class:`Unsubscribed`) once it no longer takes the release."""
        attempt_no = 0
        while True:
            endpoint = subscriber(name)
            if endpoint is None:
                WEBHOOK_UNSUBSCRIBED.inc()
                return Unsubscribed(name, attempt_no)
            attempt_no += 1
            attempt = await self.attempt(endpoint, msg_id, body)
            WEBHOOK_ATTEMPTS.labels(result=attempt.result).inc()
            final = attempt.result in ("delivered", "rejected")
            if final or attempt_no >= self.settings.max_attempts:
                return Outcome(endpoint, attempt_no, attempt)
            delay = retry_delay_s(
                attempt_no,
                attempt.retry_after_s,
                initial_s=self.settings.initial_backoff_s,
                max_s=self.settings.max_backoff_s,
                max_retry_after_s=self.settings.max_retry_after_s,
                rng=self.rng,
            )
            self.retry_log.retry(
                endpoint.name, attempt.cause, decision_id=msg_id, attempt=attempt_no, delay_s=delay
            )
            await asyncio.sleep(delay)

    async def attempt(self, endpoint: Endpoint, msg_id: str, body: bytes) -> Attempt:
        now = time.time()
        # During a secret rotation's overlap, signed with both the new and the old key.
        keys = endpoint.keys_at(datetime.fromtimestamp(now, UTC))
        headers = {
            "content-type": "application/json",
            **signed_headers(keys, msg_id, int(now), body),
        }
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout_s)
        async with self.slots:
            try:
                async with self.session.post(
                    str(endpoint.url),
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    # A redirect is an answer we do not act on: a 3xx is not delivered.
                    allow_redirects=False,
                ) as response:
                    # Read the (ignored) body so the connection goes back to the pool.
                    await response.read()
                    return classify(response.status, response.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError) as exc:
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                return Attempt("error", None, error=detail, failure=error_cause(exc))


def classify(status: int, retry_after: str | None) -> Attempt:
    if 200 <= status <= 299:
        return Attempt("delivered", status)
    if is_retryable(status):
        wait = parse_retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None
        return Attempt("retryable", status, retry_after_s=wait)
    return Attempt("rejected", status)

"""Webhook retry lines: each names its cause, and an outage cannot flood the log."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from services.kernel.kafka.broker import free_port
from services.webhooks.delivery import Deliverer
from services.webhooks.retry_log import RetryLog, error_cause, http_cause
from services.webhooks.settings import WebhooksSettings
from services.webhooks.subscriptions import Endpoint

KEY: Any = SimpleNamespace(host="crm.example", port=443, ssl=True)


def test_each_failure_gets_a_cause_an_operator_can_act_on() -> None:
    cases: list[tuple[BaseException, str]] = [
        (TimeoutError(), "timeout"),
        (aiohttp.ServerTimeoutError("read"), "timeout"),
        (aiohttp.ConnectionTimeoutError("connect"), "connect timeout"),
        (
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connect call failed")),
            "connection refused",
        ),
        (
            aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known")),
            "DNS lookup failed",
        ),
        (
            aiohttp.ClientConnectorError(KEY, OSError(errno.EHOSTUNREACH, "No route to host")),
            "host unreachable",
        ),
        (aiohttp.ServerDisconnectedError(), "server disconnected"),
        (aiohttp.ClientPayloadError("truncated"), "broken response"),
        (aiohttp.ClientOSError(errno.EPIPE, "Broken pipe"), "connection error (Broken pipe)"),
    ]
    assert [(type(exc).__name__, error_cause(exc)) for exc, _ in cases] == [
        (type(exc).__name__, cause) for exc, cause in cases
    ]
    assert http_cause(503) == "HTTP 503"


async def test_an_unreachable_endpoint_is_reported_as_connection_refused() -> None:
    endpoint = Endpoint(
        name="down",
        url=f"http://127.0.0.1:{free_port()}/",
        secret="whsec_" + "A" * 32,
        campaigns=("*",),
    )
    settings = WebhooksSettings(
        subscriptions_file=Path("unused.json"),
        max_attempts=2,
        initial_backoff_s=0.01,
        max_backoff_s=0.01,
    )
    async with aiohttp.ClientSession() as session:
        outcome = await Deliverer(session, settings).deliver(endpoint, "dec-1", b"{}")
    assert outcome.last.cause == "connection refused"
    assert "connection refused" in outcome.describe()
    assert "status none" not in outcome.describe()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def recorder() -> tuple[logging.Logger, Lines]:
    logger = logging.getLogger(f"test.retry_log.{id(object())}")
    logger.propagate = False
    lines = Lines()
    logger.addHandler(lines)
    return logger, lines


def test_a_one_minute_outage_logs_a_handful_of_lines_that_count_every_retry() -> None:
    clock, (logger, lines) = Clock(), recorder()
    retries = RetryLog(interval_s=10.0, clock=clock, logger=logger)
    # 1,412 retries over a minute, as in the issue: mostly refused, some 503s.
    for i in range(1412):
        clock.now = 1000.0 + i * 60.0 / 1412
        cause = "HTTP 503" if i % 10 == 0 else "connection refused"
        retries.retry("crm", cause, decision_id=f"d-{i}", attempt=1 + i % 5, delay_s=0.5)
    clock.now = 1070.0  # the receiver is back: the next flush writes the tail
    retries.flush()
    retries.flush()  # nothing more to say

    messages = [r.getMessage() for r in lines.records]
    assert len(messages) <= 1 + 7  # the first retry, then at most one line per 10 s
    first = lines.records[0]
    assert first.__dict__["decision_id"] == "d-0"
    assert first.__dict__["endpoint"] == "crm"
    assert "HTTP 503" in first.getMessage()
    summaries = lines.records[1:]
    assert all(r.__dict__["endpoint"] == "crm" for r in summaries)
    assert 1 + sum(r.__dict__["retries"] for r in summaries) == 1412
    refused = sum(r.__dict__["causes"].get("connection refused", 0) for r in summaries)
    assert refused == sum(1 for i in range(1412) if i % 10 != 0)
    assert any(
        "connection refused" in m and "HTTP 503" in m and "in the last 10s" in m
        for m in messages[1:]
    )


def test_each_endpoint_is_limited_on_its_own_and_a_quiet_one_is_reported_at_once_again() -> None:
    clock, (logger, lines) = Clock(), recorder()
    retries = RetryLog(interval_s=10.0, clock=clock, logger=logger)
    retries.retry("a", "timeout", decision_id="d-1", attempt=1, delay_s=1.0)
    retries.retry("b", "HTTP 500", decision_id="d-2", attempt=1, delay_s=1.0)
    retries.retry("a", "timeout", decision_id="d-3", attempt=2, delay_s=2.0)
    assert [r.__dict__["endpoint"] for r in lines.records] == ["a", "b"]

    clock.now += 10.0
    retries.flush()  # a: one retry summarised; b: nothing since its first line
    assert [r.getMessage() for r in lines.records[2:]] == [
        "webhook retries to a: 1 in the last 10s: 1 timeout"
    ]
    clock.now += 10.0
    retries.flush()  # a quiet interval ends both windows
    count = len(lines.records)
    retries.retry("a", "HTTP 502", decision_id="d-4", attempt=1, delay_s=0.5)
    assert len(lines.records) == count + 1
    assert lines.records[-1].__dict__["decision_id"] == "d-4"

"""A service that is not ready says why: on /readyz and in one log line."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from services.intake.settings import IntakeSettings
from services.kernel.kafka.broker import free_port
from services.kernel.logs import logging_config
from services.kernel.metrics import start_http
from services.kernel.readiness import ReadinessLog
from services.partner.settings import PartnerSettings
from services.prescreen.settings import PrescreenSettings
from services.webhooks.settings import WebhooksSettings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def readiness_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "services.kernel.readiness"]


def test_a_reason_that_persists_is_logged_once_and_a_passing_one_not_at_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    reporter = ReadinessLog("intake", settle_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="services.kernel.readiness"):
        reporter.observe("no partition of bank.candidates.v1 assigned yet")
        clock.now = 3.0
        why = "no usable model bundle on model.rollouts.bank.v1: no PSI token map"
        reporter.observe(why)  # the first reason passed before it settled
        for second in range(4, 40):
            clock.now = float(second)
            reporter.observe(why)
        clock.now = 41.0
        reporter.observe(None)
        reporter.observe(None)
    assert readiness_lines(caplog) == [f"intake not ready: {why}", "intake ready"]


def test_becoming_ready_at_once_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    reporter = ReadinessLog("webhooks", clock=Clock())
    with caplog.at_level(logging.INFO, logger="services.kernel.readiness"):
        reporter.observe(None)
        reporter.observe(None)
    assert readiness_lines(caplog) == ["webhooks ready"]


async def test_readyz_answers_503_with_the_reason_then_200() -> None:
    reason: list[str | None] = ["no PSI token map keys/tokens/payments.csv for partner payments"]
    port = free_port()
    runner = await start_http(port, lambda: reason[0], host="127.0.0.1")
    assert runner is not None
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 503
                assert await response.text() == (
                    "not ready: no PSI token map keys/tokens/payments.csv for partner payments"
                )
            reason[0] = None
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert (response.status, await response.text()) == (200, "ready")
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
    finally:
        await runner.cleanup()


async def test_the_metrics_server_listens_on_the_configured_host() -> None:
    runner = await start_http(free_port(), lambda: None, host="127.0.0.1")
    assert runner is not None
    try:
        assert {address[0] for address in runner.addresses} == {"127.0.0.1"}
    finally:
        await runner.cleanup()


def test_every_service_has_a_metrics_host_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix in ("INTAKE", "PARTNER", "PRESCREEN", "WEBHOOKS"):
        monkeypatch.setenv(f"{prefix}_METRICS_HOST", "127.0.0.1")
    assert IntakeSettings().metrics_host == "127.0.0.1"
    assert PartnerSettings().metrics_host == "127.0.0.1"
    assert PrescreenSettings().metrics_host == "127.0.0.1"
    assert WebhooksSettings().metrics_host == "127.0.0.1"
    monkeypatch.delenv("INTAKE_METRICS_HOST")
    assert IntakeSettings().metrics_host == "0.0.0.0"  # containers: probes come from outside


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_the_workers_logging_config_writes_json_and_holds_aiokafka_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What prescreen's faust worker installs (services/prescreen/worker.py)."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setenv("FEDSCREEN_LOG_FORMAT", "json")
    logging.config.dictConfig(logging_config("INFO"))
    logging.getLogger("faust.worker").info("[^Worker]: Starting...")
    logging.getLogger("aiokafka").info("a record per message")
    logging.getLogger("aiokafka").warning("lost the coordinator")
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("faust.worker", "[^Worker]: Starting..."),
        ("aiokafka", "lost the coordinator"),
    ]

"""A misspelt variable with a service's prefix is reported, not silently ignored."""

from __future__ import annotations

import logging

import pytest

from services.intake.settings import IntakeSettings
from services.kernel import config
from services.kernel.config import KafkaSettings, load_settings, unknown_settings
from services.kernel.logs import LogSettings
from services.partner.settings import PartnerSettings


def test_a_misspelt_intake_variable_names_the_real_one() -> None:
    environ = {"INTAKE_TOKEN_KEY_DIR": "/srv/tokens", "INTAKE_LINGER_MS": "5", "HOME": "/root"}
    assert unknown_settings(IntakeSettings, environ) == [
        "unknown setting INTAKE_TOKEN_KEY_DIR (did you mean INTAKE_TOKEN_KEYS_DIR?)"
    ]


def test_an_unknown_variable_with_nothing_close_is_still_reported() -> None:
    (message,) = unknown_settings(IntakeSettings, {"INTAKE_COLOUR": "blue"})
    assert message.startswith("unknown setting INTAKE_COLOUR (")
    assert "ignored" in message


def test_names_are_case_insensitive_like_the_settings_themselves() -> None:
    assert unknown_settings(IntakeSettings, {"intake_linger_ms": "5"}) == []


def test_other_tools_kafka_variables_are_left_alone_but_a_near_miss_is_not() -> None:
    environ = {
        "KAFKA_HEAP_OPTS": "-Xmx1G",
        "KAFKA_OPTS": "",
        "KAFKA_CFG_NODE_ID": "0",
        "KAFKA_BOOTSTRAP_SERVER": "broker:9092",
    }
    assert unknown_settings(KafkaSettings, environ) == [
        "unknown setting KAFKA_BOOTSTRAP_SERVER (did you mean KAFKA_BOOTSTRAP_SERVERS?)"
    ]


def test_kubernetes_service_links_are_not_settings_but_a_misspelt_port_is() -> None:
    environ = {
        # what a Service named partner-payments injects into every pod of the namespace
        "PARTNER_PAYMENTS_SERVICE_HOST": "10.0.0.7",
        "PARTNER_PAYMENTS_SERVICE_PORT": "9100",
        "PARTNER_PAYMENTS_SERVICE_PORT_METRICS": "9100",
        "PARTNER_PAYMENTS_PORT": "tcp://10.0.0.7:9100",
        "PARTNER_PAYMENTS_PORT_9100_TCP": "tcp://10.0.0.7:9100",
        "PARTNER_PAYMENTS_PORT_9100_TCP_ADDR": "10.0.0.7",
        "PARTNER_PAYMENTS_PORT_9100_TCP_PORT": "9100",
        "PARTNER_PAYMENTS_PORT_9100_TCP_PROTO": "tcp",
        "PARTNER_METRIC_PORT": "9100",
    }
    assert unknown_settings(PartnerSettings, environ) == [
        "unknown setting PARTNER_METRIC_PORT (did you mean PARTNER_METRICS_PORT?)"
    ]


def test_log_settings_are_checked_too() -> None:
    assert unknown_settings(LogSettings, {"FEDSCREEN_LOG_FROMAT": "text"}) == [
        "unknown setting FEDSCREEN_LOG_FROMAT (did you mean FEDSCREEN_LOG_FORMAT?)"
    ]


def test_load_settings_warns_once_per_variable_and_still_loads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(config, "_warned", set())
    monkeypatch.setenv("INTAKE_TOKEN_KEY_DIR", "/srv/tokens")
    monkeypatch.setenv("INTAKE_LINGER_MS", "7")
    with caplog.at_level(logging.WARNING, logger="services.kernel.config"):
        first = load_settings(IntakeSettings)
        load_settings(IntakeSettings)
    assert first.linger_ms == 7.0
    warnings = [r for r in caplog.records if r.name == "services.kernel.config"]
    assert [r.getMessage() for r in warnings] == [
        "unknown setting INTAKE_TOKEN_KEY_DIR (did you mean INTAKE_TOKEN_KEYS_DIR?)"
    ]
    assert warnings[0].__dict__["variable"] == "INTAKE_TOKEN_KEY_DIR"

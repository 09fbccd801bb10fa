"""JSON logs with batch and decision ids; the consumer-lag gauge."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from services.kernel.kafka.lag import faust_samples, publish
from services.kernel.logs import JsonFormatter, formatter


def test_json_logs_carry_extras_as_top_level_fields() -> None:
    record = logging.LogRecord(
        "services.prescreen", logging.INFO, __file__, 1, "batch %s decided", ("b-1",), None
    )
    record.batch_id = "b-1"
    record.decision_id = "d-9"
    body = json.loads(JsonFormatter().format(record))
    assert body["message"] == "batch b-1 decided"
    assert (body["batch_id"], body["decision_id"], body["level"]) == ("b-1", "d-9", "INFO")
    assert "args" not in body and "msg" not in body  # no LogRecord internals


def test_exceptions_are_kept_in_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_the_format_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSCREEN_LOG_FORMAT", "text")
    assert not isinstance(formatter(), JsonFormatter)
    monkeypatch.setenv("FEDSCREEN_LOG_FORMAT", "json")
    assert isinstance(formatter(), JsonFormatter)


def lag(service: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "fedscreen_consumer_lag",
        {"service": service, "topic": topic, "partition": str(partition)},
    )


def test_lag_gauges_follow_the_assignment() -> None:
    seen = publish("svc-a", [("t", 0, 5), ("t", 1, 0)], set())
    assert (lag("svc-a", "t", 0), lag("svc-a", "t", 1)) == (5.0, 0.0)
    publish("svc-a", [("t", 1, 7)], seen)  # partition 0 moved to another instance
    assert lag("svc-a", "t", 0) is None and lag("svc-a", "t", 1) == 7.0


class FakeFaustConsumer:
    def __init__(self) -> None:
        self._read_offset = {TopicPartition("p", 0): 9, TopicPartition("p", 1): None}

    def assignment(self) -> set[TopicPartition]:
        return {
            TopicPartition("p", 0),
            TopicPartition("p", 1),
            TopicPartition("p", 2),
            TopicPartition("app-table-changelog", 0),
        }

    def highwater(self, tp: TopicPartition) -> int | None:
        return {0: 25, 1: 3}.get(tp.partition)


def test_faust_lag_counts_from_the_last_offset_read() -> None:
    samples = sorted(faust_samples(FakeFaustConsumer(), ["p"]))
    # read up to offset 9 of 25 → 15 behind; nothing read of 3 → 3; no highwater yet →
    # skipped; the table's changelog is not an input → skipped
    assert samples == [("p", 0, 15), ("p", 1, 3)]

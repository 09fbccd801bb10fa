"""A service that refuses to start says why in one line of its log format."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli import fedscreen

pytestmark = pytest.mark.integration


def run_intake(tmp_path: Path, log_format: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_PARTITIONS": "0", "FEDSCREEN_LOG_FORMAT": log_format}
    return fedscreen(tmp_path, "intake", "run", env=env, timeout=60)


def test_an_invalid_setting_is_one_json_line_when_json_is_asked_for(tmp_path: Path) -> None:
    result = run_intake(tmp_path, "json")
    assert result.returncode != 0
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1, lines
    assert errors[0]["message"].startswith("fedscreen: error: invalid configuration:")
    assert "KAFKA_PARTITIONS" in errors[0]["message"]


def test_an_invalid_setting_is_one_plain_line_in_text_format(tmp_path: Path) -> None:
    result = run_intake(tmp_path, "text")
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("fedscreen: error: invalid configuration: KAFKA_PARTITIONS")

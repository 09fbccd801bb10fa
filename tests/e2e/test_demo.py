"""The README's demo command, end to end, on a sample of the data (one training round)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_runs_end_to_end_and_verifies_itself(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "demo",
            "--rows",
            "2000",
            "--rounds",
            "1",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "120"},
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "every candidate decided exactly once" in output
    assert "federated v1 (via the protocol)" in output
    assert "Outcome: default rate among released customers" in output
    assert "at card-upgrade's volume (200 released), the federated model contacts" in output
    assert "webhooks delivered, signature verified" in output
    logs = tmp_path / "demo" / "logs"
    assert {p.stem for p in logs.glob("*.log")} >= {
        "intake",
        "prescreen",
        "webhooks",
        "receiver",
        "partner-repayments",
        "partner-payments",
    }


def test_the_demo_refuses_a_bad_option_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--rows", "10"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "--rows" in result.stderr

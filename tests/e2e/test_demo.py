"""The README's demo command, end to end, on a sample of the data (one training round)."""

from __future__ import annotations

import os
import re
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
    # The campaigns were applied at run time, and card-upgrade's quota raised mid-stream.
    assert "published campaign configuration version 1" in output
    assert "~ card-upgrade: quota: " in output
    assert "published campaign configuration version 2" in output
    assert "card-upgrade: its quota changed mid-stream (no restart, no retraining)" in output
    rows = {
        int(m[1]): [int(x.replace(",", "")) for x in m.groups()[1:]]
        for m in re.finditer(
            r"│\s+(\d)\s+│\s+([\d,]+)\s+│\s+([\d,]+)\s+│\s+([\d,]+)\s+│\s+([\d,]+)\s+│", output
        )
    }
    assert set(rows) == {1, 2}, rows  # every card-upgrade candidate under a published version
    (quota_1, _, released_1, refused_1), (_, _, released_2, refused_2) = rows[1], rows[2]
    assert released_1 <= quota_1 and refused_1 > 0  # the small quota was reached
    assert released_2 > 0 and refused_2 == 0  # and raised: releases again
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

"""``fedscreen bench --soak``: a short soak end to end (correctness of the report, not
a measurement). The growth and drift maths are tests/unit/test_bench_soak.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from services.bench.capacity import BROKER
from services.bench.run import finite
from services.bench.soak.command import SoakRequest, soak

SERVICES = ("partner-repayments", "partner-payments", "intake", "prescreen")


@pytest.mark.integration
async def test_short_soak_reports_every_window(tmp_path: Path) -> None:
    request = SoakRequest(
        duration_s=8.0,
        rate=50.0,
        interval_s=2.0,
        rows=1000,
        out=tmp_path / "soak.json",
        workdir=tmp_path / "work",
    )
    outcome = await soak(request, Console(file=io.StringIO(), width=160))
    assert outcome.problems == []
    results = json.loads(json.dumps(finite(outcome.results), allow_nan=False))
    run = results["soak"]
    account = run["accounting"]
    assert account["expected"] == account["decided"] == account["scored"] == 400
    assert account["missing"] == account["conflicting"] == account["duplicated"] == 0
    windows = run["windows"]
    assert len(windows) == 4
    assert sum(w["offered"] for w in windows) == 400
    for w in windows:
        for name in (*SERVICES, BROKER):
            assert w["processes"][name]["rss_mb"] > 0
            assert w["processes"][name]["processes"] >= 1
        ms = w["decided_ms"]
        assert 0 <= ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"]
        assert w["accounting"]["decided"] == w["offered"]
        assert w["machine_cores"] > 0 and w["other_cores"] >= 0
        assert w["records"] > 0 and w["dlq"] == 0
        assert set(w["lag"]) >= {"fedscreen-intake", "fedscreen-prescreen"}
        assert all(lag is not None and lag >= 0 for lag in w["lag"].values())
    for name in (*SERVICES, BROKER):
        growth = run["memory"][name]
        assert growth["first_mb"] > 0 and growth["last_mb"] > 0
        assert growth["slope_mb_per_h"] is not None  # two or more samples in the second half
        assert growth["judged"] is (name != BROKER)
        assert run["cpu"][name]["first_cores"] >= 0
    latency = run["latency"]
    assert latency["windows"] >= 3 and latency["baseline_p99_ms"] > 0
    assert latency["drift"] is not None and latency["slope_ms_per_h"] is not None
    checks = {c["name"].split(",")[0].split(":")[0] for c in run["checks"]}
    assert checks == {"RSS growth", "p99 drift", "keeps up", "machine quiet"}
    assert run["verdict"] in ("PASS", "FAIL")
    assert {c["status"] for c in run["checks"]} <= {"PASS", "FAIL"}  # a busy machine: FAIL
    assert set(results["machine"]) >= {"platform", "cpu_count", "cpu_model", "date"}
    assert results["config"]["prescreen_decided_retention_s"] > 0

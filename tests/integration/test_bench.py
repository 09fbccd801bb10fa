"""``fedscreen bench`` end to end on a tiny size, and from the command line. Correctness
only: benchmarks are never timed tests. The micro-benchmark and the results without a
pipeline are tests/unit/test_bench.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from services.bench.capacity import inputs_from_results, plan
from services.bench.micro import MicroOptions
from services.bench.run import BenchRequest, bench, finite


@pytest.mark.integration
async def test_tiny_bench_decides_every_candidate(tmp_path: Path) -> None:
    request = BenchRequest(
        candidates=300,
        rate=50.0,
        duration_s=3.0,
        modes=("plaintext",),
        micro=False,
        out=tmp_path / "results.json",
        workdir=tmp_path / "work",
        rows=2000,
        warmup=50,
    )
    outcome = await bench(request, Console(file=io.StringIO(), width=120))
    assert outcome.problems == []
    results = json.loads(json.dumps(finite(outcome.results), allow_nan=False))
    run = results["pipeline"]["modes"]["plaintext"]
    throughput = run["throughput"]
    assert throughput["steady_decisions_per_s"] > 0
    assert throughput["overall_decisions_per_s"] > 0
    account = throughput["accounting"]
    assert account["decided"] == account["expected"] == 300
    assert account["missing"] == account["conflicting"] == 0
    assert account["scored"] == 300  # the bench policy stops nothing before scoring
    latency = run["latency"]
    assert latency["accounting"]["decided"] == latency["candidates"] == 150
    ms = latency["decided_ms"]
    assert 0 <= ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"]
    assert set(results["machine"]) >= {"platform", "python", "cpu_count", "cpu_model", "date"}
    statuses = {t["name"].split()[0]: t["status"] for t in results["targets"]}
    assert statuses["fragment"] == "NOT RUN"  # micro was off, so no speed-up to judge


@pytest.mark.integration
async def test_tiny_federated_bench_starts_its_flood_with_full_factor_pools(
    tmp_path: Path,
) -> None:
    """The throughput phase is served from pools the partners filled beforehand; the
    results say so, and what each partner had to compute on the request path. The same
    run measures CPU per candidate per service against the crypto floor of its
    micro-benchmark, the records each candidate writes per topic, and makes the
    capacity plans asked for, also from its saved JSON."""
    request = BenchRequest(
        candidates=200,
        rate=40.0,
        duration_s=2.0,
        modes=("federated",),
        # 1024 bits keeps the test short; the pipeline runs 2048 (correctness only here).
        micro_options=MicroOptions(key_bits=1024, fragment_batches=1, naive_candidates=2),
        out=tmp_path / "results.json",
        workdir=tmp_path / "work",
        rows=1000,
        warmup=20,
        factor_pool=48,
        plans=(10_000.0, 100_000.0),
    )
    console = io.StringIO()
    outcome = await bench(request, Console(file=console, width=160))
    assert outcome.problems == []
    results = json.loads(json.dumps(finite(outcome.results), allow_nan=False))
    cpu = results["cpu_per_candidate"]
    services = cpu["services"]
    assert set(services) == {
        "partner-repayments",
        "partner-payments",
        "intake",
        "prescreen",
        "broker (tansu)",
    }
    assert cpu["decided"] == 200
    assert all(s["us_per_candidate"] >= 0 for s in services.values())
    assert cpu["pipeline_us"] > 0
    assert cpu["crypto_floor_us"] == results["micro"]["fragment_us_per_candidate"] > 0
    assert cpu["ratio"] == pytest.approx(cpu["pipeline_us"] / cpu["crypto_floor_us"])
    traffic = results["pipeline"]["modes"]["federated"]["throughput"]["traffic"]
    # Every candidate is one record in and one decision out; requests, pending records
    # and fragments are per batch, so fewer than one per candidate.
    assert traffic["bank.candidates.v1"]["messages"] == 200
    assert traffic["prescreen.decisions.v1"]["messages"] == 200
    for topic in ("fed.requests.repayments.v1", "prescreen.pending.v1", "fed.fragments.v1"):
        assert 0 < traffic[topic]["messages"] < 200
        assert traffic[topic]["mean_bytes"] > 0
    plans = {p["rate"]: p for p in results["plans"]}
    assert set(plans) == {10_000.0, 100_000.0}
    small, large = plans[10_000.0], plans[100_000.0]
    for made in (small, large):
        instances = {s["name"]: s["instances"] for s in made["services"]}
        assert set(instances) == set(services) - {"broker (tansu)"}
        assert made["partitions"] >= max(instances.values()) >= 1
        assert made["messages_per_s"] > made["rate"]  # at least candidates and decisions
    assert large["bank_cores"] == pytest.approx(10 * small["bank_cores"])  # linear
    text = console.getvalue()
    assert "Capacity plan for 100,000 candidates/s" in text
    assert "pipeline / crypto floor" in text
    # The plan is made again, identically, from the saved results.
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(results))
    again = inputs_from_results(json.loads(saved.read_text()))
    remade = plan(again.cpu, again.traffic, 100_000.0)
    assert remade.to_json()["partitions"] == large["partitions"]
    assert remade.bank_cores == pytest.approx(large["bank_cores"])
    run = outcome.results["pipeline"]["modes"]["federated"]
    assert run["throughput"]["accounting"]["scored"] == 200  # every one with both partners
    pools = run["throughput"]["factor_pools"]
    assert pools["target"] == 48
    assert set(pools["ready_at_start"]) == {"repayments", "payments"}
    assert all(count >= 48 for count in pools["ready_at_start"].values())
    assert all(count >= 0 for count in pools["computed_inline"].values())
    assert set(run["latency"]["factor_pools"]["ready_at_end"]) == {"repayments", "payments"}
    assert "federated, throughput phase: partner factor pools: payments" in console.getvalue()


@pytest.mark.integration
def test_bench_leaves_nothing_outside_fedscreen_by_default(tmp_path: Path) -> None:
    """Run from a directory, the bench writes its JSON (and everything else) under
    ``.fedscreen/bench`` there, not into the directory itself."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--no-pipeline"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},  # this checkout's code, from any cwd
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [".fedscreen"]
    results = json.loads((tmp_path / ".fedscreen/bench/bench-results.json").read_text())
    assert results["micro"]["speedup"] > 0
    assert "results written to .fedscreen/bench/bench-results.json" in done.stdout

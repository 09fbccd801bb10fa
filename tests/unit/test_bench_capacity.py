"""The capacity plan's arithmetic (services/bench/capacity.py) on made-up measurements,
and where ``fedscreen bench`` writes its results: pure, no broker, no run."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.bench.capacity import (
    BROKER,
    HARNESS,
    Assumptions,
    PlanError,
    TopicLoad,
    assumption_lines,
    cpu_per_candidate,
    inputs_from_results,
    instances_for,
    plan,
    topic_loads,
)
from services.bench.cli import DEFAULT_WORKDIR, default_out
from services.bench.probes import read_processes
from services.bench.report import print_measured, print_plan
from services.kernel.crypto.randomness import POOL_THREAD_NAME, name_os_thread
from tests.cli import fedscreen

# CPU seconds of a phase that decided 10,000 candidates: 1 s is 100 µs per candidate.
CPU = {
    "intake": {"cpu_s": 1.0, "cores": 0.1},
    "prescreen": {"cpu_s": 3.0, "cores": 0.3},
    "partner-repayments": {"cpu_s": 0.5, "cores": 0.05},
    "partner-payments": {"cpu_s": 0.4, "cores": 0.04},
    BROKER: {"cpu_s": 2.0, "cores": 0.2},
    HARNESS: {"cpu_s": 9.0, "cores": 0.9},
}


def measured(**kwargs: Any) -> Any:
    return cpu_per_candidate(CPU, 10_000, **kwargs)


def test_cpu_per_candidate_per_service_and_the_ratio_to_the_crypto_floor() -> None:
    cpu = measured(crypto_floor_us=230.0)
    assert cpu.services["intake"].us_per_candidate == pytest.approx(100.0)
    assert cpu.services["prescreen"].us_per_candidate == pytest.approx(300.0)
    assert cpu.services[BROKER].us_per_candidate == pytest.approx(200.0)
    # The harness is not the product: reported apart, never in the pipeline's total.
    assert HARNESS not in cpu.services
    assert cpu.harness_us == pytest.approx(900.0)
    assert cpu.pipeline_us == pytest.approx(100 + 300 + 50 + 40 + 200)
    assert cpu.ratio == pytest.approx(690 / 230)
    assert measured().ratio is None  # no micro-benchmark, no floor
    json.dumps(cpu.to_json(), allow_nan=False)


def test_factors_drawn_from_a_partners_pool_count_towards_its_sustained_cpu() -> None:
    cpu = measured(pool_drawn={"repayments": 200, "payments": -5}, factor_ms=10.0)
    # 200 factors of 10 ms over 10,000 candidates: 200 µs each, on top of the measured 50.
    repayments = cpu.services["partner-repayments"]
    assert repayments.pool_us_per_candidate == pytest.approx(200.0)
    assert repayments.sustained_us == pytest.approx(250.0)
    # A pool that grew during the phase adds nothing (its refill is in the measured CPU).
    assert cpu.services["partner-payments"].pool_us_per_candidate == 0.0
    # The pipeline's figure against the floor is the measured one, as the issue defines it.
    assert cpu.pipeline_us == pytest.approx(690.0)


def test_a_partners_factor_pool_threads_go_with_its_factors_not_its_serving_cpu() -> None:
    """The crypto floor leaves the uniform factors out (they are computed ahead): so does
    the pipeline's figure. The pool threads' CPU in the phase (refills) joins the factors
    drawn from the pool filled before it."""
    cpu = cpu_per_candidate(
        {**CPU, "partner-repayments": {"cpu_s": 2.5, "cores": 0.25, "pool_cpu_s": 2.0}},
        10_000,
        crypto_floor_us=230.0,
        pool_drawn={"repayments": 100},
        factor_ms=10.0,
        factor_floor_us=400.0,
    )
    repayments = cpu.services["partner-repayments"]
    assert repayments.us_per_candidate == pytest.approx(50.0)  # (2.5 - 2.0) s / 10,000
    assert repayments.pool_us_per_candidate == pytest.approx(200.0 + 100.0)
    assert repayments.sustained_us == pytest.approx(350.0)
    assert cpu.pipeline_us == pytest.approx(690.0)
    assert cpu.ratio == pytest.approx(690 / 230)
    assert cpu.ratio_with_factors == pytest.approx((690 + 300) / (230 + 400))
    assert measured(crypto_floor_us=230.0).ratio_with_factors is None  # no factors measured


def test_the_probe_tells_the_factor_pool_threads_cpu_apart() -> None:
    burnt = threading.Event()

    def pool_thread() -> None:
        name_os_thread(POOL_THREAD_NAME)
        while time.thread_time() < 0.3:  # CPU, not wall time: the machine may be busy
            sum(range(10_000))
        burnt.set()
        time.sleep(1.0)  # alive while it is read

    thread = threading.Thread(target=pool_thread, daemon=True)
    thread.start()
    assert burnt.wait(60)
    sample = read_processes([os.getpid()])
    assert sample is not None
    assert 0.25 <= sample.pool_cpu_s <= sample.cpu_s


def test_a_phase_that_decided_nothing_cannot_be_planned_from() -> None:
    with pytest.raises(PlanError, match="no candidate was decided"):
        cpu_per_candidate(CPU, 0)
    with pytest.raises(PlanError):
        topic_loads({}, 0)


def test_instances_keep_each_one_under_the_headroom() -> None:
    a = Assumptions(headroom=0.7)
    assert instances_for(0.0, a) == 1
    assert instances_for(0.7, a) == 1  # exactly at the headroom
    assert instances_for(0.71, a) == 2
    assert instances_for(6.3, a) == 9
    assert instances_for(2.1, Assumptions(headroom=0.7, instance_cores=2.0)) == 2


def test_plan_scales_each_service_linearly_and_sizes_partitions_and_topics() -> None:
    cpu = measured(crypto_floor_us=230.0)
    traffic = topic_loads(
        {
            "bank.candidates.v1": {"messages": 10_000, "mean_bytes": 250.0},
            "fed.fragments.v1": {"messages": 500, "mean_bytes": 1_100.0},
            "prescreen.pending.v1": {"messages": 250, "mean_bytes": 12_000.0},
        },
        10_000,
    )
    made = plan(cpu, traffic, 10_000.0, Assumptions(headroom=0.5, partition_mb_s=10.0))
    by_name = {s.name: s for s in made.services}
    assert set(by_name) == {"intake", "prescreen", "partner-repayments", "partner-payments"}
    # prescreen: 300 µs x 10,000/s = 3 cores busy; at <= 50 % per one-core instance, 6.
    assert by_name["prescreen"].busy_cores == pytest.approx(3.0)
    assert by_name["prescreen"].cores == pytest.approx(6.0)
    assert by_name["prescreen"].instances == 6
    assert by_name["intake"].instances == 2
    assert made.bank_cores == pytest.approx(2.0 + 6.0)
    assert made.partner_cores() == pytest.approx({"repayments": 1.0, "payments": 0.8})
    assert made.broker_busy_cores == pytest.approx(2.0)  # reported apart, not a service
    assert made.partitions == 6
    assert "prescreen needs 6 instances" in made.partitions_reason
    topics = {t.topic: t for t in made.topics}
    assert topics["bank.candidates.v1"].messages_per_s == pytest.approx(10_000)
    assert topics["bank.candidates.v1"].mb_per_s == pytest.approx(2.5)
    assert topics["prescreen.pending.v1"].messages_per_s == pytest.approx(250)
    assert topics["prescreen.pending.v1"].mb_per_s == pytest.approx(3.0)
    assert made.messages_per_s == pytest.approx(10_750)
    assert made.mb_per_s == pytest.approx(2.5 + 0.55 + 3.0)
    json.dumps(made.to_json(), allow_nan=False)
    # Ten times the rate: ten times the cores, and as many instances as that takes.
    large = plan(cpu, traffic, 100_000.0, Assumptions(headroom=0.5))
    assert large.bank_cores == pytest.approx(10 * made.bank_cores)
    assert {s.name: s.instances for s in large.services}["prescreen"] == 60


def test_bytes_can_need_more_partitions_than_instances() -> None:
    cpu = cpu_per_candidate({"prescreen": {"cpu_s": 0.01}}, 10_000)  # 1 µs a candidate
    traffic = [TopicLoad("prescreen.pending.v1", 0.1, 50_000.0)]  # 5 KB a candidate
    made = plan(cpu, traffic, 10_000.0, Assumptions(partition_mb_s=10.0))
    assert [s.instances for s in made.services] == [1]
    assert made.partitions == 5  # 50 MB/s at 10 MB/s a partition
    assert "prescreen.pending.v1 writes 50.0 MB/s" in made.partitions_reason


def test_plan_rejects_a_rate_or_headroom_it_cannot_use() -> None:
    with pytest.raises(PlanError, match="target rate"):
        plan(measured(), [], 0.0)
    with pytest.raises(PlanError, match="headroom"):
        Assumptions(headroom=1.5)


def test_a_plan_from_a_run_with_unscored_candidates_says_it_may_be_short() -> None:
    cpu = cpu_per_candidate(CPU, 10_000, scored=9_160)
    assert cpu.unscored == 840
    made = plan(cpu, [], 10_000.0)
    assert any("840 of 10000 candidates were decided without" in n for n in made.notes)
    assert not any("without" in n for n in plan(measured(scored=10_000), [], 1.0).notes)


def test_the_plan_states_its_assumptions() -> None:
    made = plan(measured(), [TopicLoad("t", 1.0, None)], 1_000.0, Assumptions(headroom=0.6))
    text = " ".join(assumption_lines(made.assumptions))
    for phrase in ("linearly", "<= 60% busy", "per partition", "broker is not in", "10 MB/s"):
        assert phrase in text
    # No pool figures and a topic without sizes: the plan says what it lacks.
    assert any("re-randomisation factors" in n for n in made.notes)
    assert any("MB/s is missing" in n for n in made.notes)
    console = io.StringIO()
    print_plan(Console(file=console, width=200), made, measured_on="a test")
    assert "Capacity plan for 1,000 candidates/s" in console.getvalue()
    assert "assumptions:" in console.getvalue()


def results_json() -> dict[str, Any]:
    """The parts of ``fedscreen bench``'s JSON a plan reads."""
    return {
        "machine": {"cpu_model": "Test CPU", "cpu_count": 2, "date": "2026-12-05"},
        "micro": {"fragment_us_per_candidate": 230.0, "uniform_factor_ms": 10.0},
        "pipeline": {
            "modes": {
                "federated": {
                    "throughput": {
                        "accounting": {"decided": 10_000, "scored": 10_000},
                        "cpu": CPU,
                        "factor_pools": {
                            "ready_at_start": {"repayments": 1024, "payments": 1024},
                            "ready_at_end": {"repayments": 824, "payments": 1024},
                        },
                        "traffic": {
                            "bank.candidates.v1": {
                                "messages": 10_000,
                                "sampled": 2000,
                                "mean_bytes": 250.0,
                            }
                        },
                    }
                }
            }
        },
    }


def test_inputs_from_saved_results() -> None:
    inputs = inputs_from_results(results_json())
    assert inputs.cpu.crypto_floor_us == 230.0
    assert inputs.cpu.services["partner-repayments"].pool_us_per_candidate == pytest.approx(200.0)
    assert inputs.cpu.services["partner-payments"].pool_us_per_candidate == 0.0
    assert inputs.traffic == [TopicLoad("bank.candidates.v1", 1.0, 250.0)]
    assert "Test CPU" in inputs.machine
    console = io.StringIO()
    print_measured(Console(file=console, width=200), inputs)
    assert "pipeline / crypto floor" in console.getvalue()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: r.update(pipeline=None), "no federated pipeline run"),
        (lambda r: r["pipeline"]["modes"].pop("federated"), "no federated pipeline run"),
        (
            lambda r: r["pipeline"]["modes"]["federated"]["throughput"].pop("cpu"),
            "no CPU figures",
        ),
        (
            lambda r: r["pipeline"]["modes"]["federated"]["throughput"].pop("traffic"),
            "no per-topic traffic",
        ),
    ],
)
def test_results_a_plan_cannot_be_made_from_say_why(damage: Any, message: str) -> None:
    results = results_json()
    damage(results)
    with pytest.raises(PlanError, match=message):
        inputs_from_results(results)


def test_results_go_to_the_work_directory_unless_out_says_otherwise(tmp_path: Path) -> None:
    assert Path(".fedscreen/bench") == DEFAULT_WORKDIR
    assert default_out(None, DEFAULT_WORKDIR, "bench-results.json") == Path(
        ".fedscreen/bench/bench-results.json"
    )
    assert default_out(None, tmp_path, "soak-results.json") == tmp_path / "soak-results.json"
    assert default_out(tmp_path / "x.json", DEFAULT_WORKDIR, "bench-results.json") == (
        tmp_path / "x.json"
    )


@pytest.mark.integration
def test_plan_from_a_saved_run_and_its_errors_in_one_line(tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(results_json()))
    done = fedscreen(tmp_path, "bench", "--plan", "10000", "--plan", "100000", "--from", str(saved))
    assert done.returncode == 0, done.stderr
    assert "Capacity plan for 10,000 candidates/s" in done.stdout
    assert "Capacity plan for 100,000 candidates/s" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # nothing written
    (tmp_path / "old.json").write_text(json.dumps({"pipeline": None}))
    for argv, says in [
        (["--plan", "1000", "--from", "missing.json"], "no such file"),
        (["--plan", "1000", "--from", "old.json"], "no federated pipeline run"),
        (["--from", "run.json"], "needs at least one --plan"),
        (["--plan", "-5"], "a target rate must be in"),
        (["--plan", "1000", "--modes", "plaintext"], "--plan needs the federated"),
        (["--scale-out", "--soak"], "choose one"),
        (["--scale-out", "--workers", "1", "--replicas", "1"], "more than one worker"),
        (["--scale-out", "--replicas", "9"], "--replicas must be between 1 and 8"),
        (["--scale-out", "--plan", "1000"], "--plan does not apply to --scale-out"),
    ]:
        done = fedscreen(tmp_path, "bench", *argv)
        assert done.returncode != 0
        assert says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_partners_replicas_do_not_bound_the_partitions() -> None:
    # Replicas read every request partition and claim batches in the shared ledger: ten
    # of them need no ten partitions, while prescreen's three workers need three.
    cpu = cpu_per_candidate(
        {"partner-payments": {"cpu_s": 6.0}, "prescreen": {"cpu_s": 2.0}}, 10_000
    )
    made = plan(cpu, [], 10_000.0, Assumptions(headroom=0.7))
    by_name = {s.name: s.instances for s in made.services}
    assert by_name == {"partner-payments": 9, "prescreen": 3}
    assert made.partitions == 3
    assert "prescreen needs 3 instances" in made.partitions_reason

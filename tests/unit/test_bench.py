"""``fedscreen bench`` without a pipeline: the micro-benchmark's two paths against each
other, its report, the JSON it writes, and the options. Correctness only: benchmarks
are never timed tests."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from services.bench.cli import parse_modes
from services.bench.micro import (
    MicroOptions,
    expected,
    fragment_path,
    make_workload,
    naive_path,
    run_micro,
)
from services.bench.run import BenchRequest, finite, run_bench
from services.kernel.crypto.paillier import generate_keypair
from services.kernel.errors import CliError


def test_fragment_and_naive_paths_decrypt_the_same_sums() -> None:
    options = MicroOptions(key_bits=1024, hit_rate=0.3, seed=3)
    key = generate_keypair(1024, allow_small=True)
    workload = make_workload(options, 45, key)  # two full batches of 21 slots and a partial
    fragment = fragment_path(workload)
    naive = naive_path(workload)
    truth = expected(workload)
    assert len(fragment.results) == len(naive.results) == 45
    assert fragment.results == naive.results == truth
    assert any(r.blacklist_hits == 2 for r in truth)  # both partners' hits add up


def test_micro_report_on_one_batch() -> None:
    result = run_micro(
        MicroOptions(key_bits=1024, fragment_batches=1, naive_candidates=5),
        generate_keypair(1024, allow_small=True),
    )
    assert result.fragment_candidates == result.slots
    assert result.naive_candidates == 5
    assert result.fragment_us_per_candidate > 0 and result.naive_us_per_candidate > 0
    assert math.isclose(
        result.speedup, result.naive_us_per_candidate / result.fragment_us_per_candidate
    )


def test_bench_writes_json_and_reports_problems_as_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "bench.json"
    request = BenchRequest(
        pipeline=False,
        out=out,
        micro_options=MicroOptions(key_bits=1024, fragment_batches=1, naive_candidates=3),
    )
    assert run_bench(request, Console(file=io.StringIO())) == 0
    results = json.loads(out.read_text())
    assert results["pipeline"] is None
    assert results["micro"]["speedup"] > 0


def test_results_never_carry_nan() -> None:
    cleaned = finite({"rate": math.nan, "p": [1.0, math.inf], "n": 3, "ok": (2.5,)})
    assert cleaned == {"rate": None, "p": [1.0, None], "n": 3, "ok": [2.5]}


def test_modes_option() -> None:
    assert parse_modes("federated, plaintext") == ("federated", "plaintext")
    assert parse_modes("plaintext") == ("plaintext",)
    for bad in ("", "federated,federated", "fast"):
        with pytest.raises(CliError):
            parse_modes(bad)

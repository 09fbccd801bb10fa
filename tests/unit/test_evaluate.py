"""``fedscreen evaluate``: the KS/AUC helpers, the input checks and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from services.evaluate import metrics
from services.evaluate.run import prepare_workdir, read_test_scores
from services.evaluate.spec import EvaluateSpec, build_spec
from services.evaluate.split import read_dataset, split
from services.kernel.errors import CliError

HEADER = "ID,A,B,C,y"


def _csv(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "data.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _rows(n: int = 40) -> list[str]:
    rng = np.random.default_rng(1)
    return [f"c{i},{rng.normal():.3f},{rng.normal():.3f},{i % 7},{i % 2}" for i in range(n)]


def _spec(data: Path, **overrides: object) -> EvaluateSpec:
    args: dict[str, object] = {
        "data": data,
        "id_column": "ID",
        "label_column": "y",
        "bank": "A",
        "partners": ["p1=B", "p2=C"],
        "test_size": 0.3,
        "seed": 0,
        "out_dir": data.parent / "out",
    }
    args.update(overrides)
    return build_spec(**args)  # type: ignore[arg-type]


# -- KS and AUC ----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_is_the_largest_tpr_fpr_gap_and_auc_is_sklearns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(500) < 0.3).astype(int)
    scores = rng.normal(size=500) + 0.8 * y
    scores[::5] = np.round(scores[::5], 1)  # ties
    fpr, tpr, _ = roc_curve(y, scores)
    # by definition, threshold by threshold: |TPR - FPR| with "positive" = score >= t
    brute = max(
        abs(float(np.mean(scores[y == 1] >= t)) - float(np.mean(scores[y == 0] >= t)))
        for t in scores
    )
    assert metrics.ks(y, scores) == pytest.approx(brute, abs=1e-12)
    assert metrics.ks(y, scores) == pytest.approx(float(np.max(np.abs(tpr - fpr))), abs=1e-12)
    assert metrics.auc(y, scores) == pytest.approx(roc_auc_score(y, scores))


def test_ks_and_auc_on_extreme_rankings() -> None:
    y = np.array([0, 0, 0, 1, 1])
    assert metrics.ks(y, np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == 1.0
    assert metrics.auc(y, np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == 1.0
    assert metrics.ks(y, np.full(5, 0.5)) == 0.0
    assert metrics.auc(y, np.full(5, 0.5)) == 0.5
    # inverted ranking: KS measures separation, whichever direction
    assert metrics.ks(y, np.array([0.9, 0.8, 0.7, 0.2, 0.1])) == 1.0
    assert metrics.auc(y, np.array([0.9, 0.8, 0.7, 0.2, 0.1])) == 0.0


def test_metrics_need_both_classes_and_matching_lengths() -> None:
    with pytest.raises(ValueError, match="both 0 and 1"):
        metrics.ks(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="same length"):
        metrics.auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


# -- input checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"test_size": 0.0}, "--test-size must be strictly between 0 and 1"),
        ({"test_size": 1.0}, "--test-size must be strictly between 0 and 1"),
        ({"partners": ["p1=B", "p1=C"]}, "--partner p1 is given twice"),
        ({"partners": ["P1=B"]}, "must match"),
        ({"partners": ["p_1=B"]}, "must match"),
        ({"partners": ["p1"]}, "NAME=COL1,COL2"),
        ({"partners": ["p1="]}, "comma-separated column names"),
        ({"partners": ["p1=B", "p2=A"]}, "column A is in two parties (bank and p2)"),
        ({"partners": ["p1=B", "p2=B,C"]}, "column B is in two parties (p1 and p2)"),
        ({"partners": ["p1=B,B"]}, "column B is listed twice for p1"),
        ({"bank": "A,ID"}, "column ID is the id column"),
        ({"partners": ["p1=y"]}, "column y is the label column"),
        ({"bank": ""}, "--bank: expected comma-separated column names"),
        ({"partners": []}, "at least one --partner"),
        ({"quota_candidates": 0}, "--quota-candidates must be at least 1"),
    ],
)
def test_bad_arguments_are_refused(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(CliError) as error:
        _spec(_csv(tmp_path, _rows()), **overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("rows", "header", "overrides", "message"),
    [
        (["c1,1,2,3,2"], HEADER, {}, "label y must be 0 or 1, got '2'"),
        (["c1,1,2,3,yes"], HEADER, {}, "label y must be 0 or 1"),
        (["c1,1,x,3,1"], HEADER, {}, "column B is not a number: 'x'"),
        (["c1,1,2,3,1", "c1,1,2,3,0"], HEADER, {}, "id c1 appears twice"),
        (["c1,1,2,3,1", ",1,2,3,0"], HEADER, {}, "empty id"),
        (["c1,1,2,3,1"], HEADER, {"bank": "A,NOPE"}, "has no column(s) NOPE"),
        (["c1,1,2,3,1", "c2,1,2,3,1"], HEADER, {}, "needs both 0 and 1"),
        (["c1,1,2,3"], HEADER, {}, "4 fields, the header has 5"),
    ],
)
def test_bad_data_is_refused(
    tmp_path: Path, rows: list[str], header: str, overrides: dict[str, object], message: str
) -> None:
    spec = _spec(_csv(tmp_path, rows, header), **overrides)
    with pytest.raises(CliError) as error:
        read_dataset(spec)
    assert message in str(error.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="does not exist"):
        read_dataset(_spec(tmp_path / "nope.csv"))


def test_missing_values_are_read_as_nan(tmp_path: Path) -> None:
    data = read_dataset(_spec(_csv(tmp_path, ["c1,,NA,null,1", "c2, 1.5 ,nan,None,0.0"])))
    assert data.ids == ["c1", "c2"] and data.labels.tolist() == [1, 0]
    assert np.isnan(data.values["A"][0]) and data.values["A"][1] == 1.5
    assert data.text["A"] == ["", "1.5"] and data.text["B"] == ["", ""]


def test_the_split_is_stratified_and_reproducible(tmp_path: Path) -> None:
    labels = np.array([1] * 30 + [0] * 70)
    first, again, other = split(labels, 0.3, 5), split(labels, 0.3, 5), split(labels, 0.3, 6)
    assert first.test.tolist() == again.test.tolist() != other.test.tolist()
    assert len(first.test) == 30 and labels[first.test].sum() == 9
    assert sorted([*first.train, *first.test]) == list(range(100))
    with pytest.raises(CliError, match="cannot split"):
        split(np.array([0, 0, 0, 1]), 0.5, 0)


def test_a_partner_column_sqlite_cannot_name_is_one_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows(), header="ID,A,B-1,C,y")
    with pytest.raises(CliError, match="partner p1: feature name 'B-1' is not a plain identifier"):
        _spec(path, partners=["p1=B-1"])


def test_test_scores_must_cover_every_test_id_once(tmp_path: Path) -> None:
    path = tmp_path / "test_scores.csv"
    path.write_text("id,score\na,0.1\nb,0.9\n")
    assert read_test_scores(path, ["b", "a"]).tolist() == [0.9, 0.1]
    with pytest.raises(CliError, match="1 test ids have no score"):
        read_test_scores(path, ["a", "b", "c"])
    path.write_text("id,score\na,0.1\na,0.2\n")
    with pytest.raises(CliError, match="scored twice"):
        read_test_scores(path, ["a"])


# -- the command's one-line errors ------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--bank": "A,NOPE"}, "has no column(s) NOPE"),
        ({"--data": "missing.csv"}, "does not exist"),
        ({"--partner": "p1=A"}, "column A is in two parties"),
        ({"--test-size": "1.5"}, "--test-size must be strictly between 0 and 1"),
        ({"--partner": "Bad=B"}, "must match ^[a-z0-9-]+$"),
        ({"--label": "C"}, "label C must be 0 or 1"),
    ],
)
def test_the_command_fails_in_one_line(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    path = _csv(tmp_path, _rows())
    options = {
        "--data": str(path),
        "--id": "ID",
        "--label": "y",
        "--bank": "A",
        "--partner": "p1=B",
        "--out": str(tmp_path / "out"),
    }
    options.update(change)
    argv = [arg for pair in options.items() for arg in pair]
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "evaluate", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_duplicate_partner_names_fail_in_one_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "evaluate",
            *("--data", str(path), "--id", "ID", "--label", "y", "--bank", "A"),
            *("--partner", "p1=B", "--partner", "p1=C", "--out", str(tmp_path / "out")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "fedscreen: error: --partner p1 is given twice"


def test_the_scratch_directory_is_a_new_temp_dir_or_an_empty_one(tmp_path: Path) -> None:
    data = _csv(tmp_path, _rows())
    scratch, temporary = prepare_workdir(_spec(data))
    assert temporary and scratch.parent == (tmp_path / "out").resolve() and scratch.is_dir()
    given = tmp_path / "work"
    assert prepare_workdir(_spec(data, workdir=given)) == (given.resolve(), False)
    (given / "leftover").write_text("x")
    with pytest.raises(CliError, match="must be an empty or new directory"):
        prepare_workdir(_spec(data, workdir=given))
    with pytest.raises(CliError, match="is not a directory"):
        prepare_workdir(_spec(data, out_dir=data))

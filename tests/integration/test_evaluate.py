"""``fedscreen evaluate`` end to end on a 3,000-row sample: the real protocol (embedded
broker, a process per partner, the bank's ``fedscreen train`` process), one round."""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from services.stack import dataset as ds

pytestmark = pytest.mark.integration
ROWS = 3000
SEED = 4
PARTNERS = {
    "repayments": ds.REFERENCE_PARTNERS["repayments"],
    "payments": ds.REFERENCE_PARTNERS["payments"],
}


@dataclass
class Evaluated:
    result: subprocess.CompletedProcess[str]
    data: Path
    out: Path
    workdir: Path


def _evaluate(root: Path, partners: dict[str, list[str]], *extra: str) -> Evaluated:
    data = root / "sample.csv"
    with ds.DATA_CSV.open() as source:
        data.write_text("".join(line for _, line in zip(range(ROWS + 1), source, strict=False)))
    out, workdir = root / "out", root / "work"
    command = [
        *(sys.executable, "-m", "services.cli", "evaluate", "--data", str(data)),
        *("--id", ds.ID, "--label", ds.LABEL, "--bank", ",".join(ds.BANK_FEATURES)),
        *(
            arg
            for name, cols in partners.items()
            for arg in ("--partner", f"{name}={','.join(cols)}")
        ),
        *("--test-size", "0.3", "--seed", str(SEED), "--rounds", "1"),
        *("--out", str(out), "--workdir", str(workdir), *extra),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "120"},
        check=False,
    )
    return Evaluated(result, data, out, workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Evaluated]:
    """Both runs at once, each its own process, broker and workdir: much of a run is
    waiting (group joins, the forger's settling time), which the other run fills."""
    every_column = [c for cols in PARTNERS.values() for c in cols]
    two_root, one_root = (
        tmp_path_factory.mktemp("evaluate"),
        tmp_path_factory.mktemp("evaluate-one"),
    )
    with ThreadPoolExecutor(2) as pool:
        two = pool.submit(_evaluate, two_root, PARTNERS, "--audit")
        one = pool.submit(_evaluate, one_root, {"all": every_column}, "--audit")
        return {"evaluated": two.result(), "one_partner": one.result()}


@pytest.fixture(scope="module")
def evaluated(runs: dict[str, Evaluated]) -> Evaluated:
    return runs["evaluated"]


@pytest.fixture(scope="module")
def one_partner(runs: dict[str, Evaluated]) -> Evaluated:
    return runs["one_partner"]


def _labels(data: Path) -> dict[str, int]:
    with data.open(newline="") as handle:
        return {row[ds.ID]: int(row[ds.LABEL]) for row in csv.DictReader(handle)}


def _predictions(out: Path) -> list[tuple[str, float]]:
    with (out / "predictions.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["id", "score"]
        return [(customer, float(score)) for customer, score in reader]


def test_the_command_succeeds(evaluated: Evaluated) -> None:
    output = evaluated.result.stdout + evaluated.result.stderr
    assert evaluated.result.returncode == 0, output[-4000:]
    assert "federated: AUC" in evaluated.result.stdout


def test_every_test_row_is_predicted_exactly_once(evaluated: Evaluated) -> None:
    labels = _labels(evaluated.data)
    ids = list(labels)
    # the split is sklearn's, stratified on the label, from the seed
    _, test = train_test_split(
        np.arange(len(ids)), test_size=0.3, stratify=list(labels.values()), random_state=SEED
    )
    predictions = _predictions(evaluated.out)
    predicted = [customer for customer, _ in predictions]
    assert len(predicted) == len(set(predicted)) == len(test) == 900
    assert set(predicted) == {ids[i] for i in test}
    assert all(0.0 <= score <= 1.0 for _, score in predictions)


def test_the_report_matches_the_predictions_and_beats_the_floor(evaluated: Evaluated) -> None:
    report = json.loads((evaluated.out / "report.json").read_text())
    labels = _labels(evaluated.data)
    predictions = _predictions(evaluated.out)
    recomputed = roc_auc_score([labels[c] for c, _ in predictions], [s for _, s in predictions])
    models = report["models"]
    assert models["federated"]["auc"] == pytest.approx(recomputed, abs=1e-12)
    assert models["federated"]["auc"] > models["bank_only_floor"]["auc"]
    for model in models.values():
        assert 0.0 <= model["ks"] <= 1.0 and 0.0 <= model["auc"] <= 1.0
    assert models["bank_only_floor"]["columns"] == ds.BANK_FEATURES
    assert len(models["pooled_ceiling"]["columns"]) == 23
    split = report["split"]
    assert (split["rows"], split["train_rows"], split["test_rows"]) == (3000, 2100, 900)
    assert report["seed"] == split["seed"] == SEED
    assert report["columns"]["partners"] == PARTNERS
    training = report["training"]
    assert training["rounds_run"] == 1 and 0 <= training["rounds_kept"] <= 1
    assert training["seconds"] > 0
    for name in PARTNERS:
        assert report["bytes"]["sent_to_partner"][name] > 100_000
        assert report["bytes"]["received_from_partner"][name] > 10_000
        assert report["bytes"]["per_party"][name]["received"] > 0
    assert report["reference_lightgbm"]["num_trees"] == 300


def test_the_html_report_embeds_png_images(evaluated: Evaluated) -> None:
    html = (evaluated.out / "report.html").read_text()
    marker = 'src="data:image/png;base64,'
    assert html.count(marker) >= 2
    for chunk in html.split(marker)[1:]:
        assert base64.b64decode(chunk.split('"', 1)[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "pooled" in html and "floor" in html


def _release_order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


def _reference_predictions(out: Path) -> dict[str, tuple[float, float]]:
    with (out / "predictions_reference.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["id", "bank_only_floor", "pooled_ceiling"]
        return {customer: (float(floor), float(pooled)) for customer, floor, pooled in reader}


def test_the_outcome_block_is_recomputed_from_the_written_predictions(
    evaluated: Evaluated,
) -> None:
    """At each volume V, each model releases its V lowest scores (equal scores in the
    predictions' row order); recomputed here in plain Python from the written files."""
    assert "outcome: At card-upgrade's volume (300 of 900 customers released)" in (
        evaluated.result.stdout
    )
    outcome = json.loads((evaluated.out / "report.json").read_text())["outcome"]
    labels = _labels(evaluated.data)
    federated = _predictions(evaluated.out)
    reference = _reference_predictions(evaluated.out)
    ids = [customer for customer, _ in federated]
    assert list(reference) == ids
    y = [labels[c] for c in ids]
    scores = {
        "federated": [s for _, s in federated],
        "bank_only": [reference[c][0] for c in ids],
        "pooled": [reference[c][1] for c in ids],
    }
    order = {model: _release_order(values) for model, values in scores.items()}
    assert outcome["rows"] == 900 and outcome["defaulters"] == sum(y)
    assert outcome["quota_candidates"] == 9000
    volumes = outcome["volumes"]
    campaigns = [(v["campaign"], v["quota"], v["released"]) for v in volumes if v["campaign"]]
    assert campaigns == [("card-upgrade", 3000, 300), ("personal-loan", 1200, 120)]
    sweep = [v["released"] for v in volumes if v["campaign"] is None]
    assert sweep == [45, 90, 180, 270, 360, 450, 540, 630, 720, 810, 900]
    for volume in volumes:
        released = volume["released"]
        assert volume["volume_share"] == pytest.approx(released / 900)
        rates = {}
        for model, ranked in order.items():
            bad = sum(y[i] for i in ranked[:released])
            assert volume[f"defaulters_{model}"] == bad
            rates[model] = bad / released
            assert volume[f"bad_rate_{model}"] == pytest.approx(rates[model], abs=1e-12)
        assert volume["defaulters_avoided_per_10k"] == pytest.approx(
            (rates["bank_only"] - rates["federated"]) * 10_000, abs=1e-9
        )
    everyone = volumes[-1]
    assert everyone["bad_rate_federated"] == everyone["bad_rate_bank_only"] == sum(y) / 900
    # the federated model beats the bank-only one where a campaign would use it
    card = volumes[0]
    assert card["bad_rate_federated"] < card["bad_rate_bank_only"]
    # the bands: every test row in exactly one band of each campaign, per model
    for campaign in ("card-upgrade", "personal-loan"):
        bands = [b for b in outcome["by_band"] if b["campaign"] == campaign]
        assert bands[-1]["band"] is None and not bands[-1]["released_by_policy"]
        for model, values in scores.items():
            assert sum(b[f"customers_{model}"] for b in bands) == 900
            for band in bands:
                low = -1.0 if band is bands[0] else band["pd_above"]
                high = 2.0 if band is bands[-1] else band["pd_at_most"]
                inside = [i for i, s in enumerate(values) if low < s <= high]
                assert band[f"customers_{model}"] == len(inside)
                assert band[f"defaulters_{model}"] == sum(y[i] for i in inside)
    gains = outcome["gains"]
    assert (
        gains[0]["share_declined"] == 0.0 and gains[-1]["defaulters_caught_share_federated"] == 1.0
    )
    assert outcome["answer"].startswith("At card-upgrade's volume")
    page = (evaluated.out / "report.html").read_text()
    assert "<h2>Outcome: defaulters among the released customers</h2>" in page
    assert 'alt="bad rate at equal release volume, and gains chart" src="data:image/png' in page
    assert html.escape(outcome["answer"]) in page


def test_each_party_got_only_its_own_columns(evaluated: Evaluated) -> None:
    def header(path: Path) -> list[str]:
        return path.read_text().splitlines()[0].split(",")

    work = evaluated.workdir
    for name in ("bank_train.csv", "bank_test.csv"):
        assert header(work / "bank" / name) == [ds.ID, *ds.BANK_FEATURES, ds.LABEL]
    for name, columns in PARTNERS.items():
        assert header(work / "partners" / name / "features.csv") == [ds.ID, *columns]
        log = (work / "logs" / f"partner-{name}.log").read_text()
        assert "training session" in log and "encrypted weights stored" in log


@pytest.mark.parametrize("which", ["evaluated", "one_partner"])
def test_the_audit_runs_every_attack_on_the_run_and_every_claim_holds(
    which: str, request: pytest.FixtureRequest
) -> None:
    run: Evaluated = request.getfixturevalue(which)
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    audit = json.loads((run.out / "audit.json").read_text())
    names = set(json.loads((run.out / "report.json").read_text())["columns"]["partners"])
    attacks = audit["attacks"]
    keys = {"name", "adversary", "target", "rows", "recovered_fraction", "baseline_fraction"}
    assert all(set(a) == keys | {"verdict"} for a in attacks)
    for partner in names:
        mine = [a for a in attacks if a["target"].startswith(f"{partner}:")]
        assert {(a["adversary"], a["name"]) for a in mine} == {
            ("curious bank", "training: subset-sum per round"),
            ("curious bank", "training and serving: solver across rounds and versions"),
            ("Kafka principal", "forged bank messages"),
        }
    for attack in attacks:
        assert attack["rows"] > 0
        assert attack["verdict"] == "holds", attack
        assert attack["recovered_fraction"] <= attack["baseline_fraction"] + 0.01
    bins = [a for a in attacks if a["adversary"] == "curious bank"]
    assert all(0 < a["baseline_fraction"] < 0.5 for a in bins)  # a real guessing baseline
    page = (run.out / "audit.html").read_text()
    assert "Every attack did no better than guessing" in page and "holds" in page

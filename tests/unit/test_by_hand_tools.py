"""What the by-hand path (docs/operations.md) relies on: ``fedscreen split``, the packaged
default policy, the labelled output of ``keys signing``, and ``candidates send``'s input
checks. Every command runs from a directory outside the repository."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from schemas import PolicyConfig
from services.candidates.events import read_candidates
from services.kernel.crypto.signing import load_signing_key, public_key_b64
from services.kernel.errors import CliError
from services.training.policy_file import default_policy_text, load_policy
from tests.cli import fedscreen

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "UCI_Credit_Card.csv"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def small_data(tmp_path: Path, rows: int = 60) -> Path:
    path = tmp_path / "data.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cid", "a", "b", "c", "d", "y"])
        for i in range(rows):
            writer.writerow([f"c{i}", i, i * 2, "" if i % 7 == 0 else i % 5, i % 3, i % 2])
    return path


def test_the_packaged_policy_is_deploy_policy_toml() -> None:
    assert default_policy_text() == (ROOT / "deploy" / "policy.toml").read_text()
    assert isinstance(load_policy(), PolicyConfig)
    assert load_policy() == load_policy(ROOT / "deploy" / "policy.toml")


@pytest.mark.integration
def test_split_gives_each_party_only_its_columns(tmp_path: Path) -> None:
    data = small_data(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = fedscreen(
        work,
        "split",
        "--data",
        str(data),
        "--id",
        "cid",
        "--label",
        "y",
        "--bank",
        "a,b",
        "--partner",
        "one=c",
        "--partner",
        "two=d",
        "--rows",
        "40",
        "--out",
        "out",
    )
    assert result.returncode == 0, result.stderr
    out = work / "out"
    train, test = read_rows(out / "bank" / "train.csv"), read_rows(out / "bank" / "test.csv")
    assert list(train[0]) == ["cid", "a", "b", "y"] and list(test[0]) == ["cid", "a", "b", "y"]
    assert (len(train), len(test)) == (28, 12)
    ids = {r["cid"] for r in train} | {r["cid"] for r in test}
    assert len(ids) == 40
    assert {r["cid"] for r in read_rows(out / "bank" / "customers.csv")} == ids
    one = read_rows(out / "partners" / "one" / "features.csv")
    two = read_rows(out / "partners" / "two" / "features.csv")
    assert list(one[0]) == ["cid", "c"] and list(two[0]) == ["cid", "d"]
    assert {r["cid"] for r in one} == ids == {r["cid"] for r in two}
    source = {r["cid"]: r for r in read_rows(data)}
    assert all(r["c"] == source[r["cid"]]["c"] for r in one)  # missing values stay empty


@pytest.mark.integration
def test_split_defaults_to_the_reference_split(tmp_path: Path) -> None:
    result = fedscreen(tmp_path, "split", "--data", str(DATA), "--rows", "100", "--out", ".")
    assert result.returncode == 0, result.stderr
    bank = read_rows(tmp_path / "bank" / "train.csv")
    assert list(bank[0]) == [
        "ID",
        "LIMIT_BAL",
        "SEX",
        "EDUCATION",
        "MARRIAGE",
        "AGE",
        "default.payment.next.month",
    ]
    payments = read_rows(tmp_path / "partners" / "payments" / "features.csv")
    assert list(payments[0]) == ["ID"] + [f"PAY_AMT{i}" for i in range(1, 7)]
    assert len(payments) == 100
    assert (tmp_path / "partners" / "repayments" / "features.csv").is_file()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "nowhere.csv"], "data file nowhere.csv does not exist"),
        (["--bank", "a,nope", "--partner", "one=c"], "has no column(s) nope"),
        (["--bank", "a", "--partner", "one=a"], "column a is in two parties"),
        (["--bank", "a", "--partner", "One=c"], "the name must match"),
        (["--bank", "a", "--partner", "one=c", "--rows", "1000"], "has only 60 rows"),
        (["--bank", "a", "--partner", "one=c", "--test-size", "1.5"], "--test-size"),
    ],
)
def test_split_fails_in_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    data = small_data(tmp_path)
    base = ["split", "--data", str(data), "--id", "cid", "--label", "y", "--out", "out"]
    result = fedscreen(tmp_path, *base, *argv)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedscreen: error:"), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_keys_signing_labels_the_public_key_and_a_script_can_take_it(tmp_path: Path) -> None:
    result = fedscreen(
        tmp_path, "keys", "signing", "--out", "keys/bank.pem", "--public-out", "keys/bank.pub"
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("public key (") and "PARTNER_BANK_KEY" in line
    public = public_key_b64(load_signing_key(tmp_path / "keys" / "bank.pem"))
    assert line.split()[-1] == public  # what the page's `awk '{print $NF}'` takes
    assert (tmp_path / "keys" / "bank.pub").read_text().strip() == public
    agreement = fedscreen(tmp_path, "keys", "agreement", "--out", "keys/agreement.pem")
    assert agreement.returncode == 0, agreement.stderr
    assert agreement.stdout.startswith("agreement public key (")


def test_candidates_come_from_the_bank_csv(tmp_path: Path) -> None:
    data = small_data(tmp_path)
    events = read_candidates(
        data,
        id_column="cid",
        features=None,
        exclude=["y"],
        campaign="card-upgrade",
        consent=True,
        rows=5,
    )
    assert [e.event_id for e in events] == [f"ev-card-upgrade-c{i}" for i in range(5)]
    assert set(events[0].features) == {"a", "b", "c", "d"}
    assert events[0].features["c"] is None  # row 0: an empty cell is a missing feature
    with pytest.raises(CliError, match="has no column"):
        read_candidates(
            data,
            id_column="cid",
            features=["a", "zz"],
            exclude=[],
            campaign="x",
            consent=True,
            rows=None,
        )
    with pytest.raises(CliError, match="does not exist"):
        read_candidates(
            tmp_path / "no.csv",
            id_column="cid",
            features=None,
            exclude=[],
            campaign="x",
            consent=True,
            rows=None,
        )

"""The partner's feature store and private binning."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from services.kernel.crypto.tokens import Tokenizer
from services.partner.binning import Binning
from services.partner.store import FeatureStore, StoreError

TOKENS = Tokenizer(b"k" * 32)


def test_few_distinct_values_get_a_bin_each_and_missing_its_own() -> None:
    values = np.array([[-1.0], [0.0], [2.0], [0.0], [np.nan]])
    binning = Binning.fit(values, max_bins=16)
    assert binning.bins_per_feature == [4]  # three values + missing
    assert binning.transform(values)[:, 0].tolist() == [0, 1, 2, 1, 3]
    assert binning.transform(np.array([[7.0]]))[0, 0] == 2  # above the top value


def test_many_values_get_quantile_bins() -> None:
    values = np.random.default_rng(0).normal(size=(2000, 1))
    binning = Binning.fit(values, max_bins=8)
    bins = binning.transform(values)[:, 0]
    assert binning.bins_per_feature == [9]
    counts = np.bincount(bins, minlength=9)[:8]
    assert counts.min() > 200  # roughly equal-frequency
    assert Binning.from_json(binning.to_json()) == binning


def _csv(path: Path) -> Path:
    path.write_text("ID,PAY_0,BILL,FLAG\nc1,1,100.5,0\nc2,-1,,1\nc3,2,NA,0\n")
    return path


def test_load_tokenises_ids_and_lookup_keeps_order(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "s.sqlite")
    count = store.load_csv(
        _csv(tmp_path / "p.csv"),
        id_column="ID",
        features=["PAY_0", "BILL"],
        tokenizer=TOKENS,
        blacklist_column="FLAG",
    )
    assert count == 3
    raw = (tmp_path / "s.sqlite").read_bytes()
    assert b"c1" not in raw and b"c2" not in raw  # ids never stored
    tokens = [TOKENS.token("c2"), TOKENS.token("unknown"), TOKENS.token("c1"), TOKENS.token("c2")]
    values, flags = store.lookup(tokens)
    assert values[0, 0] == -1 and np.isnan(values[0, 1])
    assert np.isnan(values[1]).all()  # unknown customers are all-missing
    assert values[2].tolist() == [1.0, 100.5]
    assert values[3, 0] == -1
    assert flags.tolist() == [True, False, False, True]


def test_binnings_persist(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "s.sqlite")
    store.load_csv(_csv(tmp_path / "p.csv"), id_column="ID", features=["PAY_0"], tokenizer=TOKENS)
    binning = Binning(((0.5, 1.5),))
    store.save_binning("m1", binning)
    store.close()
    reopened = FeatureStore.open_existing(tmp_path / "s.sqlite")
    assert reopened.binning("m1") == binning
    assert reopened.binning("m2") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": ["NOPE"]}, "no column"),
        ({"features": ["bad name"]}, "not a plain identifier"),
        ({"features": []}, "no feature columns"),
    ],
)
def test_bad_input_is_a_one_line_error(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    store = FeatureStore(tmp_path / "s.sqlite")
    with pytest.raises(StoreError, match=message):
        store.load_csv(_csv(tmp_path / "p.csv"), id_column="ID", tokenizer=TOKENS, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore.open_existing(tmp_path / "missing.sqlite")


def test_the_ledger_tells_a_siblings_claim_from_a_conflict(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "s.sqlite")
    mine = store.claim_request("b1", 1, "d", "0:7", "replica-a", 1.0)
    sibling = store.claim_request("b1", 1, "d", "0:7", "replica-b", 1.1)
    conflict = store.claim_request("b1", 1, "other", "0:8", "replica-b", 1.2)
    assert mine.won and not sibling.won and not conflict.won
    assert (sibling.owner, sibling.digest, sibling.source) == ("replica-a", "d", "0:7")
    assert conflict.digest == "d"  # what was asked first stays recorded


def test_a_ledger_from_before_claims_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE requests (batch_id TEXT NOT NULL, attempt INTEGER NOT NULL, "
            "digest TEXT NOT NULL, source TEXT NOT NULL, seen_at REAL NOT NULL, "
            "PRIMARY KEY (batch_id, attempt)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO requests VALUES ('b0', 1, 'd', '0:1', 1.0)")
    store = FeatureStore(path)
    held = store.request_claim("b0", 1)
    assert held is not None and (held.digest, held.owner) == ("d", "")
    assert store.claim_request("b2", 1, "d", "0:2", "r", 2.0).won

"""The partner's feature store: a real SQLite database keyed by pseudonymous token.

Raw customer ids never enter it: ``load_csv`` tokenises them with the partner's token
key on the way in. Each feature is a REAL column; the blacklist flag is a column too.
Bin edges fitted during training are kept here (``binnings``), so they survive
restarts and never travel, and so are the encrypted weights training leaves with the
partner (``scorecards``): the bank never holds them, and a bundle only names them.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from services.kernel.crypto.tokens import TokenSource
from services.partner.binning import Binning

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
_LOOKUP_CHUNK = 900  # below SQLite's bound-parameter limit on every build


class StoreError(ValueError):
    """The store or its input is unusable; the message says why in one line."""


def _quote(name: str) -> str:
    if not _NAME.match(name):
        raise StoreError(f"feature name {name!r} is not a plain identifier")
    return f'"{name}"'


def _parse_float(text: str) -> float | None:
    text = text.strip()
    if text == "" or text.lower() in {"na", "nan", "null", "none"}:
        return None
    value = float(text)
    return None if math.isnan(value) else value


class FeatureStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS binnings (
                binning_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, spec TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS requests (
                batch_id TEXT NOT NULL, attempt INTEGER NOT NULL, digest TEXT NOT NULL,
                source TEXT NOT NULL, seen_at REAL NOT NULL, PRIMARY KEY (batch_id, attempt)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS scorecards (
                scorecard_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, key_id TEXT NOT NULL,
                spec TEXT NOT NULL
            );
            """
        )
        self._features = self._read_features()

    @classmethod
    def open_existing(cls, path: Path) -> FeatureStore:
        if not path.is_file():
            raise StoreError(f"feature store {path} does not exist (load it with `partner load`)")
        store = cls(path)
        if not store.features:
            raise StoreError(f"feature store {path} has no features loaded")
        return store

    def close(self) -> None:
        self.db.close()

    def _read_features(self) -> list[str]:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'features'").fetchone()
        return row[0].split(",") if row and row[0] else []

    @property
    def features(self) -> list[str]:
        return list(self._features)

    def count(self) -> int:
        if not self._features:
            return 0
        return int(self.db.execute("SELECT COUNT(*) FROM customers").fetchone()[0])

    # -- loading ------------------------------------------------------------
    def load_csv(
        self,
        csv_path: Path,
        *,
        id_column: str,
        features: Sequence[str],
        tokenizer: TokenSource,
        blacklist_column: str | None = None,
    ) -> int:
        """Replace the store's contents with the CSV's rows, tokenised. Returns the row count."""
        if not csv_path.is_file():
            raise StoreError(f"CSV file {csv_path} does not exist")
        if not features:
            raise StoreError("no feature columns given")
        columns = [_quote(f) for f in features]
        with csv_path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            wanted = [id_column, *features, *([blacklist_column] if blacklist_column else [])]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise StoreError(f"{csv_path} has no column(s) {', '.join(missing)}")
            with self.db:
                self.db.execute("DROP TABLE IF EXISTS customers")
                self.db.execute(
                    "CREATE TABLE customers (token TEXT PRIMARY KEY, "
                    "blacklisted INTEGER NOT NULL DEFAULT 0, "
                    + ", ".join(f"{c} REAL" for c in columns)
                    + ") WITHOUT ROWID"
                )
                placeholders = ", ".join("?" for _ in range(len(features) + 2))
                insert = f"INSERT OR REPLACE INTO customers VALUES ({placeholders})"
                rows = self._rows(
                    reader, id_column, features, tokenizer, blacklist_column, csv_path
                )
                self.db.executemany(insert, rows)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('features', ?)", (",".join(features),)
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('loaded_at', ?)",
                    (datetime.now(UTC).isoformat(),),
                )
        self._features = list(features)
        return self.count()

    @staticmethod
    def _rows(
        reader: csv.DictReader[str],
        id_column: str,
        features: Sequence[str],
        tokenizer: TokenSource,
        blacklist_column: str | None,
        csv_path: Path,
    ) -> Iterator[tuple[object, ...]]:
        for line, row in enumerate(reader, start=2):
            try:
                values = [_parse_float(row[f]) for f in features]
                flag = int(float(row[blacklist_column] or 0)) if blacklist_column else 0
            except ValueError as exc:
                raise StoreError(f"{csv_path}:{line}: {exc}") from exc
            customer_id = row[id_column].strip()
            if not customer_id:
                raise StoreError(f"{csv_path}:{line}: empty {id_column}")
            token = tokenizer.token(customer_id)
            if token is None:  # a token map from PSI covers the shared customers only
                continue
            yield (token, 1 if flag else 0, *values)

    # -- lookups --------------------------------------------------------------
    def lookup(self, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Feature matrix (n, J) with NaN for unknown tokens or missing values, and the
        blacklist flags (n,), both in the order of ``tokens``."""
        index = {token: i for i, token in enumerate(tokens)}
        values = np.full((len(tokens), len(self._features)), np.nan, dtype=np.float64)
        flags = np.zeros(len(tokens), dtype=bool)
        columns = ", ".join(_quote(f) for f in self._features)
        unique = list(index)
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT token, blacklisted, {columns} FROM customers WHERE token IN ({marks})"
            for token, blacklisted, *row in self.db.execute(query, chunk):
                i = index[token]
                values[i] = [np.nan if v is None else v for v in row]
                flags[i] = bool(blacklisted)
        if len(index) != len(tokens):  # repeated tokens: copy the first occurrence
            for i, token in enumerate(tokens):
                first = index[token]
                values[i], flags[i] = values[first], flags[first]
        return values, flags

    # -- binnings -------------------------------------------------------------
    def save_binning(self, binning_id: str, binning: Binning) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO binnings VALUES (?, ?, ?)",
                (binning_id, datetime.now(UTC).isoformat(), binning.to_json()),
            )

    def binning(self, binning_id: str) -> Binning | None:
        row = self.db.execute(
            "SELECT spec FROM binnings WHERE binning_id = ?", (binning_id,)
        ).fetchone()
        return Binning.from_json(row[0]) if row else None

    # -- the request ledger -------------------------------------------------------
    def remember_request(
        self, batch_id: str, attempt: int, digest: str, source: str, now: float
    ) -> tuple[str, str]:
        """Record a request for (batch, attempt), its digest and where it was read from
        (topic partition and offset), if none is recorded yet; return what is recorded
        (this request's, or an earlier one's)."""
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, ?)",
                (batch_id, attempt, digest, source, now),
            )
            row = self.db.execute(
                "SELECT digest, source FROM requests WHERE batch_id = ? AND attempt = ?",
                (batch_id, attempt),
            ).fetchone()
        return str(row[0]), str(row[1])

    def forget_requests(self, before: float) -> int:
        with self.db:
            return self.db.execute("DELETE FROM requests WHERE seen_at < ?", (before,)).rowcount

    # -- scorecards -------------------------------------------------------------
    def save_scorecard(
        self,
        scorecard_id: str,
        key_id: str,
        bins_per_feature: Sequence[int],
        weights: Sequence[int],
    ) -> None:
        """The encrypted weights of one training session (flat, feature by feature, at
        scale 2^frac_bits, no offset), or plaintext ones under the key id ``plaintext``
        for the benchmark's crypto-off mode."""
        if len(weights) != sum(bins_per_feature):
            raise StoreError("one weight per bin")
        spec = {
            "bins_per_feature": list(bins_per_feature),
            "weights": [str(int(w)) for w in weights],  # signed in plaintext mode
        }
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO scorecards VALUES (?, ?, ?, ?)",
                (scorecard_id, datetime.now(UTC).isoformat(), key_id, json.dumps(spec)),
            )

    def scorecard(self, scorecard_id: str) -> Scorecard | None:
        row = self.db.execute(
            "SELECT key_id, spec FROM scorecards WHERE scorecard_id = ?", (scorecard_id,)
        ).fetchone()
        if row is None:
            return None
        spec = json.loads(row[1])
        return Scorecard(
            key_id=row[0],
            bins_per_feature=list(spec["bins_per_feature"]),
            weights=[int(w) for w in spec["weights"]],
        )


@dataclass(frozen=True)
class Scorecard:
    key_id: str
    bins_per_feature: list[int]
    weights: list[int]

    def rows(self) -> list[list[int]]:
        """The weights feature by feature."""
        out, start = [], 0
        for count in self.bins_per_feature:
            out.append(self.weights[start : start + count])
            start += count
        return out

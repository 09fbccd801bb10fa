"""The partner's feature store, keyed by pseudonymous token: SQLite (the embedded default)
or PostgreSQL (production, shared by every replica of a partner), chosen by a URL.

Raw customer ids never enter it: ``load_csv`` tokenises them with the partner's token
key on the way in. Each feature is a floating-point column; the blacklist flag is a
column too. Bin edges fitted during training are kept here (``binnings``), so they
survive restarts and never travel, and so are the encrypted weights training leaves
with the partner (``scorecards``): the bank never holds them, and a bundle only names
them. The request ledger (``requests``) is also the claim that makes exactly one
replica answer each request (:meth:`PartnerStore.claim_request`).

One implementation over a tiny dialect layer: the data statements are the same SQL in
both databases (``?`` placeholders, ``ON CONFLICT``), only the table definitions, bulk
loading and token lookups differ. The SQLite dialect is here; PostgreSQL's is in
services/partner/store_postgres.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from services.kernel.crypto.tokens import TokenSource
from services.partner.binning import Binning

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
_LOOKUP_CHUNK = 900  # below SQLite's bound-parameter limit on every build
SQLITE_SCHEME = "sqlite"
POSTGRES_SCHEMES = ("postgresql", "postgres")


class StoreError(ValueError):
    """The store or its input is unusable; the message says why in one line."""


class StoreUnavailableError(StoreError):
    """The database did not answer (a restart, a failover, the network): the caller
    skips this piece of work; the next call reconnects."""


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


# -- URLs -----------------------------------------------------------------------------
def sqlite_url(path: Path) -> str:
    """The URL of a SQLite store at ``path`` (made absolute: the URL names one file)."""
    return f"{SQLITE_SCHEME}://{path.resolve()}"


def as_store_url(text: str) -> str:
    """A store URL as given, or a plain path taken as a SQLite file."""
    if ":" in text.split("/", 1)[0]:
        return check_store_url(text)
    return sqlite_url(Path(text))


def read_store_url(path: Path) -> str:
    """The store URL kept in a file (a mounted Secret), checked."""
    try:
        url = path.read_text().strip()
    except OSError as exc:
        raise StoreError(f"cannot read the store URL from {path}: {exc.strerror}") from exc
    return check_store_url(url)


def check_store_url(url: str) -> str:
    """``url`` if it names a store this code can open, else a StoreError saying why."""
    scheme, _, rest = url.partition(":")
    if scheme == SQLITE_SCHEME:
        if not _sqlite_path(url).name:
            raise StoreError(f"{redact(url)} names no file (sqlite:///path/features.sqlite)")
        return url
    if scheme in POSTGRES_SCHEMES:
        if not rest.startswith("//"):
            raise StoreError(f"{redact(url)} is not postgresql://user@host:port/database")
        return url
    raise StoreError(
        f"store URL {redact(url)!r} is neither sqlite:///path nor postgresql://user@host/db"
    )


def _sqlite_path(url: str) -> Path:
    # sqlite:///abs/path (as a file: URL) or sqlite:relative/path; "//" is dropped.
    rest = url.partition(":")[2]
    return Path(rest[2:] if rest.startswith("//") else rest)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def open_store(url: str, *, create: bool = False) -> PartnerStore:
    """Open the store a URL names. ``create`` makes it (for ``partner load``); otherwise
    it must exist with features loaded (for the service)."""
    check_store_url(url)
    if url.startswith(SQLITE_SCHEME + ":"):
        path = _sqlite_path(url)
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                return SqliteStore(path)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot create the feature store {path}: {exc}") from exc
        return SqliteStore.open_existing(path)
    # The PostgreSQL backend (and psycopg) load only when a postgresql:// URL is opened.
    from services.partner.store_postgres import PostgresStore

    store = PostgresStore(url)
    if not create and not store.features:
        store.close()
        raise StoreError(
            f"feature store {redact(url)} has no features loaded (load it with `partner load`)"
        )
    return store


@dataclass(frozen=True)
class Claim:
    """What the request ledger holds for a (batch, attempt) after a claim."""

    won: bool
    """This call recorded it: the caller answers the request."""
    digest: str
    source: str
    owner: str
    """The replica that recorded it."""


class PartnerStore(ABC):
    """Features, binnings, scorecards and the request ledger. Every method holds one
    lock: the service calls it from the event loop and from worker threads, and a
    connection's transaction is shared by every thread that uses it."""

    location: str
    """The store's URL without a password (for messages)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._create_tables()
        self._features = self._read_features()

    # -- the dialect ------------------------------------------------------------------
    @abstractmethod
    def _create_tables(self) -> None: ...

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement (``?`` placeholders); the number of rows it changed."""

    @abstractmethod
    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[object]: ...

    @abstractmethod
    def _replace_customers(
        self, columns: Sequence[str], rows: Iterable[tuple[object, ...]]
    ) -> None:
        """Drop and create the customers table with these feature columns, then fill
        it (inside the caller's transaction)."""

    @abstractmethod
    def _select_tokens(self, columns: str, tokens: Sequence[str]) -> Iterator[tuple[Any, ...]]: ...

    @abstractmethod
    def close(self) -> None: ...

    # -- features ---------------------------------------------------------------------
    def _read_features(self) -> list[str]:
        rows = self._query("SELECT value FROM meta WHERE key = 'features'")
        return rows[0][0].split(",") if rows and rows[0][0] else []

    @property
    def features(self) -> list[str]:
        return list(self._features)

    def count(self) -> int:
        if not self._features:
            return 0
        with self._lock:
            return int(self._query("SELECT COUNT(*) FROM customers")[0][0])

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
        with csv_path.open(newline="") as handle, self._lock:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            wanted = [id_column, *features, *([blacklist_column] if blacklist_column else [])]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise StoreError(f"{csv_path} has no column(s) {', '.join(missing)}")
            # A repeated id: the last row wins (PostgreSQL's COPY refuses a repeated key).
            rows = {
                row[0]: row
                for row in self._rows(
                    reader, id_column, features, tokenizer, blacklist_column, csv_path
                )
            }.values()
            with self._transaction():
                self._replace_customers(columns, rows)
                self._set_meta("features", ",".join(features))
                self._set_meta("loaded_at", datetime.now(UTC).isoformat())
        self._features = list(features)
        return self.count()

    def _set_meta(self, key: str, value: str) -> None:
        self._execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

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

    # -- lookups --------------------------------------------------------------------
    def lookup(self, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Feature matrix (n, J) with NaN for unknown tokens or missing values, and the
        blacklist flags (n,), both in the order of ``tokens``."""
        index = {token: i for i, token in enumerate(tokens)}
        values = np.full((len(tokens), len(self._features)), np.nan, dtype=np.float64)
        flags = np.zeros(len(tokens), dtype=bool)
        columns = ", ".join(_quote(f) for f in self._features)
        with self._lock:
            for token, blacklisted, *row in self._select_tokens(columns, list(index)):
                i = index[token]
                values[i] = [np.nan if v is None else v for v in row]
                flags[i] = bool(blacklisted)
        if len(index) != len(tokens):  # repeated tokens: copy the first occurrence
            for i, token in enumerate(tokens):
                first = index[token]
                values[i], flags[i] = values[first], flags[first]
        return values, flags

    # -- binnings -------------------------------------------------------------------
    def save_binning(self, binning_id: str, binning: Binning) -> None:
        with self._lock, self._transaction():
            self._execute(
                "INSERT INTO binnings VALUES (?, ?, ?) ON CONFLICT (binning_id) DO UPDATE "
                "SET created_at = excluded.created_at, spec = excluded.spec",
                (binning_id, datetime.now(UTC).isoformat(), binning.to_json()),
            )

    def binning(self, binning_id: str) -> Binning | None:
        with self._lock:
            rows = self._query("SELECT spec FROM binnings WHERE binning_id = ?", (binning_id,))
        return Binning.from_json(rows[0][0]) if rows else None

    # -- the request ledger, which is also the claim ----------------------------------
    def claim_request(
        self, batch_id: str, attempt: int, digest: str, source: str, owner: str, now: float
    ) -> Claim:
        """Record a request for (batch, attempt): its digest, where it was read from
        (topic partition and offset) and the replica that will answer it, if none is
        recorded yet. The first INSERT wins, in one database for every replica; the
        answer says whether it was this one, and what is recorded."""
        with self._lock, self._transaction():
            won = self._execute(
                "INSERT INTO requests (batch_id, attempt, digest, source, seen_at, owner) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (batch_id, attempt) DO NOTHING",
                (batch_id, attempt, digest, source, now, owner),
            )
            held = self._request(batch_id, attempt)
        assert held is not None  # just inserted, or inserted before: never deleted since
        return Claim(won == 1, *held)

    def remember_request(
        self, batch_id: str, attempt: int, digest: str, source: str, now: float
    ) -> tuple[str, str]:
        """:meth:`claim_request` for a single replica: the recorded digest and source."""
        claim = self.claim_request(batch_id, attempt, digest, source, "", now)
        return claim.digest, claim.source

    def request_claim(self, batch_id: str, attempt: int) -> Claim | None:
        """What the ledger holds for (batch, attempt), without claiming it."""
        with self._lock:
            held = self._request(batch_id, attempt)
        return None if held is None else Claim(False, *held)

    def _request(self, batch_id: str, attempt: int) -> tuple[str, str, str] | None:
        rows = self._query(
            "SELECT digest, source, owner FROM requests WHERE batch_id = ? AND attempt = ?",
            (batch_id, attempt),
        )
        return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    def forget_requests(self, before: float) -> int:
        with self._lock, self._transaction():
            return self._execute("DELETE FROM requests WHERE seen_at < ?", (before,))

    # -- scorecards -----------------------------------------------------------------
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
        with self._lock, self._transaction():
            self._execute(
                "INSERT INTO scorecards VALUES (?, ?, ?, ?) ON CONFLICT (scorecard_id) DO "
                "UPDATE SET created_at = excluded.created_at, key_id = excluded.key_id, "
                "spec = excluded.spec",
                (scorecard_id, datetime.now(UTC).isoformat(), key_id, json.dumps(spec)),
            )

    def scorecard(self, scorecard_id: str) -> Scorecard | None:
        with self._lock:
            rows = self._query(
                "SELECT key_id, spec FROM scorecards WHERE scorecard_id = ?", (scorecard_id,)
            )
        if not rows:
            return None
        spec = json.loads(rows[0][1])
        return Scorecard(
            key_id=rows[0][0],
            bins_per_feature=list(spec["bins_per_feature"]),
            weights=[int(w) for w in spec["weights"]],
        )


COMMON_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS binnings (
    binning_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scorecards (
    scorecard_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, key_id TEXT NOT NULL,
    spec TEXT NOT NULL
);
"""


class SqliteStore(PartnerStore):
    """One SQLite file: the embedded default, for one replica (or replicas sharing the
    file on one machine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = sqlite_url(path)
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        super().__init__()

    @classmethod
    def open_existing(cls, path: Path) -> SqliteStore:
        if not path.is_file():
            raise StoreError(f"feature store {path} does not exist (load it with `partner load`)")
        store = cls(path)
        if not store.features:
            raise StoreError(f"feature store {path} has no features loaded")
        return store

    def _create_tables(self) -> None:
        self.db.executescript(
            COMMON_TABLES
            + """
            CREATE TABLE IF NOT EXISTS requests (
                batch_id TEXT NOT NULL, attempt INTEGER NOT NULL, digest TEXT NOT NULL,
                source TEXT NOT NULL, seen_at REAL NOT NULL, owner TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (batch_id, attempt)
            ) WITHOUT ROWID;
            """
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(requests)")}
        if "owner" not in columns:  # a store written before replicas claimed requests
            with self.db:
                self.db.execute("ALTER TABLE requests ADD COLUMN owner TEXT NOT NULL DEFAULT ''")

    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self.db.execute(sql, params).rowcount

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return list(self.db.execute(sql, params).fetchall())

    def _transaction(self) -> contextlib.AbstractContextManager[object]:
        return self.db

    def _replace_customers(
        self, columns: Sequence[str], rows: Iterable[tuple[object, ...]]
    ) -> None:
        self.db.execute("DROP TABLE IF EXISTS customers")
        self.db.execute(
            "CREATE TABLE customers (token TEXT PRIMARY KEY, "
            "blacklisted INTEGER NOT NULL DEFAULT 0, "
            + ", ".join(f"{c} REAL" for c in columns)
            + ") WITHOUT ROWID"
        )
        placeholders = ", ".join("?" for _ in range(len(columns) + 2))
        self.db.executemany(f"INSERT INTO customers VALUES ({placeholders})", rows)

    def _select_tokens(self, columns: str, tokens: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        for start in range(0, len(tokens), _LOOKUP_CHUNK):
            chunk = tokens[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT token, blacklisted, {columns} FROM customers WHERE token IN ({marks})"
            yield from self.db.execute(query, chunk)

    def close(self) -> None:
        self.db.close()


FeatureStore = SqliteStore
"""The embedded store by its former name (``FeatureStore(path)``)."""


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

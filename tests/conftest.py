"""Shared fixtures: keys are generated per test session, never committed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import lightgbm  # noqa: F401  (its OpenMP runtime loaded before one_openmp_thread limits it)
import pytest
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from services.kernel.crypto.paillier import PrivateKey, generate_keypair

if TYPE_CHECKING:
    from tests.postgres import EmbeddedPostgres


@pytest.fixture(scope="session", autouse=True)
def one_openmp_thread() -> Iterator[None]:
    """LightGBM in the test process runs on one OpenMP thread unless told otherwise. On
    a 2-core machine shared with other work, its two threads spin waiting for each other:
    a tree on 800 rows took 25 ms instead of 0.3 ms. The tests' models are small, so a
    second thread gains nothing. The services the integration tests start are processes
    of their own and keep their defaults."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="session")
def private_key() -> PrivateKey:
    return generate_keypair(2048)


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """A real PostgreSQL server for the session, started on first use only."""
    from tests.postgres import EmbeddedPostgres  # the dev extra, needed by these tests only

    with EmbeddedPostgres() as server:
        yield server

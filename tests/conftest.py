"""Shared fixtures: keys are generated per test session, never committed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from services.kernel.crypto.paillier import PrivateKey, generate_keypair

if TYPE_CHECKING:
    from tests.postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def private_key() -> PrivateKey:
    return generate_keypair(2048)


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """A real PostgreSQL server for the session, started on first use only."""
    from tests.postgres import EmbeddedPostgres  # the dev extra, needed by these tests only

    with EmbeddedPostgres() as server:
        yield server

"""Shared fixtures: keys are generated per test session, never committed."""

from __future__ import annotations

import pytest

from services.kernel.crypto.paillier import PrivateKey, generate_keypair


@pytest.fixture(scope="session")
def private_key() -> PrivateKey:
    return generate_keypair(2048)

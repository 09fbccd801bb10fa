"""The partners' uniform re-randomisation factors (services/kernel/crypto/randomness.py)."""

from __future__ import annotations

import time

from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.randomness import FactorPool, uniform_factors


def test_factors_are_fresh_encryptions_of_zero(private_key: PrivateKey) -> None:
    """Each is an n-th residue (it decrypts to 0, so multiplying it in changes no
    plaintext) and none repeats."""
    factors = uniform_factors(private_key.public.n, 12)
    assert all(private_key.decrypt(f) == 0 for f in factors)
    assert len(set(factors)) == 12


def test_the_pool_fills_to_its_target_hands_each_factor_out_once_and_shrinks(
    private_key: PrivateKey,
) -> None:
    pool = FactorPool(private_key.public.n, target=16)
    try:
        deadline = time.monotonic() + 30
        while len(pool) < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool) == 16
        emptied: list[int] = []
        # Four more than ready: computed inline, each reported (the partner's metric).
        taken = [pool.take(lambda: emptied.append(1)) for _ in range(20)]
        # The 17th could not wait for a chunk of 8 (over 60 ms): it was computed inline.
        assert len(set(taken)) == 20 and pool.inline >= 1
        assert len(emptied) == pool.inline
        pool.resize(2)
        deadline = time.monotonic() + 30
        while len(pool) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert len(pool) <= 2 + FactorPool.CHUNK
        assert all(private_key.decrypt(f) == 0 for f in taken[:3])
    finally:
        pool.close()

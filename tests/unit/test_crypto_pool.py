"""The bank's worker-process pool gives the same results as the key itself."""

from __future__ import annotations

import pytest

from services.kernel.crypto.paillier import PrivateKey
from services.training.parallel import SMALL, CryptoPool


@pytest.mark.integration
async def test_pool_encrypts_and_decrypts_in_worker_processes(private_key: PrivateKey) -> None:
    plaintexts = list(range(SMALL * 3))
    with CryptoPool(private_key, workers=2) as pool:
        ciphertexts = await pool.encrypt(plaintexts)
        assert len(set(ciphertexts)) == len(plaintexts)  # fresh randomness per value
        assert [private_key.decrypt(c) for c in ciphertexts[:5]] == plaintexts[:5]
        assert await pool.decrypt(ciphertexts) == plaintexts
        small = await pool.decrypt(ciphertexts[:3])  # below SMALL: done in this process
        assert small == plaintexts[:3]

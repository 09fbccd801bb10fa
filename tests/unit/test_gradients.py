"""Packing (g, h) per sample and decoding encrypted bin sums."""

from __future__ import annotations

import numpy as np
import pytest

from services.kernel.crypto.paillier import PrivateKey
from services.training.gradients import decode_sums, encode, gradient_packing


def test_sums_of_packed_gradients_decode_to_the_true_sums(private_key: PrivateKey) -> None:
    rng = np.random.default_rng(1)
    p = rng.random(300)
    y = (rng.random(300) < 0.7).astype(float)  # mean g < 0: negative sums occur
    g, h = p - y, p * (1 - p)
    spec = gradient_packing()
    ciphertexts = private_key.encrypt_many(encode(spec, g, h))
    bins = rng.integers(0, 5, size=300)
    sums = [
        private_key.public.add(c for c, b in zip(ciphertexts, bins, strict=True) if b == k)
        for k in range(5)
    ]
    big, hbig = decode_sums(spec, private_key, sums)
    for k in range(5):
        assert big[k] == pytest.approx(g[bins == k].sum(), abs=1e-5)
        assert hbig[k] == pytest.approx(h[bins == k].sum(), abs=1e-5)
    assert (big < 0).any(), "negative sums must decode too"


def test_negative_hessians_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        encode(gradient_packing(), np.array([0.1]), np.array([-0.1]))

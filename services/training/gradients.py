"""Packing one sample's (g, h) into one Paillier plaintext, and decoding bin sums.

``m = g_int * 2^h_bits + h_int`` with g signed on top and h >= 0 below, so sums of
many samples decode without per-bin offsets (which would reveal bin counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schemas import GradientPacking
from services.kernel.crypto.paillier import PrivateKey

MAX_ROWS_BITS = 24  # headroom for sums over up to 16M rows


def gradient_packing(frac_bits: int = 24) -> GradientPacking:
    # h <= 1/4, so a sum of 2^MAX_ROWS_BITS rows stays below 2^(frac_bits - 2 + MAX_ROWS_BITS)
    return GradientPacking(frac_bits=frac_bits, h_bits=frac_bits + MAX_ROWS_BITS)


def encode(spec: GradientPacking, g: np.ndarray, h: np.ndarray) -> list[int]:
    if len(g) >= 1 << MAX_ROWS_BITS:
        raise OverflowError("too many rows for the gradient packing")
    if np.any(h < 0):
        raise ValueError("hessians must be non-negative")
    scale = float(1 << spec.frac_bits)
    g_int = np.rint(g * scale).astype(np.int64).tolist()
    h_int = np.rint(h * scale).astype(np.int64).tolist()
    shift = spec.h_bits
    return [(gi << shift) + hi for gi, hi in zip(g_int, h_int, strict=True)]


def decode_sums(
    spec: GradientPacking, key: PrivateKey, ciphertexts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Decrypt encrypted sums of packed (g, h) into float (G, H) arrays."""
    return decode_plaintexts(spec, int(key.public.n), [int(key.decrypt(c)) for c in ciphertexts])


def decode_plaintexts(
    spec: GradientPacking, n: int, plaintexts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Decrypted sums of packed (g, h), as residues mod n, into float (G, H) arrays."""
    mask = (1 << spec.h_bits) - 1
    scale = float(1 << spec.frac_bits)
    half = n // 2
    g_sums, h_sums = [], []
    for value in plaintexts:
        m = value - n if value > half else value  # the centred residue: g may be negative
        h = m & mask
        g_sums.append(((m - h) >> spec.h_bits) / scale)
        h_sums.append(h / scale)
    return np.array(g_sums), np.array(h_sums)

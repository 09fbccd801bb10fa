"""Packing one sample's (g, h) into one Paillier plaintext, and decoding bin sums.

``m = g_int * 2^h_bits + h_int`` with g signed on top and h >= 0 below, so sums of
many samples decode without per-bin offsets (which would reveal bin counts).

With cross-fitting (``services/training/crossfit.py``) one plaintext carries several
such (g, h) *fields*, one per model being trained, at a stride of
:func:`field_stride` bits: ``m = sum_t (g_t * 2^h_bits + h_t) * 2^(stride * t)``,
each g signed. The partner multiplies ciphertexts without looking at the layout, so
one histogram exchange returns every field's bin sums at the cost of one. One field is
exactly the layout above.
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


def field_stride(spec: GradientPacking) -> int:
    """Bits per (g, h) field: h_bits for h, then g signed. |g| <= 1 per row, so a sum
    over fewer than 2^MAX_ROWS_BITS rows stays below 2^(frac_bits + MAX_ROWS_BITS)."""
    return spec.h_bits + spec.frac_bits + MAX_ROWS_BITS + 1


def max_fields(spec: GradientPacking, key_bits: int) -> int:
    """How many fields one plaintext holds (the top field's g may use every bit left,
    as in the one-field layout; the centred residue keeps 1 bit for the sign)."""
    return max(
        1,
        (key_bits - 2 - spec.h_bits - spec.frac_bits - MAX_ROWS_BITS - 1) // field_stride(spec) + 1,
    )


def encode(spec: GradientPacking, g: np.ndarray, h: np.ndarray) -> list[int]:
    """One (g, h) field per row."""
    return encode_fields(spec, np.asarray(g)[None, :], np.asarray(h)[None, :])


def encode_fields(spec: GradientPacking, g: np.ndarray, h: np.ndarray) -> list[int]:
    """``g`` and ``h`` of shape (fields, rows): one plaintext per row holding every field.
    The caller checks the count against :func:`max_fields` for its key."""
    if g.ndim != 2 or g.shape != h.shape:
        raise ValueError("g and h must have the same shape (fields, rows)")
    if g.shape[1] >= 1 << MAX_ROWS_BITS:
        raise OverflowError("too many rows for the gradient packing")
    if np.any(h < 0):
        raise ValueError("hessians must be non-negative")
    if np.any(np.abs(g) > 1.0):
        raise ValueError("gradients must lie in [-1, 1]")
    scale = float(1 << spec.frac_bits)
    shift, stride = spec.h_bits, field_stride(spec)
    out: list[int] = []
    for t in range(g.shape[0]):
        g_int = np.rint(g[t] * scale).astype(np.int64).tolist()
        h_int = np.rint(h[t] * scale).astype(np.int64).tolist()
        field = [(gi << shift) + hi for gi, hi in zip(g_int, h_int, strict=True)]
        if t == 0:
            out = field
        else:
            at = stride * t
            out = [m + (f << at) for m, f in zip(out, field, strict=True)]
    return out


def decode_sums(
    spec: GradientPacking, key: PrivateKey, ciphertexts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Decrypt encrypted sums of packed (g, h) into float (G, H) arrays."""
    return decode_plaintexts(spec, int(key.public.n), [int(key.decrypt(c)) for c in ciphertexts])


def decode_plaintexts(
    spec: GradientPacking, n: int, plaintexts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Decrypted sums of packed (g, h), as residues mod n, into float (G, H) arrays."""
    return decode_field_plaintexts(spec, n, plaintexts, 1)[0]


def decode_field_plaintexts(
    spec: GradientPacking, n: int, plaintexts: Sequence[int], fields: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decrypted sums of rows packed by :func:`encode_fields`, as residues mod n, into
    one float (G, H) pair of arrays per field."""
    h_mask = (1 << spec.h_bits) - 1
    g_bits = field_stride(spec) - spec.h_bits
    g_half, g_mod = 1 << (g_bits - 1), 1 << g_bits
    scale = float(1 << spec.frac_bits)
    half = n // 2
    g_sums: list[list[float]] = [[] for _ in range(fields)]
    h_sums: list[list[float]] = [[] for _ in range(fields)]
    for value in plaintexts:
        m = value - n if value > half else value  # the centred residue: g may be negative
        for t in range(fields):
            h = m & h_mask  # h >= 0, so the field below it never borrows from it
            m >>= spec.h_bits
            if t == fields - 1:
                g, m = m, 0  # the top field's g: everything left, signed
            else:
                g = m & (g_mod - 1)
                if g >= g_half:
                    g -= g_mod
                m = (m - g) >> g_bits
            g_sums[t].append(g / scale)
            h_sums[t].append(h / scale)
    return [(np.array(g_sums[t]), np.array(h_sums[t])) for t in range(fields)]

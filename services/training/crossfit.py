"""Cross-fitting the partner score that the stacker learns from (docs/model.md).

The stacker is a LightGBM on the bank's features plus the aggregate partner score. Fed
the fit rows' own scores, it would learn from scores that were fitted to those rows'
labels. With cross-fitting, the fit rows are cut into K folds (by a seeded shuffle that
never looks at a label) and K *fold chains* are trained next to the main model, round
for round, each on every fit row outside its fold: the stacker's feature for a row of
fold f is chain f's score, which no gradient of that row's label ever reached.

What a fold chain costs in the protocol:

- its gradients ride in the main model's gradient ciphertexts, as extra (g, h) fields
  (``services/training/gradients.py``); the partners' histogram sums then hold every
  chain's sums at once: no extra ciphertext, byte or partner work;
- its direction tables are scored in a second training session over the fit and
  validation rows only, one table per partner holding all K chains' directions in
  sub-fields of a wide slot (:func:`fold_layout`); the bank multiplies the partners'
  answers and decrypts only the aggregate over partners, one decryption per slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas import PackingSpec
from services.kernel.crypto.packing import MAX_SLOTS, PackingOverflowError

MAX_SCORE_BITS = 120  # PackingSpec.score_bits
MIN_FRAC_BITS = 8


def fold_ids(rows: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each fit row, 0..folds-1, balanced, from a seeded shuffle. Labels play no
    part, so changing a row's label can change no row's fold."""
    if not 2 <= folds <= rows:
        raise ValueError(f"cross-fitting needs 2 to {rows} folds, got {folds}")
    order = np.random.default_rng(seed).permutation(rows)
    out = np.empty(rows, dtype=np.int64)
    out[order] = np.arange(rows) % folds
    return out


@dataclass(frozen=True)
class FoldLayout:
    """The cross-fit session's slot layout. A slot holds one row's scores of every fold
    chain: chain f's sum of entries in bits [f * sub_bits, (f + 1) * sub_bits). The
    partner sees an ordinary packing of ``packing.slots`` slots of
    ``packing.slot_bits`` bits; the sub-fields are the bank's own encoding of its table
    entries."""

    packing: PackingSpec
    folds: int
    sub_bits: int
    total_features: int

    @property
    def offset(self) -> int:
        return self.packing.entry_offset


def fold_layout(
    key_bits: int,
    features_per_partner: Sequence[int],
    folds: int,
    *,
    clip: float = 8.0,
    frac_bits: int = 14,
) -> FoldLayout:
    """Sub-fields wide enough for the sum over every partner's features (the bank
    decrypts the product of the partners' answers); fractional bits are given up, down
    to 8, if K sub-fields would not fit a slot's 120 score bits."""
    total = sum(features_per_partner)
    for frac in range(frac_bits, MIN_FRAC_BITS - 1, -1):
        offset = round(clip * (1 << frac))
        sub_bits = (total * 2 * offset).bit_length()
        if folds * sub_bits <= MAX_SCORE_BITS:
            slot_bits = folds * sub_bits + 1  # + the (unused) blacklist field
            slots = min((key_bits - 2) // slot_bits, MAX_SLOTS)
            packing = PackingSpec(
                frac_bits=frac,
                slot_bits=slot_bits,
                score_bits=folds * sub_bits,
                flag_bits=1,
                slots=slots,
                weight_clip=clip,
            )
            return FoldLayout(packing, folds, sub_bits, total)
    raise PackingOverflowError(
        f"{folds} folds of {total} partner features do not fit one slot; use fewer folds"
    )


def encode_fold_tables(
    layout: FoldLayout, directions: Sequence[Sequence[Sequence[float]]]
) -> list[list[int]]:
    """``directions[f][j][b]``: chain f's direction for feature j, bin b (one partner).
    Returns that partner's table entries, ``sum_f (round(d * 2^F) + offset) << (f * B)``."""
    if len(directions) != layout.folds:
        raise ValueError(f"{len(directions)} directions for {layout.folds} folds")
    scale = float(1 << layout.packing.frac_bits)
    offset = layout.offset
    shape = [len(row) for row in directions[0]]
    entries = [[0] * bins for bins in shape]
    for f, table in enumerate(directions):
        if [len(row) for row in table] != shape:
            raise ValueError("every fold's table must have the same bins")
        shift = f * layout.sub_bits
        for j, row in enumerate(table):
            for b, d in enumerate(row):
                value = round(d * scale)
                if not -offset <= value <= offset:
                    raise PackingOverflowError(
                        f"direction {d} outside [-{layout.packing.weight_clip}, "
                        f"{layout.packing.weight_clip}]"
                    )
                entries[j][b] += (value + offset) << shift
    return entries


def decode_fold_scores(layout: FoldLayout, plaintext: int, count: int) -> np.ndarray:
    """The decrypted product of every partner's answer for ``count`` rows: shape
    (count, folds), each chain's aggregate score of the rows. Fields are checked
    against their worst case, as ``unpack`` does for serving."""
    spec = layout.packing
    if plaintext < 0 or plaintext >> (count * spec.slot_bits):
        raise PackingOverflowError("plaintext has bits outside the used slots")
    slot_mask = (1 << spec.slot_bits) - 1
    sub_mask = (1 << layout.sub_bits) - 1
    offset_total = layout.total_features * layout.offset
    worst = 2 * offset_total
    scale = float(1 << spec.frac_bits)
    out = np.empty((count, layout.folds))
    value = int(plaintext)
    for s in range(count):
        slot = value & slot_mask
        value >>= spec.slot_bits
        if slot >> spec.score_bits:
            raise PackingOverflowError(f"slot {s} has its blacklist field set")
        for f in range(layout.folds):
            entry = (slot >> (f * layout.sub_bits)) & sub_mask
            if entry > worst:
                raise PackingOverflowError(f"slot {s}, fold {f} holds an impossible value")
            out[s, f] = (entry - offset_total) / scale
    return out

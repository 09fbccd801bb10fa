"""The crypto of one training round: fedscreen's protocol against the same protocol
written naively with python-paillier, measured in one run, on the reference split's
sizes.

One round (docs/protocol.md, "Training"): the bank encrypts every session row's
gradient (zero for held-out rows), each partner sums them per (feature, bin) and
turns each sum into an encrypted direction with its bin count, scores every row with
those directions, and the bank decrypts the scores (their sum over partners).

- **fedscreen**: owner-side CRT + short-exponent encryption, raw gmpy2 products for the
  bin sums, one exponentiation per bin, slot-packed scores with grouped, pre-shifted
  tables and one uniform re-randomisation factor (a full r^n) per ciphertext, CRT
  decryption of the product of the partners' answers (the partners' own code:
  ``services/partner/training.py``).
- **naive python-paillier**: ``phe`` as one would first write it: one ``EncryptedNumber``
  per row, ``EncryptedNumber`` additions for the bin sums, a scalar multiplication per
  bin, additions for each row's score, ``obfuscate()`` (a full r^n) per row's score, one
  decryption per row and partner.

Both run single-threaded in this process (the real trainer also spreads the bank's
part over a process pool). The naive protocol is timed on a sample of rows and scaled
linearly to the full sizes (every one of its steps is per row or per bin), and the
output says so.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import phe
from rich.console import Console
from rich.table import Table

from services.kernel.crypto.blind import (
    blind_training,
    decode_scores,
    direction_multipliers,
    encode_gradients,
    score_layout,
)
from services.kernel.crypto.paillier import PrivateKey, generate_keypair
from services.kernel.crypto.randomness import uniform_factors
from services.partner.training import direction_scores, encrypted_directions

# The reference split: 21,000 training rows (20 % of them the validation fold) and
# 9,000 test rows, all in the session's one list; every row is scored each round.
FIT_ROWS = 16_800
SCORED_ROWS = 30_000
STEPS = (
    "bank: encrypt gradients",
    "partners: encrypted directions",
    "partners: uniform random factors",
    "partners: score every row",
    "bank: decrypt scores",
)
PARTNER_BINS = {
    "repayments": [12, 11, 12, 11, 11, 11, 17, 17, 17, 16, 16, 16],
    "payments": [17, 17, 17, 17, 17, 17],
}


@dataclass
class RoundCost:
    """Seconds for one round's crypto, by step, at the full sizes."""

    steps: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.steps.values())


@dataclass
class TrainingCryptoResult:
    key_bits: int
    fit_rows: int
    scored_rows: int
    sample_rows: int
    fedscreen: RoundCost
    naive: RoundCost
    speedup: float
    naive_extrapolated: bool = True

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["fedscreen"]["total"] = self.fedscreen.total
        out["naive"]["total"] = self.naive.total
        return out


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


# -- fedscreen's protocol -------------------------------------------------------------
def fedscreen_round(key: PrivateKey, fit_rows: int, scored_rows: int, seed: int) -> RoundCost:
    rng = np.random.default_rng(seed)
    pk = key.public
    n = int(pk.n)
    blind = blind_training(12)
    features = sum(len(b) for b in PARTNER_BINS.values())
    layout = score_layout(pk.bits, blind, features)
    prob = rng.random(fit_rows)
    y = (rng.random(fit_rows) < 0.22).astype(float)
    g = np.concatenate([prob - y, np.zeros(scored_rows - fit_rows)])
    gradients, encrypt_s = _timed(key.encrypt_many, encode_gradients(blind, g, n))
    seconds = dict.fromkeys(STEPS, 0.0)
    seconds["bank: encrypt gradients"] = encrypt_s
    product: list[Any] | None = None
    for bins in PARTNER_BINS.values():
        rows = np.column_stack([rng.integers(0, b, size=scored_rows) for b in bins])
        counts = [int(c) for j, b in enumerate(bins) for c in np.bincount(rows[:, j], minlength=b)]
        multipliers = direction_multipliers(blind, counts)
        directions, t = _timed(encrypted_directions, pk, rows, bins, multipliers, gradients)
        seconds["partners: encrypted directions"] += t
        chunks = -(-scored_rows // layout.slots)
        factors, t = _timed(uniform_factors, pk.n, chunks)
        seconds["partners: uniform random factors"] += t
        # One random mask per ciphertext stands in for the pairwise masks (same cost).
        scores, t = _timed(
            direction_scores,
            pk,
            layout,
            blind,
            bins,
            directions,
            rows.tolist(),
            lambda _chunk: int(rng.integers(1, 1 << 62)),
            iter(factors).__next__,
        )
        seconds["partners: score every row"] += t
        product = (
            scores
            if product is None
            else [a * b % pk.nsquare for a, b in zip(product, scores, strict=True)]
        )
    assert product is not None

    def decrypt() -> int:
        count = 0
        for i, c in enumerate(product):
            slots = min(layout.slots, scored_rows - i * layout.slots)
            try:
                count += len(decode_scores(layout, blind, int(key.decrypt(c)), slots, features))
            except ValueError:
                count += slots  # the stand-in masks do not cancel; the cost is the same
        return count

    _, t = _timed(decrypt)
    seconds["bank: decrypt scores"] = t
    return RoundCost(seconds)


# -- the naive python-paillier protocol -------------------------------------------------
def _naive_directions(
    encrypted: list[Any], columns: Sequence[list[int]], bins: list[int]
) -> list[list[Any]]:
    out: list[list[Any]] = []
    for column, count in zip(columns, bins, strict=True):
        sums: list[Any] = [0] * count
        for e, b in zip(encrypted, column, strict=True):
            sums[b] = e + sums[b]
        out.append([s * -1e-3 if not isinstance(s, int) else s for s in sums])
    return out


def _naive_scores(
    directions: list[list[Any]], columns: Sequence[list[int]], rows: int
) -> list[Any]:
    out = []
    for i in range(rows):
        total = directions[0][columns[0][i]]
        for j in range(1, len(columns)):
            total = total + directions[j][columns[j][i]]
        out.append(total)
    return out


def naive_round(
    public: phe.PaillierPublicKey,
    private: phe.PaillierPrivateKey,
    sample_rows: int,
    fit_rows: int,
    scored_rows: int,
    seed: int,
) -> RoundCost:
    """phe on ``sample_rows`` rows, each per-row step scaled to its full size."""
    rng = random.Random(seed)
    scale = scored_rows / sample_rows
    g = [
        rng.uniform(-1, 1) if i < sample_rows * fit_rows / scored_rows else 0.0
        for i in range(sample_rows)
    ]
    seconds = dict.fromkeys(STEPS, 0.0)
    encrypted, t = _timed(lambda: [public.encrypt(a) for a in g])
    seconds["bank: encrypt gradients"] = t * scale
    for bins in PARTNER_BINS.values():
        columns = [[rng.randrange(b) for _ in range(sample_rows)] for b in bins]
        directions, t = _timed(_naive_directions, encrypted, columns, bins)
        seconds["partners: encrypted directions"] += t * scale
        scores, t = _timed(_naive_scores, directions, columns, sample_rows)
        seconds["partners: score every row"] += t * scale
        # phe's own re-randomisation (a full r^n), once per row's score.
        _, t = _timed(lambda c: [x.obfuscate() for x in c], scores)
        seconds["partners: uniform random factors"] += t * scale
        _, t = _timed(lambda c: [private.decrypt(x) for x in c], scores)
        seconds["bank: decrypt scores"] += t * scale
    return RoundCost(seconds)


def run_training_crypto(
    *, key_bits: int = 2048, sample_rows: int = 200, seed: int = 0
) -> TrainingCryptoResult:
    key = generate_keypair(key_bits)
    ours = fedscreen_round(key, FIT_ROWS, SCORED_ROWS, seed)
    public = phe.PaillierPublicKey(int(key.public.n))
    private = phe.PaillierPrivateKey(public, int(key.p), int(key.q))
    naive = naive_round(public, private, sample_rows, FIT_ROWS, SCORED_ROWS, seed)
    return TrainingCryptoResult(
        key_bits=key_bits,
        fit_rows=FIT_ROWS,
        scored_rows=SCORED_ROWS,
        sample_rows=sample_rows,
        fedscreen=ours,
        naive=naive,
        speedup=naive.total / ours.total,
    )


def print_training(console: Console, result: TrainingCryptoResult) -> None:
    table = Table(
        title=f"One training round's crypto, single core, {result.key_bits}-bit key "
        f"({result.fit_rows:,} fit rows, {result.scored_rows:,} scored rows, 2 partners)"
    )
    table.add_column("step")
    table.add_column("fedscreen, s", justify="right")
    table.add_column("naive python-paillier, s", justify="right")
    for step in STEPS:
        table.add_row(
            step, f"{result.fedscreen.steps[step]:.2f}", f"{result.naive.steps[step]:.1f}"
        )
    table.add_row("total", f"{result.fedscreen.total:.1f}", f"{result.naive.total:.0f}")
    console.print(table)
    console.print(
        f"speed-up per round: {result.speedup:.1f}x (naive timed on {result.sample_rows} "
        "rows and scaled linearly to the full sizes)"
    )

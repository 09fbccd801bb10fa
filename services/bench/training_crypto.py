"""The crypto of one training round: fedscreen's protocol against the naive
python-paillier protocol, measured in one run, on the reference split's sizes.

One round, per the protocol (DESIGN.md section 3): the bank encrypts every fit row's
gradients, each partner sums them per (feature, bin), the bank decrypts the sums,
encrypts a weight table, each partner scores every row with it, and the bank decrypts
the scores.

- **fedscreen**: one packed (g, h) plaintext per row, owner-side CRT + short-exponent
  encryption, raw gmpy2 products for the bin sums, slot-packed scores with grouped,
  pre-shifted tables and one re-randomisation per ciphertext, CRT decryption.
- **naive python-paillier**: ``phe`` as one would first write it: g and h encrypted as
  separate ``EncryptedNumber`` floats, ``EncryptedNumber`` additions for the bin sums
  and for each row's score, one decryption per bin sum and per row.

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

from services.kernel.crypto.packing import FragmentTables, encode_weight, packing_for, unpack
from services.kernel.crypto.paillier import PrivateKey, generate_keypair
from services.training.gradients import decode_plaintexts, encode, gradient_packing

# The reference split: 21,000 training rows, 20 % of them the validation fold; every
# row (fit, validation, test) is scored each round. Bins as the partners fit them.
FIT_ROWS = 16_800
SCORED_ROWS = 30_000
STEPS = (
    "bank: encrypt gradients",
    "partners: encrypted bin sums",
    "bank: decrypt bin sums",
    "bank: encrypt weight tables",
    "partners: build slot tables",
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
def _bin_sums(
    key: PrivateKey, gradients: list[Any], columns: list[np.ndarray], bins: list[int], fit_rows: int
) -> list[Any]:
    pk = key.public
    nsquare = pk.nsquare
    out: list[Any] = []
    for column, count in zip(columns, bins, strict=True):
        sums = [1] * count
        for i, b in enumerate(column[:fit_rows].tolist()):
            sums[b] = sums[b] * gradients[i] % nsquare
        out.extend(pk.rerandomize(s) for s in sums)
    return out


def _score_rows(tables: FragmentTables, rows: list[list[int]], slots: int) -> list[Any]:
    return [
        tables.fragment(rows[i : i + slots], [False] * len(rows[i : i + slots]))
        for i in range(0, len(rows), slots)
    ]


def _decrypt_scores(
    key: PrivateKey, scores: list[Any], packing: Any, rows: int, features: int
) -> int:
    count, slots = 0, packing.slots
    for i, c in enumerate(scores):
        n = min(slots, rows - i * slots)
        count += len(unpack(packing, int(key.decrypt(c)), n, {"p": features}))
    return count


def fedscreen_round(key: PrivateKey, fit_rows: int, scored_rows: int, seed: int) -> RoundCost:
    rng = np.random.default_rng(seed)
    pk = key.public
    spec = gradient_packing()
    prob = rng.random(fit_rows)
    y = (rng.random(fit_rows) < 0.22).astype(float)
    plaintexts = encode(spec, prob - y, prob * (1 - prob))
    gradients, encrypt_s = _timed(key.encrypt_many, plaintexts)
    # Training's scores carry no blacklist field (the trainer's session layout: flag_bits=1).
    packing = packing_for(pk.bits, [len(b) for b in PARTNER_BINS.values()], flag_bits=1)
    seconds = dict.fromkeys(STEPS, 0.0)
    seconds["bank: encrypt gradients"] = encrypt_s
    for bins in PARTNER_BINS.values():
        columns = [rng.integers(0, b, size=scored_rows) for b in bins]
        sums, t = _timed(_bin_sums, key, gradients, columns, bins, fit_rows)
        seconds["partners: encrypted bin sums"] += t
        plain, t = _timed(lambda c: [int(key.decrypt(x)) for x in c], sums)
        seconds["bank: decrypt bin sums"] += t
        decode_plaintexts(spec, int(pk.n), plain)
        weights = [[float(rng.uniform(-1, 1)) for _ in range(b)] for b in bins]
        entries = [encode_weight(packing, w) for row in weights for w in row]
        encrypted, t = _timed(key.encrypt_many, entries)
        seconds["bank: encrypt weight tables"] += t
        flat = iter(encrypted)
        tables, t = _timed(FragmentTables, pk, packing, [[next(flat) for _ in r] for r in weights])
        seconds["partners: build slot tables"] += t
        scores, t = _timed(_score_rows, tables, np.column_stack(columns).tolist(), packing.slots)
        seconds["partners: score every row"] += t
        _, t = _timed(_decrypt_scores, key, scores, packing, scored_rows, len(bins))
        seconds["bank: decrypt scores"] += t
    return RoundCost(seconds)


# -- the naive python-paillier protocol -------------------------------------------------
def _naive_bin_sums(
    encrypted: list[tuple[Any, Any]], columns: Sequence[list[int]], bins: list[int]
) -> list[Any]:
    out: list[Any] = []
    for column, count in zip(columns, bins, strict=True):
        g_sums: list[Any] = [0] * count
        h_sums: list[Any] = [0] * count
        for (eg, eh), b in zip(encrypted, column, strict=True):
            g_sums[b] = eg + g_sums[b]
            h_sums[b] = eh + h_sums[b]
        out.extend(s for s in g_sums + h_sums if not isinstance(s, int))
    return out


def _naive_scores(weights: list[list[Any]], columns: Sequence[list[int]], rows: int) -> list[Any]:
    out = []
    for i in range(rows):
        total = weights[0][columns[0][i]]
        for j in range(1, len(columns)):
            total = total + weights[j][columns[j][i]]
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
    fit_scale = fit_rows / sample_rows
    score_scale = scored_rows / sample_rows
    g = [rng.uniform(-1, 1) for _ in range(sample_rows)]
    h = [rng.uniform(0, 0.25) for _ in range(sample_rows)]
    seconds = dict.fromkeys(STEPS, 0.0)
    encrypted, t = _timed(
        lambda: [(public.encrypt(a), public.encrypt(b)) for a, b in zip(g, h, strict=True)]
    )
    seconds["bank: encrypt gradients"] = t * fit_scale
    for bins in PARTNER_BINS.values():
        columns = [[rng.randrange(b) for _ in range(sample_rows)] for b in bins]
        sums, t = _timed(_naive_bin_sums, encrypted, columns, bins)
        seconds["partners: encrypted bin sums"] += t * fit_scale
        # Bin sums do not grow with the rows: decrypting them is timed as is.
        _, t = _timed(lambda c: [private.decrypt(x) for x in c], sums)
        seconds["bank: decrypt bin sums"] += t
        weights, t = _timed(
            lambda b: [[public.encrypt(rng.uniform(-1, 1)) for _ in range(n)] for n in b], bins
        )
        seconds["bank: encrypt weight tables"] += t
        scores, t = _timed(_naive_scores, weights, columns, sample_rows)
        seconds["partners: score every row"] += t * score_scale
        _, t = _timed(lambda c: [private.decrypt(x) for x in c], scores)
        seconds["bank: decrypt scores"] += t * score_scale
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

"""The key owner against re-randomisation (docs/design.md §1b;
services/kernel/crypto/randomness.py).

The bank holds p and q and chooses the randomness of every ciphertext it encrypts. It
marks the table entries of half of feature 0's bins with a random factor whose Jacobi
symbol is -1 (a non-residue mod p, a residue mod q). A partner's fragment multiplies
slot 0's entries unchanged (the other slots' are squared by the slot shift, which
erases any mark), so the fragment's Jacobi symbol, which anyone can compute, tells
whether slot 0's customer sits in a marked bin, unless the partner's own random factor
covers the symbol. A short-exponent factor on a base of symbol +1 (the earlier
protocol's) covers nothing: the channel reads every fragment. A uniform r^n (this
protocol's) gives a fair coin: the channel reads nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpz

from schemas import PackingSpec
from services.kernel.crypto.packing import FragmentTables, packing_for
from services.kernel.crypto.paillier import PrivateKey, generate_keypair
from services.kernel.crypto.randomness import uniform_factors

BINS = [4, 5, 6, 3]
FRAGMENTS = 1000


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    """The channel is the Jacobi symbol, which works the same whatever the modulus's size.
    At 1024 bits the 1,000 full-size uniform factors r^n mod n^2 cost about an eighth of
    what they cost at 2048."""
    return generate_keypair(1024, allow_small=True)


def _marked_unit(key: PrivateKey, rng: random.Random, marked: bool) -> mpz:
    """A random factor base r with Legendre symbols (r|p) = -1 if marked, else +1, and
    (r|q) = +1: the key owner can pick either, nobody else can tell them apart but by
    the Jacobi symbol they give a ciphertext."""
    n = key.public.n
    while True:
        r = mpz(rng.randrange(2, int(n) - 1))
        if gmpy2.jacobi(r, key.q) == 1 and gmpy2.jacobi(r, key.p) == (-1 if marked else 1):
            return r


def _tables(key: PrivateKey, spec: PackingSpec, marked_bins: set[int]) -> FragmentTables:
    rng = random.Random(1)
    pk = key.public
    tables = []
    for j, size in enumerate(BINS):
        row = []
        for b in range(size):
            r = _marked_unit(key, rng, j == 0 and b in marked_bins)
            entry = rng.randrange(1, spec.entry_offset)
            row.append(
                pk.encrypt_deterministic(entry) * gmpy2.powmod(r, pk.n, pk.nsquare) % pk.nsquare
            )
        tables.append(row)
    return FragmentTables(pk, spec, tables)


def _channel_accuracy(key: PrivateKey, factor: Callable[[int], list[mpz]]) -> tuple[float, float]:
    """The share of fragments whose Jacobi symbol tells right whether slot 0's customer is
    in a marked bin, and what always guessing the commoner answer achieves."""
    spec = packing_for(key.public.bits, [len(BINS)])
    marked = {0, 1}  # 2 of feature 0's 4 bins: about half the customers
    tables = _tables(key, spec, marked)
    rng = np.random.default_rng(2)
    rows = np.column_stack([rng.integers(0, size, FRAGMENTS) for size in BINS])
    factors = factor(FRAGMENTS)
    right = 0
    for i, fresh in enumerate(factors):
        fragment = tables.fragment([rows[i].tolist()], factor=fresh)
        in_marked = int(rows[i, 0]) in marked
        right += (gmpy2.jacobi(fragment, key.public.n) == -1) == in_marked
    truth = np.isin(rows[:, 0], list(marked))
    return right / FRAGMENTS, max(truth.mean(), 1 - truth.mean())


def test_a_short_exponent_factor_leaves_the_key_owners_mark_readable(key: PrivateKey) -> None:
    pk = key.public
    accuracy, baseline = _channel_accuracy(
        key, lambda count: [pk.random_factor() for _ in range(count)]
    )
    assert accuracy == 1.0 and baseline < 0.6


def test_a_uniform_factor_leaves_a_fair_coin(key: PrivateKey) -> None:
    accuracy, baseline = _channel_accuracy(key, lambda count: uniform_factors(key.public.n, count))
    # A fair coin over 1,000 fragments: within four standard deviations of one half.
    assert abs(accuracy - 0.5) < 4 * (0.25 / FRAGMENTS) ** 0.5
    assert accuracy <= baseline + 4 * (0.25 / FRAGMENTS) ** 0.5

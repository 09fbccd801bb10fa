"""Micro-benchmark of the serving crypto: the slot-packed fragment path against the
naive python-paillier path, per candidate, with no Kafka in the way.

Both paths compute the same thing for the same candidates (two partners' scorecard
sums plus an any-partner blacklist count, decrypted at the bank), from the same
encrypted weight tables, so the unit test can check that they agree:

- fragment path (what the services run): each partner multiplies its pre-shifted
  table entries into one slot-packed ciphertext per batch and re-randomises it once,
  with a uniform ``r^n`` its factor pool computed ahead (timed separately: the pool
  spends it off the hot path, but it is CPU all the same); the bank multiplies the
  partners' fragments, decrypts once (CRT) and unpacks.
- naive path (python-paillier as a newcomer would use it): per candidate, each partner
  sums its J ``EncryptedNumber`` entries and adds a freshly encrypted blacklist bit
  (that ``encrypt`` is also what re-randomises the sum); the bank adds the two sums
  and decrypts once per candidate.

Tables are built once (like a bundle), and the one-off costs (pre-shifting, the DJN
randomiser) are reported separately from the per-candidate times.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from functools import reduce
from typing import Any

import phe
from gmpy2 import mpz

from schemas import PackingSpec
from services.kernel.crypto.packing import (
    FragmentTables,
    SlotResult,
    encode_weight,
    packing_for,
    unpack,
)
from services.kernel.crypto.paillier import PrivateKey, PublicKey, generate_keypair
from services.kernel.crypto.randomness import uniform_factors

# Shapes like the reference partners: "repayments" has 12 features, "payments" 6; with
# max_bins 16 a feature has up to 16 value bins plus the missing bin.
DEFAULT_SHAPES: dict[str, int] = {"repayments": 12, "payments": 6}
DEFAULT_BINS = 17
FACTOR_SAMPLES = 20


@dataclass
class MicroOptions:
    key_bits: int = 2048
    features: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SHAPES))
    bins: int = DEFAULT_BINS
    fragment_batches: int = 10
    naive_candidates: int = 100
    hit_rate: float = 0.02
    seed: int = 0


@dataclass
class MicroResult:
    key_bits: int
    slots: int
    slot_bits: int
    features: dict[str, int]
    bins: int
    keygen_s: float
    table_encrypt_s: float
    fragment_tables_build_s: dict[str, float]
    fragment_candidates: int
    fragment_us_per_candidate: float
    fragment_partner_us_per_candidate: float
    fragment_bank_us_per_candidate: float
    uniform_factor_ms: float
    """One uniform r^n (what every ciphertext leaving a partner carries)."""
    short_factor_ms: float
    """One short-exponent factor (what they carried before: hides from outsiders only)."""
    fragment_factor_us_per_candidate: float
    """The partners' uniform factors, amortised over a batch: pool CPU per candidate."""
    naive_candidates: int
    naive_us_per_candidate: float
    naive_encrypt_us_per_candidate: float
    naive_decrypt_us_per_candidate: float
    speedup: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Workload:
    """Encrypted tables (one ciphertext per bin) and the candidates' bins and hits."""

    key: PrivateKey
    spec: PackingSpec
    entries: dict[str, list[list[int]]]  # plaintext table entries (weights, encoded)
    tables: dict[str, list[list[mpz]]]  # the same, encrypted: what a bundle carries
    bins: dict[str, list[list[int]]]  # per partner, per candidate, a bin per feature
    hits: dict[str, list[bool]]

    @property
    def candidates(self) -> int:
        return len(next(iter(self.hits.values())))

    def features_per_partner(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.entries.items()}


def make_workload(
    options: MicroOptions, candidates: int, key: PrivateKey | None = None
) -> Workload:
    key = key or generate_keypair(options.key_bits, allow_small=True)
    spec = packing_for(key.public.bits, list(options.features.values()))
    rng = random.Random(options.seed)
    entries, tables, bins, hits = {}, {}, {}, {}
    for name, count in options.features.items():
        rows = [
            [encode_weight(spec, rng.uniform(-1.5, 1.5)) for _ in range(options.bins)]
            for _ in range(count)
        ]
        flat = key.encrypt_many([e for row in rows for e in row])
        entries[name] = rows
        tables[name] = [flat[j * options.bins : (j + 1) * options.bins] for j in range(count)]
        bins[name] = [
            [rng.randrange(options.bins) for _ in range(count)] for _ in range(candidates)
        ]
        hits[name] = [rng.random() < options.hit_rate for _ in range(candidates)]
    return Workload(key, spec, entries, tables, bins, hits)


def expected(workload: Workload) -> list[SlotResult]:
    """The plaintext answer, for tests: what both paths must decrypt to."""
    spec = workload.spec
    out = []
    for i in range(workload.candidates):
        total = sum(
            workload.entries[name][j][b]
            for name, rows in workload.bins.items()
            for j, b in enumerate(rows[i])
        )
        hit_count = sum(int(h[i]) for h in workload.hits.values())
        out.append(
            unpack(
                spec,
                total + (hit_count << spec.score_bits),
                1,
                workload.features_per_partner(),
            )[0]
        )
    return out


@dataclass
class FragmentRun:
    build_s: dict[str, float]
    partner_s: float
    bank_s: float
    results: list[SlotResult]


def fragment_path(workload: Workload) -> FragmentRun:
    """Slot-packed fragments, batch by batch (``spec.slots`` candidates per batch)."""
    key, spec = workload.key, workload.spec
    build_s, partners = {}, {}
    for name, tables in workload.tables.items():
        started = time.perf_counter()
        # Each partner has its own public-key object, so its own DJN randomiser, which
        # is drawn here rather than inside the first timed batch.
        public = PublicKey(key.public.n)
        built = FragmentTables(public, spec, [[int(c) for c in row] for row in tables])
        public.randomizer()
        build_s[name] = time.perf_counter() - started
        partners[name] = built
    features = workload.features_per_partner()
    nsquare = key.public.nsquare
    batches = -(-workload.candidates // spec.slots)
    # What each partner's pool holds ready when a batch comes.
    factors = iter(uniform_factors(key.public.n, batches * len(partners)))
    partner_s = bank_s = 0.0
    results: list[SlotResult] = []
    for start in range(0, workload.candidates, spec.slots):
        stop = min(start + spec.slots, workload.candidates)
        t0 = time.perf_counter()
        fragments = [
            partners[name].fragment(
                workload.bins[name][start:stop],
                workload.hits[name][start:stop],
                factor=next(factors),
            )
            for name in partners
        ]
        t1 = time.perf_counter()
        product = reduce(lambda a, b: a * b % nsquare, fragments)
        plaintext = key.decrypt(product)
        results.extend(unpack(spec, int(plaintext), stop - start, features))
        t2 = time.perf_counter()
        partner_s += t1 - t0
        bank_s += t2 - t1
    return FragmentRun(build_s, partner_s, bank_s, results)


@dataclass
class NaiveRun:
    seconds: float
    encrypt_s: float
    decrypt_s: float
    results: list[SlotResult]


def phe_keys(key: PrivateKey) -> tuple[phe.PaillierPublicKey, phe.PaillierPrivateKey]:
    public = phe.PaillierPublicKey(int(key.public.n))
    return public, phe.PaillierPrivateKey(public, int(key.p), int(key.q))


def naive_path(workload: Workload, candidates: int | None = None) -> NaiveRun:
    """One ``EncryptedNumber`` sum, encrypt and decrypt per candidate."""
    spec = workload.spec
    public, private = phe_keys(workload.key)
    # The same bundle ciphertexts, wrapped: exponent 0 because the entries are already
    # fixed-point integers, so every addition is one multiplication mod n^2 (phe's
    # cheapest case; float encodings would add exponent alignment on top).
    tables = {
        name: [[phe.EncryptedNumber(public, int(c), 0) for c in row] for row in rows]
        for name, rows in workload.tables.items()
    }
    features = workload.features_per_partner()
    hit_value = 1 << spec.score_bits  # the hit lands above the score, like in a slot
    count = workload.candidates if candidates is None else min(candidates, workload.candidates)
    encrypt_s = decrypt_s = 0.0
    results: list[SlotResult] = []
    started = time.perf_counter()
    for i in range(count):
        sums = []
        for name, rows in tables.items():
            bins = workload.bins[name][i]
            partial = reduce(lambda a, b: a + b, (rows[j][b] for j, b in enumerate(bins)))
            t0 = time.perf_counter()
            bit = public.encrypt(hit_value if workload.hits[name][i] else 0)
            encrypt_s += time.perf_counter() - t0
            sums.append(partial + bit)
        total = reduce(lambda a, b: a + b, sums)
        t0 = time.perf_counter()
        plaintext = private.decrypt(total)
        decrypt_s += time.perf_counter() - t0
        results.append(unpack(spec, int(plaintext), 1, features)[0])
    return NaiveRun(time.perf_counter() - started, encrypt_s, decrypt_s, results)


def run_micro(options: MicroOptions, key: PrivateKey | None = None) -> MicroResult:
    """Fragment path over ``fragment_batches`` full batches, naive path over
    ``naive_candidates`` of the same candidates."""
    started = time.perf_counter()
    key = key or generate_keypair(options.key_bits, allow_small=True)
    keygen_s = time.perf_counter() - started
    spec = packing_for(key.public.bits, list(options.features.values()))
    n = max(spec.slots * options.fragment_batches, options.naive_candidates)
    started = time.perf_counter()
    workload = make_workload(options, n, key)
    setup_s = time.perf_counter() - started
    frag = fragment_path(workload)
    naive = naive_path(workload, options.naive_candidates)
    started = time.perf_counter()
    uniform_factors(key.public.n, FACTOR_SAMPLES)
    uniform_ms = (time.perf_counter() - started) / FACTOR_SAMPLES * 1e3
    public = PublicKey(key.public.n)
    public.randomizer()
    started = time.perf_counter()
    for _ in range(FACTOR_SAMPLES):
        public.random_factor()
    short_ms = (time.perf_counter() - started) / FACTOR_SAMPLES * 1e3
    # The two paths must agree on the candidates both computed; a benchmark of a
    # wrong answer is worth nothing.
    if frag.results[: len(naive.results)] != naive.results:
        raise AssertionError("fragment and naive paths decrypted different sums")
    frag_us = (frag.partner_s + frag.bank_s) / len(frag.results) * 1e6
    naive_us = naive.seconds / len(naive.results) * 1e6
    return MicroResult(
        key_bits=key.public.bits,
        slots=spec.slots,
        slot_bits=spec.slot_bits,
        features=dict(options.features),
        bins=options.bins,
        keygen_s=keygen_s,
        table_encrypt_s=setup_s,
        fragment_tables_build_s=frag.build_s,
        fragment_candidates=len(frag.results),
        fragment_us_per_candidate=frag_us,
        fragment_partner_us_per_candidate=frag.partner_s / len(frag.results) * 1e6,
        fragment_bank_us_per_candidate=frag.bank_s / len(frag.results) * 1e6,
        uniform_factor_ms=uniform_ms,
        short_factor_ms=short_ms,
        fragment_factor_us_per_candidate=uniform_ms * 1e3 * len(options.features) / spec.slots,
        naive_candidates=len(naive.results),
        naive_us_per_candidate=naive_us,
        naive_encrypt_us_per_candidate=naive.encrypt_s / len(naive.results) * 1e6,
        naive_decrypt_us_per_candidate=naive.decrypt_s / len(naive.results) * 1e6,
        speedup=naive_us / frag_us,
    )

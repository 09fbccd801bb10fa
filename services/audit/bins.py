"""Bin-vector recovery: the curious bank's attack on the partners' per-row scores.

A partner's row is a bin vector b = (b_1..b_J), one bin per feature. Each score the bank
decrypts is an equation o = sum_j T[j][b_j] over a table T it knows (in the legacy
protocol it chose them: a direction table per training round, a weight table per model
version), up to the fixed-point rounding. Two solvers turn a row's equations back into
its bin vector:

- :func:`mitm`, exact meet-in-the-middle enumeration: fast and complete for few
  equations, bounded by the size of the half enumerations;
- ``ilp`` (services/audit/bins_ilp.py), a 0/1 program over one-hot bin indicators
  solved by HiGHS: takes a prior (MAP guess) and gets faster as equations accumulate,
  but HiGHS's branch and bound is only fast when the equations pin the LP relaxation:
  on random tables about three equations per feature (~10-20 ms a row), slow at two,
  hopeless below one, where rows time out and count as not recovered.

A row counts as recovered only if exactly one vector is consistent, which the tests
and the audit compare with :func:`baseline_fraction`, what guessing the most common
vector achieves without any attack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

_EXHAUSTIVE_SPLIT_FEATURES = 20
_CHUNK_ELEMENTS = 1 << 20
_CANDIDATE_SLICE = 1 << 18
_SLACK_ULPS = 64.0


class BudgetExceeded(ValueError):  # noqa: N818 (the name callers catch)
    """A half enumeration of :func:`mitm` would exceed its budget."""


@dataclass(frozen=True)
class Equations:
    """What the attacker holds: E tables and, per row, the E observed scores.

    ``tables[e][j]`` is equation e's value for every bin of feature j (float64, length
    B_j); ``observations[i, e]`` is row i's score under table e; ``tolerance[e]`` is the
    absolute error an exact observation may carry (J * 2^-F when the tables are the
    unrounded reals, half a grid step when they are the rounded entries). ``bins`` is
    only needed when there are no tables (E = 0); otherwise it is read from the tables
    and, if given, checked against them. Arrays are coerced to float64 and every shape
    is checked here, so the solvers can index without re-validating.
    """

    tables: list[list[FloatArray]]
    observations: FloatArray
    tolerance: FloatArray
    bins: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        """Coerce to float64 and reject inconsistent shapes or non-finite values."""
        tables = [[np.asarray(t, dtype=np.float64) for t in table] for table in self.tables]
        observations = np.asarray(self.observations, dtype=np.float64)
        tolerance = np.asarray(self.tolerance, dtype=np.float64)
        n_eq = len(tables)
        if observations.ndim != 2:
            raise ValueError(
                f"observations must be 2-D (rows, equations), got shape {observations.shape}"
            )
        if observations.shape[1] != n_eq:
            raise ValueError(
                f"observations have {observations.shape[1]} columns but there are {n_eq} tables"
            )
        if tolerance.shape != (n_eq,):
            raise ValueError(f"tolerance must have shape ({n_eq},), got {tolerance.shape}")
        if not np.all(np.isfinite(tolerance)) or np.any(tolerance < 0):
            raise ValueError("tolerance must be finite and >= 0")
        if not np.all(np.isfinite(observations)):
            raise ValueError("observations must be finite")
        bins = self._check_tables(tables)
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "observations", observations)
        object.__setattr__(self, "tolerance", tolerance)
        object.__setattr__(self, "bins", bins)

    def _check_tables(self, tables: list[list[FloatArray]]) -> tuple[int, ...]:
        """The bins per feature, after checking every table against the first (or
        against ``bins`` when there are no tables)."""
        if tables:
            bins = tuple(int(t.shape[0]) if t.ndim == 1 else -1 for t in tables[0])
        elif self.bins is not None:
            bins = tuple(int(b) for b in self.bins)
        else:
            raise ValueError("with no tables (E = 0), pass bins=(B_1, ..., B_J)")
        if not bins:
            raise ValueError("there must be at least one feature")
        if self.bins is not None and tuple(self.bins) != bins:
            raise ValueError(f"bins {tuple(self.bins)} disagree with the tables' {bins}")
        for e, table in enumerate(tables):
            if len(table) != len(bins):
                raise ValueError(f"table {e} has {len(table)} features, table 0 has {len(bins)}")
            for j, (values, size) in enumerate(zip(table, bins, strict=True)):
                if values.ndim != 1 or values.shape[0] != size:
                    raise ValueError(
                        f"table {e}, feature {j}: expected a 1-D array of "
                        f"{max(size, 0)} bins, got shape {values.shape}"
                    )
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"table {e}, feature {j}: values must be finite")
        if any(b < 1 for b in bins):
            raise ValueError(f"every feature needs at least one bin, got {bins}")
        return bins

    @property
    def bins_per_feature(self) -> list[int]:
        """B_j for every feature, the shape of every bin vector."""
        assert self.bins is not None  # set by __post_init__
        return list(self.bins)

    @property
    def n_equations(self) -> int:
        """E, the number of tables (and of observation columns)."""
        return len(self.tables)

    @property
    def n_rows(self) -> int:
        """The number of rows observed."""
        return int(self.observations.shape[0])


def bin_offsets(bins: Sequence[int]) -> IntArray:
    """Where each feature's bins start in the flattened (feature, bin) index."""
    return np.concatenate(([0], np.cumsum(bins[:-1]))).astype(np.int64)


def stacked_tables(eq: Equations) -> FloatArray:
    """The tables as an (E, sum B_j) matrix, so a vector's sums are one gather-and-add."""
    if eq.n_equations == 0:
        return np.zeros((0, sum(eq.bins_per_feature)), dtype=np.float64)
    return np.stack([np.concatenate(table) for table in eq.tables])


def effective_tolerance(eq: Equations) -> FloatArray:
    """The declared tolerance plus a few ulps of the largest sum involved, so float
    summation order never turns an exact match into a miss."""
    if eq.n_equations == 0:
        return np.zeros(0, dtype=np.float64)
    largest = np.array([sum(float(np.max(np.abs(t))) for t in table) for table in eq.tables])
    if eq.n_rows:
        largest = largest + np.max(np.abs(eq.observations), axis=0)
    return eq.tolerance + _SLACK_ULPS * np.finfo(np.float64).eps * (1.0 + largest)


def distinct_rows(eq: Equations) -> tuple[IntArray, IntArray]:
    """Representatives of the distinct observation vectors and each row's group.

    Observations are rounded to 1/1024 of their tolerance (exactly compared where the
    tolerance is 0) so float noise does not split a group: solving once per distinct
    vector is what makes skewed data (a few frequent vectors) cheap.
    """
    obs = eq.observations
    positive = eq.tolerance > 0
    quantum = np.where(positive, eq.tolerance / 1024.0, 1.0)
    key = np.where(positive, np.round(obs / quantum), obs)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return first.astype(np.int64), np.asarray(inverse, dtype=np.int64).reshape(-1)


def _split(bins: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split the features into two halves with enumeration sizes as balanced as possible.

    Up to 20 features every subset is scored (by the larger half's log size); beyond,
    features go greedily, largest first, to the lighter half. Returns (smaller, larger).
    """
    logs = np.log(np.asarray(bins, dtype=np.float64))
    n = len(bins)
    if n <= _EXHAUSTIVE_SPLIT_FEATURES:
        masks = np.arange(1 << n, dtype=np.int64)
        first = np.zeros(masks.shape[0], dtype=np.float64)
        for j in range(n):
            first += ((masks >> j) & 1) * logs[j]
        best = int(masks[np.argmin(np.maximum(first, logs.sum() - first))])
        left = [j for j in range(n) if (best >> j) & 1]
    else:
        left, weight, other = [], 0.0, 0.0
        for j in sorted(range(n), key=lambda k: -logs[k]):
            if weight <= other:
                left.append(j)
                weight += logs[j]
            else:
                other += logs[j]
        left.sort()
    right = [j for j in range(n) if j not in set(left)]
    size_left = math.prod(bins[j] for j in left)
    size_right = math.prod(bins[j] for j in right)
    return (left, right) if size_left <= size_right else (right, left)


def _half_sums(table: Sequence[FloatArray], features: Sequence[int], size: int) -> FloatArray:
    """One equation's partial sum for every assignment of ``features`` (mixed radix,
    first feature fastest), computed without materialising the assignments."""
    index = np.arange(size, dtype=np.int64)
    total = np.zeros(size, dtype=np.float64)
    stride = 1
    for j in features:
        total += table[j][(index // stride) % table[j].shape[0]]
        stride *= table[j].shape[0]
    return total


def _decode(index: IntArray, features: Sequence[int], bins: Sequence[int]) -> IntArray:
    """The bins of ``features`` for half-enumeration indices (inverse of _half_sums)."""
    out = np.empty((index.shape[0], len(features)), dtype=np.int64)
    stride = 1
    for column, j in enumerate(features):
        out[:, column] = (index // stride) % bins[j]
        stride *= bins[j]
    return out


def mitm(eq: Equations, *, budget: int = 1 << 22) -> IntArray:
    """Exact meet-in-the-middle recovery of every row's bin vector.

    The features are split into two halves of balanced enumeration size; the larger
    half's partial sums under equation 0 are sorted once, and for each distinct
    observation vector every partial sum a of the smaller half is completed by a
    binary search for o_0 - a within the tolerance. Candidate pairs are screened on
    equation 1's partial sums (so they are decoded only when likely) and then checked
    against every equation on the full vector. This is complete: every consistent
    vector is found, so a row is returned only when exactly one is (rows with none or
    several get -1 in every column). Work per row is |small half| * log |large half|
    plus the candidates, paid once per distinct observation vector; memory is bounded by
    chunking rows and candidates.

    Raises :class:`BudgetExceeded` when a half would enumerate more than ``budget``
    assignments, rather than running for hours; :func:`ilp` is the tool for wider
    partners with many equations.
    """
    bins = eq.bins_per_feature
    n_feat = len(bins)
    out = np.full((eq.n_rows, n_feat), -1, dtype=np.int64)
    small, large = _split(bins)
    size_small = math.prod(bins[j] for j in small)
    size_large = math.prod(bins[j] for j in large)
    if size_large > budget:
        raise BudgetExceeded(
            f"meet-in-the-middle halves enumerate {size_small} and {size_large} "
            f"assignments, over the budget of {budget}"
        )
    if eq.n_rows == 0:
        return out
    if eq.n_equations == 0:
        if math.prod(bins) == 1:
            out[:] = 0
        return out

    tol = effective_tolerance(eq)
    window = 2.0 * tol - eq.tolerance
    screened = min(eq.n_equations, 2)
    small_sums = np.stack([_half_sums(eq.tables[e], small, size_small) for e in range(screened)])
    large_sums = np.stack([_half_sums(eq.tables[e], large, size_large) for e in range(screened)])
    order = np.argsort(large_sums[0], kind="stable")
    large_sums = np.ascontiguousarray(large_sums[:, order])
    stacked = stacked_tables(eq)
    offsets = bin_offsets(bins)

    reps, inverse = distinct_rows(eq)
    solved = np.full((reps.shape[0], n_feat), -1, dtype=np.int64)
    per_chunk = max(1, _CHUNK_ELEMENTS // size_small)
    for start in range(0, reps.shape[0], per_chunk):
        chunk = reps[start : start + per_chunk]
        obs = eq.observations[chunk]
        target = obs[:, :1] - small_sums[0][None, :]
        low = np.searchsorted(large_sums[0], target - window[0], side="left").reshape(-1)
        counts = np.searchsorted(large_sums[0], target + window[0], side="right").reshape(-1)
        counts -= low
        found = np.zeros(chunk.shape[0], dtype=np.int64)
        vectors = np.full((chunk.shape[0], n_feat), -1, dtype=np.int64)
        ends = np.cumsum(counts)
        total = int(ends[-1]) if ends.shape[0] else 0
        for first in range(0, total, _CANDIDATE_SLICE):
            ids = np.arange(first, min(total, first + _CANDIDATE_SLICE), dtype=np.int64)
            pair = np.searchsorted(ends, ids, side="right")
            position = low[pair] + ids - (ends[pair] - counts[pair])
            row, half = np.divmod(pair, size_small)
            for e in range(1, screened):
                near = small_sums[e][half] + large_sums[e][position] - obs[row, e]
                keep = np.abs(near) <= window[e]
                row, half, position = row[keep], half[keep], position[keep]
            vector = np.empty((row.shape[0], n_feat), dtype=np.int64)
            vector[:, small] = _decode(half, small, bins)
            vector[:, large] = _decode(order[position], large, bins)
            flat = vector + offsets[None, :]
            keep = np.ones(row.shape[0], dtype=np.bool_)
            for e in range(eq.n_equations):
                sums = stacked[e][flat].sum(axis=1)
                keep &= np.abs(sums - obs[row, e]) <= tol[e]
            np.add.at(found, row[keep], 1)
            vectors[row[keep]] = vector[keep]
        solved[start : start + chunk.shape[0]] = np.where(found[:, None] == 1, vectors, -1)
    return solved[inverse]


def flat_log_prior(prior: Sequence[NDArray[np.floating]], bins: Sequence[int]) -> FloatArray:
    """Validated per-(feature, bin) log probabilities, flattened; -inf marks bins the
    prior rules out, which the program then fixes to 0."""
    if len(prior) != len(bins):
        raise ValueError(f"prior covers {len(prior)} features, the tables {len(bins)}")
    logs = []
    for j, (p, size) in enumerate(zip(prior, bins, strict=True)):
        values = np.asarray(p, dtype=np.float64)
        if values.shape != (size,):
            raise ValueError(f"prior for feature {j} must have shape ({size},), got {values.shape}")
        if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
            raise ValueError(f"prior for feature {j} must be finite, >= 0 and not all 0")
        with np.errstate(divide="ignore"):
            logs.append(np.log(values / values.sum()))
    return np.concatenate(logs)


def prior_mode(prior: Sequence[NDArray[np.floating]]) -> IntArray:
    """The most probable bin of every feature: the attacker's guess with no equations,
    and, taken for every row, a guess as good as the most common vector when features
    are nearly independent."""
    if not prior:
        raise ValueError("the prior must cover at least one feature")
    return np.array([int(np.argmax(np.asarray(p))) for p in prior], dtype=np.int64)


def recovered_fraction(guess: NDArray[np.integer], truth: NDArray[np.integer]) -> float:
    """The share of rows whose whole guessed vector equals the true one: the attack's
    success rate, with -1 (no claim) counting as a failure."""
    guess = np.asarray(guess)
    truth = np.asarray(truth)
    if guess.shape != truth.shape or truth.ndim != 2:
        raise ValueError(f"guess {guess.shape} and truth {truth.shape} must be equal 2-D shapes")
    if truth.shape[0] == 0:
        return 0.0
    hit = np.all(guess == truth, axis=1) & np.all(guess >= 0, axis=1)
    return float(np.mean(hit))


def baseline_fraction(truth: NDArray[np.integer]) -> float:
    """The share of rows holding the single most frequent vector: what an attacker with
    no equations gets by guessing that vector for everyone, the floor an attack must beat
    to have learnt anything."""
    truth = np.asarray(truth)
    if truth.ndim != 2:
        raise ValueError(f"truth must be 2-D (rows, features), got shape {truth.shape}")
    if truth.shape[0] == 0:
        return 0.0
    _, counts = np.unique(truth, axis=0, return_counts=True)
    return float(counts.max() / truth.shape[0])


def marginals(truth: NDArray[np.integer], bins_per_feature: Sequence[int]) -> list[FloatArray]:
    """Per-feature bin frequencies, Laplace-smoothed by 0.5 so no bin is ruled out: the
    prior an attacker would estimate from public or leaked data."""
    truth = np.asarray(truth)
    if truth.ndim != 2 or truth.shape[1] != len(bins_per_feature):
        raise ValueError(f"truth must be (rows, {len(bins_per_feature)}), got shape {truth.shape}")
    out = []
    for j, size in enumerate(bins_per_feature):
        column = truth[:, j].astype(np.int64)
        if column.size and (column.min() < 0 or column.max() >= size):
            raise ValueError(f"feature {j}: bins must lie in [0, {size})")
        counts = np.bincount(column, minlength=size).astype(np.float64) + 0.5
        out.append(counts / counts.sum())
    return out


def top_vectors(prior: Sequence[NDArray[np.floating]], size: int) -> IntArray:
    """The ``size`` most probable bin vectors under the product of the per-feature
    priors, most probable first. A beam over the features is exact here: a top vector's
    prefix is always among the top prefixes, since a better prefix with the same suffix
    would give a better vector."""
    logs = [np.asarray(flat_log_prior([p], [len(p)]), dtype=np.float64) for p in prior]
    vectors = np.zeros((1, 0), dtype=np.int64)
    scores = np.zeros(1)
    for log_p in logs:
        candidates = (scores[:, None] + log_p[None, :]).ravel()
        keep = min(size, candidates.size)
        best = np.argpartition(-candidates, keep - 1)[:keep] if keep < candidates.size else None
        chosen = np.arange(candidates.size) if best is None else best
        rows, bins = np.divmod(chosen, len(log_p))
        vectors = np.column_stack([vectors[rows], bins]).astype(np.int64)
        scores = candidates[chosen]
    order = np.argsort(-scores, kind="stable")
    return vectors[order]


def dictionary(
    eq: Equations, prior: Sequence[NDArray[np.floating]], *, size: int = 1 << 20
) -> IntArray:
    """A meet-in-the-middle for partners too large to enumerate: the ``size`` most
    probable vectors under the prior (the marginals the legacy bank learnt from its
    histograms) with their scores under every table, and each row looked up among them.
    A row is recovered when exactly one dictionary vector fits all its equations; real
    data concentrate on few vectors, so a dictionary of a million covers most rows of a
    partner with 2^45 possible ones. -1 rows: none or several fit."""
    if not eq.tables:
        return np.full((eq.observations.shape[0], len(eq.bins or ())), -1, dtype=np.int64)
    vectors = top_vectors(prior, size)
    sums = np.column_stack(
        [
            np.sum([table[j][vectors[:, j]] for j in range(vectors.shape[1])], axis=0)
            for table in eq.tables
        ]
    )
    order = np.argsort(sums[:, 0], kind="stable")
    first = sums[order, 0]
    tolerance = effective_tolerance(eq)
    distinct, inverse = distinct_rows(eq)
    solved = np.full((distinct.shape[0], vectors.shape[1]), -1, dtype=np.int64)
    observed = eq.observations[distinct]
    lo = np.searchsorted(first, observed[:, 0] - tolerance[0], side="left")
    hi = np.searchsorted(first, observed[:, 0] + tolerance[0], side="right")
    for i in np.nonzero(hi > lo)[0].tolist():
        candidates = order[lo[i] : hi[i]]
        fits = np.all(np.abs(sums[candidates] - observed[i]) <= tolerance, axis=1)
        if int(fits.sum()) == 1:
            solved[i] = vectors[candidates[fits][0]]
    return solved[inverse]

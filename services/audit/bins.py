"""Bin-vector recovery: the curious bank's attack on the partners' per-row scores.

A partner's row is a bin vector b = (b_1..b_J), one bin per feature. Each score the bank
decrypts is an equation o = sum_j T[j][b_j] over a table T it knows (in the legacy
protocol it chose them: a direction table per training round, a weight table per model
version), up to the fixed-point rounding. Two solvers turn a row's equations back into
its bin vector:

- :func:`mitm`, exact meet-in-the-middle enumeration: fast and complete for few
  equations, bounded by the size of the half enumerations;
- :func:`ilp`, a 0/1 program over one-hot bin indicators solved by HiGHS: takes a
  prior (MAP guess) and gets faster as equations accumulate, but HiGHS's branch and
  bound is only fast when the equations pin the LP relaxation: on random tables about
  three equations per feature (~10-20 ms a row), slow at two, hopeless below one,
  where rows time out and count as not recovered.

A row counts as recovered only if exactly one vector is consistent, which the tests
and the audit compare with :func:`baseline_fraction`, what guessing the most common
vector achieves without any attack.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

_EXHAUSTIVE_SPLIT_FEATURES = 20
_CHUNK_ELEMENTS = 1 << 20
_CANDIDATE_SLICE = 1 << 18
_SLACK_ULPS = 64.0
_HIGHS_STATUS_OPTIMAL = 0
_HIGHS_STATUS_LIMIT = 1


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


@dataclass(frozen=True)
class IlpResult:
    """:func:`ilp_detailed`'s answer: the guesses and what the solver proved about them.

    ``guess`` is (rows, J), -1 where nothing is claimed; ``unique`` marks rows whose
    vector was proven the only consistent one; ``timed_out`` marks rows where a time
    limit stopped either solve, so an audit can tell "safe" from "not tried hard enough".
    """

    guess: IntArray
    unique: BoolArray
    timed_out: BoolArray


def _offsets(bins: Sequence[int]) -> IntArray:
    """Where each feature's bins start in the flattened (feature, bin) index."""
    return np.concatenate(([0], np.cumsum(bins[:-1]))).astype(np.int64)


def _stacked(eq: Equations) -> FloatArray:
    """The tables as an (E, sum B_j) matrix, so a vector's sums are one gather-and-add."""
    if eq.n_equations == 0:
        return np.zeros((0, sum(eq.bins_per_feature)), dtype=np.float64)
    return np.stack([np.concatenate(table) for table in eq.tables])


def _effective_tolerance(eq: Equations) -> FloatArray:
    """The declared tolerance plus a few ulps of the largest sum involved, so float
    summation order never turns an exact match into a miss."""
    if eq.n_equations == 0:
        return np.zeros(0, dtype=np.float64)
    largest = np.array([sum(float(np.max(np.abs(t))) for t in table) for table in eq.tables])
    if eq.n_rows:
        largest = largest + np.max(np.abs(eq.observations), axis=0)
    return eq.tolerance + _SLACK_ULPS * np.finfo(np.float64).eps * (1.0 + largest)


def _distinct_rows(eq: Equations) -> tuple[IntArray, IntArray]:
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

    tol = _effective_tolerance(eq)
    window = 2.0 * tol - eq.tolerance
    screened = min(eq.n_equations, 2)
    small_sums = np.stack([_half_sums(eq.tables[e], small, size_small) for e in range(screened)])
    large_sums = np.stack([_half_sums(eq.tables[e], large, size_large) for e in range(screened)])
    order = np.argsort(large_sums[0], kind="stable")
    large_sums = np.ascontiguousarray(large_sums[:, order])
    stacked = _stacked(eq)
    offsets = _offsets(bins)

    reps, inverse = _distinct_rows(eq)
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


def _log_prior(prior: Sequence[NDArray[np.floating]], bins: Sequence[int]) -> FloatArray:
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


class _Program:
    """The row-independent part of the 0/1 program: one-hot rows, table rows, objective
    and bounds, so each row only swaps the equations' bounds."""

    def __init__(self, eq: Equations, log_prior: FloatArray | None) -> None:
        bins = eq.bins_per_feature
        self.bins = bins
        self.offsets = _offsets(bins)
        n_vars = sum(bins)
        one_hot = np.zeros((len(bins), n_vars), dtype=np.float64)
        for j, (start, size) in enumerate(zip(self.offsets, bins, strict=True)):
            one_hot[j, start : start + size] = 1.0
        self.stacked = _stacked(eq)
        self.matrix = np.vstack([one_hot, self.stacked])
        self.tolerance = eq.tolerance
        self.check = _effective_tolerance(eq)
        self.integrality = np.ones(n_vars, dtype=np.int64)
        if log_prior is None:
            self.cost = np.zeros(n_vars, dtype=np.float64)
            self.bounds = Bounds(0.0, 1.0)
        else:
            allowed = np.isfinite(log_prior)
            self.cost = np.where(allowed, -log_prior, 0.0)
            self.bounds = Bounds(0.0, allowed.astype(np.float64))

    def _solve(
        self, cost: FloatArray, constraints: list[LinearConstraint], limit: float
    ) -> tuple[int, FloatArray | None]:
        """One HiGHS run: its status (0 optimal, 1 limit, 2 infeasible...) and x."""
        result = milp(
            cost,
            integrality=self.integrality,
            bounds=self.bounds,
            constraints=constraints,
            options={"time_limit": max(limit, 1e-3), "mip_rel_gap": 0.0},
        )
        x = None if result.x is None else np.asarray(result.x, dtype=np.float64)
        return int(result.status), x

    def _vector(self, x: FloatArray, obs: FloatArray) -> IntArray | None:
        """The bin vector encoded by a solver point, or None if, once rounded, it is not
        one-hot or misses an equation (a point HiGHS accepted within its own tolerances
        but that no real vector matches)."""
        rounded = np.round(x)
        vector = np.array(
            [
                int(np.argmax(rounded[start : start + size]))
                for start, size in zip(self.offsets, self.bins, strict=True)
            ],
            dtype=np.int64,
        )
        if np.any(np.add.reduceat(rounded, self.offsets) != 1.0):
            return None
        sums = self.stacked[:, self.offsets + vector].sum(axis=1)
        if np.any(np.abs(sums - obs) > self.check):
            return None
        return vector

    def solve_row(self, obs: FloatArray, time_limit_s: float) -> tuple[IntArray | None, bool, bool]:
        """(MAP vector or None, proven unique, hit a time limit) for one observation."""
        deadline = time.monotonic() + time_limit_s
        n_feat = len(self.bins)
        ones = np.ones(n_feat, dtype=np.float64)
        rows = LinearConstraint(
            self.matrix,
            np.concatenate([ones, obs - self.tolerance]),
            np.concatenate([ones, obs + self.tolerance]),
        )
        status, x = self._solve(self.cost, [rows], time_limit_s)
        if status == _HIGHS_STATUS_LIMIT:
            return None, False, True
        if status != _HIGHS_STATUS_OPTIMAL or x is None:
            return None, False, False
        vector = self._vector(x, obs)
        if vector is None:
            return None, False, False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return vector, False, True
        cut = np.zeros((1, self.matrix.shape[1]), dtype=np.float64)
        cut[0, self.offsets + vector] = 1.0
        no_good = LinearConstraint(cut, -np.inf, n_feat - 1)
        status, _ = self._solve(np.zeros_like(self.cost), [rows, no_good], remaining)
        if status == _HIGHS_STATUS_LIMIT:
            return vector, False, True
        return vector, status != _HIGHS_STATUS_OPTIMAL, False


def ilp_detailed(
    eq: Equations,
    *,
    rows: Sequence[int] | None = None,
    time_limit_s: float = 2.0,
    prior: Sequence[NDArray[np.floating]] | None = None,
) -> IlpResult:
    """:func:`ilp`, also reporting which rows were proven unique and which timed out.

    Per distinct observation vector: maximise the log prior (or any feasible point
    without a prior) over one-hot x with every equation within tolerance, then re-solve
    with the no-good cut sum of the chosen x <= J - 1; infeasibility of the second solve
    proves the vector unique. ``time_limit_s`` is per row, shared by both solves.
    """
    bins = eq.bins_per_feature
    n_feat = len(bins)
    wanted = np.arange(eq.n_rows, dtype=np.int64) if rows is None else np.asarray(rows)
    if wanted.ndim != 1 or (wanted.size and not np.issubdtype(wanted.dtype, np.integer)):
        raise ValueError("rows must be a sequence of row indices")
    wanted = wanted.astype(np.int64)
    if np.any((wanted < 0) | (wanted >= eq.n_rows)):
        raise ValueError(f"rows must lie in [0, {eq.n_rows})")
    log_prior = None if prior is None else _log_prior(prior, bins)
    count = wanted.shape[0]
    guess = np.full((count, n_feat), -1, dtype=np.int64)
    unique = np.zeros(count, dtype=np.bool_)
    timed_out = np.zeros(count, dtype=np.bool_)
    if count == 0:
        return IlpResult(guess, unique, timed_out)
    if eq.n_equations == 0:
        alone = math.prod(bins) == 1
        if prior is not None:
            guess[:] = prior_mode(prior)
        elif alone:
            guess[:] = 0
        unique[:] = alone
        return IlpResult(guess, unique, timed_out)

    program = _Program(eq, log_prior)
    subset = Equations(eq.tables, eq.observations[wanted], eq.tolerance)
    reps, inverse = _distinct_rows(subset)
    for group, rep in enumerate(reps):
        vector, proven, limited = program.solve_row(subset.observations[rep], time_limit_s)
        members = inverse == group
        unique[members] = proven
        timed_out[members] = limited
        if vector is not None and (proven or prior is not None):
            guess[members] = vector
    return IlpResult(guess, unique, timed_out)


def ilp(
    eq: Equations,
    *,
    rows: Sequence[int] | None = None,
    time_limit_s: float = 2.0,
    prior: Sequence[NDArray[np.floating]] | None = None,
) -> IntArray:
    """The solver across rounds and versions: every equation a row appears in, jointly.

    Solves, per requested row, the 0/1 program over one-hot bin indicators x_{j,b}
    (sum_b x_{j,b} = 1; o_e - tol_e <= sum T_e[j][b] x_{j,b} <= o_e + tol_e for every
    e) with HiGHS, maximising the sum of log prior probabilities. Returns (len(rows), J)
    int64: the vector when it is proven the only consistent one; with a prior, the MAP
    vector even when others are consistent (the attacker's best guess); -1 when no
    vector is consistent, when a time limit stops the search (without a prior, also
    when only uniqueness timed out), or without a prior when several are consistent.
    With no equations the answer is the prior's mode (-1 without a prior).

    Random tables make this a multi-dimensional subset-sum: branch and bound is fast
    when the equations outnumber the features about three to one and times out with
    fewer than one per feature, even where they pin the vector; use :func:`mitm` there.
    """
    return ilp_detailed(eq, rows=rows, time_limit_s=time_limit_s, prior=prior).guess


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
    logs = [np.asarray(_log_prior([p], [len(p)]), dtype=np.float64) for p in prior]
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
    tolerance = _effective_tolerance(eq)
    distinct, inverse = _distinct_rows(eq)
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

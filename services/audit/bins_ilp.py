"""The ILP solver of the bin-vector recovery (services/audit/bins.py has the equations,
the exact meet-in-the-middle and the dictionary): a 0/1 program over one-hot bin
indicators, solved row by row with HiGHS (scipy's ``milp``), a prior turning it into a
MAP guess and a no-good cut proving a vector unique."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]

from services.audit.bins import (
    BoolArray,
    Equations,
    FloatArray,
    IntArray,
    bin_offsets,
    distinct_rows,
    effective_tolerance,
    flat_log_prior,
    prior_mode,
    stacked_tables,
)

_HIGHS_STATUS_OPTIMAL = 0
_HIGHS_STATUS_LIMIT = 1


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


class _Program:
    """The row-independent part of the 0/1 program: one-hot rows, table rows, objective
    and bounds, so each row only swaps the equations' bounds."""

    def __init__(self, eq: Equations, log_prior: FloatArray | None) -> None:
        bins = eq.bins_per_feature
        self.bins = bins
        self.offsets = bin_offsets(bins)
        n_vars = sum(bins)
        one_hot = np.zeros((len(bins), n_vars), dtype=np.float64)
        for j, (start, size) in enumerate(zip(self.offsets, bins, strict=True)):
            one_hot[j, start : start + size] = 1.0
        self.stacked = stacked_tables(eq)
        self.matrix = np.vstack([one_hot, self.stacked])
        self.tolerance = eq.tolerance
        self.check = effective_tolerance(eq)
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
    log_prior = None if prior is None else flat_log_prior(prior, bins)
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
    reps, inverse = distinct_rows(subset)
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

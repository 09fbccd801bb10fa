"""The bin-vector attacks (services/audit/bins.py, bins_ilp.py) on synthetic partners:
what a bank that knows the tables recovers, what it recovers without them, and where
each solver stops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from services.audit import bins as audit
from services.audit.bins import (
    BudgetExceeded,
    Equations,
    baseline_fraction,
    dictionary,
    marginals,
    mitm,
    prior_mode,
    recovered_fraction,
    top_vectors,
)
from services.audit.bins_ilp import ilp, ilp_detailed

GRID = 2.0**-14
FIVE = [11, 12, 16, 17, 9]
NINE = [11, 13, 15, 17, 12, 14, 16, 11, 13]
CLIP = 8.0
"""The packing's weight clip: real weight tables hold values in [-8, 8]."""
WIDE = 8192.0
"""A table the bank draws itself (a legacy direction table) can be this wide or wider."""

Tables = list[list[NDArray[np.float64]]]


def _tables(rng: np.random.Generator, bins: Sequence[int], count: int, spread: float) -> Tables:
    """``count`` random tables, entries uniform in [-spread, spread] on the 2^-14 grid."""
    return [
        [np.round(rng.uniform(-spread, spread, size) / GRID) * GRID for size in bins]
        for _ in range(count)
    ]


def _skewed(rng: np.random.Generator, bins: Sequence[int], rows: int) -> NDArray[np.int64]:
    """Rows like real data: half are one of six popular vectors (Zipf weights), the rest
    a long tail drawn from geometrically skewed marginals."""
    popular = np.stack([rng.integers(0, size, 6) for size in bins], axis=1)
    weights = 1.0 / np.arange(1, 7)
    columns = []
    for size in bins:
        decay = 0.75 ** np.arange(size)
        columns.append(rng.choice(size, rows, p=decay / decay.sum()))
    truth = np.stack(columns, axis=1).astype(np.int64)
    pick = rng.random(rows) < 0.5
    truth[pick] = popular[rng.choice(6, int(pick.sum()), p=weights / weights.sum())]
    return truth


def _observe(tables: Tables, truth: NDArray[np.int64]) -> NDArray[np.float64]:
    """Every row's exact score under every table: the decrypted fixed-point sums."""
    return np.stack(
        [sum(table[j][truth[:, j]] for j in range(truth.shape[1])) for table in tables],
        axis=1,
    ).astype(np.float64)


def _equations(known: Tables, observed: NDArray[np.float64]) -> Equations:
    """The attacker's system, with the conventional tolerance J * 2^-14 per equation."""
    features = len(known[0])
    return Equations(known, observed, np.full(len(known), features * GRID))


# -- meet in the middle ------------------------------------------------------------


def test_mitm_recovers_a_five_feature_partner_from_one_equation_and_all_from_two() -> None:
    rng = np.random.default_rng(11)
    truth = _skewed(rng, FIVE, 2000)
    one = _tables(rng, FIVE, 1, WIDE)
    assert recovered_fraction(mitm(_equations(one, _observe(one, truth))), truth) >= 0.95
    two = _tables(rng, FIVE, 2, WIDE)
    assert recovered_fraction(mitm(_equations(two, _observe(two, truth))), truth) == 1.0


def test_mitm_on_weight_clipped_tables_needs_a_second_equation() -> None:
    # |T| <= 8 on a 2^-14 grid: ~300k vectors share a sum range of ~100 units, so one
    # equation within J * 2^-14 leaves most rows ambiguous; two pin them all
    rng = np.random.default_rng(12)
    truth = _skewed(rng, FIVE, 2000)
    one = _tables(rng, FIVE, 1, CLIP)
    assert recovered_fraction(mitm(_equations(one, _observe(one, truth))), truth) < 0.5
    two = _tables(rng, FIVE, 2, CLIP)
    assert recovered_fraction(mitm(_equations(two, _observe(two, truth))), truth) >= 0.99


def test_mitm_does_not_depend_on_chunk_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    truth = _skewed(rng, FIVE, 300)
    tables = _tables(rng, FIVE, 1, CLIP)
    eq = _equations(tables, _observe(tables, truth))
    reference = mitm(eq)
    monkeypatch.setattr(audit, "_CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(audit, "_CANDIDATE_SLICE", 97)
    np.testing.assert_array_equal(mitm(eq), reference)


def test_ambiguous_rows_are_refused_without_a_prior_and_guessed_with_one() -> None:
    # bins 1 and 2 of feature 0 score alike: (1, 1) and (2, 1) both explain 11
    eq = Equations(
        [[np.array([0.0, 1.0, 1.0]), np.array([0.0, 10.0])]],
        np.array([[0.0], [11.0], [11.0], [10.0]]),
        np.array([0.25]),
    )
    refused = np.array([[0, 0], [-1, -1], [-1, -1], [0, 1]])
    np.testing.assert_array_equal(mitm(eq), refused)
    np.testing.assert_array_equal(ilp(eq), refused)
    prior = [np.array([0.2, 0.1, 0.7]), np.array([0.5, 0.5])]
    detailed = ilp_detailed(eq, prior=prior)
    np.testing.assert_array_equal(detailed.guess, [[0, 0], [2, 1], [2, 1], [0, 1]])
    np.testing.assert_array_equal(detailed.unique, [True, False, False, True])
    np.testing.assert_array_equal(ilp(eq, rows=[3, 1], prior=prior), [[0, 1], [2, 1]])


# -- the tables are the secret -----------------------------------------------------


def test_without_the_tables_neither_solver_beats_guessing() -> None:
    rng = np.random.default_rng(21)
    truth = _skewed(rng, FIVE, 200)
    prior = marginals(truth, FIVE)
    floor = baseline_fraction(truth)
    for count in (1, 2):
        secret = _tables(rng, FIVE, count, WIDE)
        guessed = _tables(rng, FIVE, count, WIDE)
        assert recovered_fraction(mitm(_equations(guessed, _observe(secret, truth))), truth) < 0.02
    # enough equations for HiGHS to be fast (3 per feature): with the true tables the
    # program pins every row, with independently drawn ones it does no better than the
    # prior's guess
    secret = _tables(rng, FIVE, 15, CLIP)
    guessed = _tables(rng, FIVE, 15, CLIP)
    observed = _observe(secret, truth)
    known = ilp(_equations(secret, observed), rows=range(40), prior=prior)
    assert recovered_fraction(known, truth[:40]) == 1.0
    blind = ilp(_equations(guessed, observed), prior=prior)
    assert recovered_fraction(blind, truth) <= floor + 0.01
    no_equations = Equations([], np.zeros((200, 0)), np.zeros(0), bins=tuple(FIVE))
    prior_only = ilp(no_equations, prior=prior)
    np.testing.assert_array_equal(prior_only, np.tile(prior_mode(prior), (200, 1)))
    assert recovered_fraction(prior_only, truth) <= floor + 0.01
    assert (ilp(no_equations, rows=[0, 1]) == -1).all()


# -- the program across rounds and versions ----------------------------------------


def test_ilp_recovers_a_nine_feature_partner_that_is_over_the_mitm_budget() -> None:
    rng = np.random.default_rng(31)
    truth = _skewed(rng, NINE, 200)
    rounds = _tables(rng, NINE, 32, CLIP)
    eq = _equations(rounds, _observe(rounds, truth))
    with pytest.raises(BudgetExceeded):
        mitm(eq, budget=1 << 16)
    assert recovered_fraction(ilp(eq), truth) >= 0.95


def test_ilp_gives_up_at_its_time_limit_when_equations_are_few() -> None:
    # 3 equations pin a nine-feature vector (mitm finds it) but leave HiGHS's branch and
    # bound a needle in 10^10 assignments: the rows time out and claim nothing
    rng = np.random.default_rng(32)
    truth = _skewed(rng, NINE, 2)
    rounds = _tables(rng, NINE, 3, CLIP)
    result = ilp_detailed(_equations(rounds, _observe(rounds, truth)), time_limit_s=0.2)
    assert (result.guess == -1).all()
    assert result.timed_out.all()
    assert not result.unique.any()


def test_ilp_separates_two_partners_observed_as_one_sum() -> None:
    rng = np.random.default_rng(41)
    first, second = [11, 14, 16, 9], [12, 17, 13]
    truth_first, truth_second = _skewed(rng, first, 40), _skewed(rng, second, 40)
    count = 28
    tables_first = _tables(rng, first, count, CLIP)
    tables_second = _tables(rng, second, count, CLIP)
    observed = _observe(tables_first, truth_first) + _observe(tables_second, truth_second)
    joint = [a + b for a, b in zip(tables_first, tables_second, strict=True)]
    guess = ilp(_equations(joint, observed))
    assert recovered_fraction(guess[:, :4], truth_first) == 1.0
    assert recovered_fraction(guess[:, 4:], truth_second) == 1.0


# -- inputs and scores --------------------------------------------------------------


def _table() -> list[NDArray[np.float64]]:
    return [np.zeros(3), np.zeros(2)]


@pytest.mark.parametrize(
    ("tables", "observations", "tolerance", "message"),
    [
        ([_table()], np.zeros(4), np.zeros(1), "2-D"),
        ([_table()], np.zeros((4, 2)), np.zeros(1), "2 columns but there are 1 tables"),
        ([_table()], np.zeros((4, 1)), np.zeros(2), "tolerance must have shape"),
        ([_table()], np.zeros((4, 1)), np.array([-1.0]), "tolerance must be finite"),
        ([_table()], np.full((4, 1), np.nan), np.zeros(1), "observations must be finite"),
        ([_table(), [np.zeros(3)]], np.zeros((4, 2)), np.zeros(2), "table 1 has 1 features"),
        ([_table(), [np.zeros(3), np.zeros(5)]], np.zeros((4, 2)), np.zeros(2), "feature 1"),
        ([[np.zeros((3, 1))]], np.zeros((4, 1)), np.zeros(1), "1-D array"),
        ([[np.zeros(0)]], np.zeros((4, 1)), np.zeros(1), "at least one bin"),
        ([], np.zeros((4, 0)), np.zeros(0), "pass bins"),
    ],
)
def test_equations_reject_inconsistent_shapes(
    tables: list[list[NDArray[np.float64]]],
    observations: NDArray[np.float64],
    tolerance: NDArray[np.float64],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        Equations(tables, observations, tolerance)


def test_equations_read_bins_from_the_tables() -> None:
    eq = Equations([_table(), _table()], np.zeros((4, 2)), np.zeros(2))
    assert eq.bins_per_feature == [3, 2]
    assert (eq.n_equations, eq.n_rows) == (2, 4)
    with pytest.raises(ValueError, match="disagree"):
        Equations([_table()], np.zeros((4, 1)), np.zeros(1), bins=(3, 3))


def test_scores_on_a_hand_made_example() -> None:
    truth = np.array([[0, 1], [0, 1], [0, 1], [2, 0], [1, 1]])
    assert baseline_fraction(truth) == pytest.approx(0.6)
    guess = np.array([[0, 1], [0, 1], [-1, -1], [2, 1], [1, 1]])
    assert recovered_fraction(guess, truth) == pytest.approx(0.6)
    assert recovered_fraction(truth, truth) == 1.0
    assert baseline_fraction(np.zeros((0, 2), dtype=np.int64)) == 0.0
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        recovered_fraction(guess[:, :1], truth)


def test_marginals_are_smoothed_frequencies_and_their_mode_the_likeliest_bins() -> None:
    truth = np.array([[0, 1], [0, 1], [0, 1], [2, 0], [1, 1]])
    first, second = marginals(truth, [3, 2])
    np.testing.assert_allclose(first, np.array([3.5, 1.5, 1.5]) / 6.5)
    np.testing.assert_allclose(second, np.array([1.5, 4.5]) / 6.0)
    np.testing.assert_array_equal(prior_mode([first, second]), [0, 1])
    with pytest.raises(ValueError, match="bins must lie"):
        marginals(truth, [2, 2])


# -- dictionary -----------------------------------------------------------------------


TWELVE = [12, 11, 12, 11, 11, 11, 17, 17, 17, 16, 16, 16]
"""The reference split's repayments partner: 2^43 bin vectors, beyond mitm's budget."""


def test_the_top_vectors_are_the_likeliest_in_order() -> None:
    prior = [np.array([0.5, 0.3, 0.2]), np.array([0.9, 0.1])]
    top = top_vectors(prior, 4)
    assert top.tolist() == [[0, 0], [1, 0], [2, 0], [0, 1]]


def test_a_dictionary_recovers_the_rows_it_covers_of_a_partner_too_large_to_enumerate() -> None:
    """Exact fixed-point equations, two rounds, the marginals as prior: the rows whose
    vector is among the dictionary's likeliest are recovered (a third of them here,
    where no vector holds even 1 % of the rows), and without the tables none is."""
    rng = np.random.default_rng(5)
    columns = []
    for size in TWELVE:
        decay = 0.5 ** np.arange(size)
        columns.append(rng.choice(size, 3000, p=decay / decay.sum()))
    truth = np.stack(columns, axis=1).astype(np.int64)
    prior = marginals(truth, TWELVE)
    known = _tables(rng, TWELVE, 2, 1.0)
    eq = _equations(known, _observe(known, truth))
    with pytest.raises(BudgetExceeded):
        mitm(eq, budget=1 << 18)
    covered = {tuple(v) for v in top_vectors(prior, 1 << 18).tolist()}
    share = float(np.mean([tuple(row) in covered for row in truth.tolist()]))
    got = recovered_fraction(dictionary(eq, prior, size=1 << 18), truth)
    assert got == pytest.approx(share, abs=0.01) and got > 0.25
    assert got > baseline_fraction(truth) + 0.2
    wrong = _tables(rng, TWELVE, 2, 1.0)
    assert recovered_fraction(dictionary(_equations(wrong, eq.observations), prior), truth) < 0.01

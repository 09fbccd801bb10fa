"""Federated training, bank side (docs/design.md §3; docs/protocol.md, "Training").

Model: ``logit = f_bank(x_bank) + sum_k u_k``, ``u_k = sum_j w_k[j, bin_j]``.

The partners' weights ``w_k`` exist only encrypted, held by each partner; the bank
never decrypts anything that is a function of weights it knows. Each round:

1. the bank encrypts ``g = p - y`` for every session row (zero for the rows it holds
   out) and sends them with the step it chose for the previous round;
2. each partner sums them per bin, turns each sum into an encrypted Newton direction
   with its own bin counts (``services/kernel/crypto/blind.py``), and returns the
   per-row direction scores masked pairwise with the other partners;
3. the bank multiplies the partners' answers, decrypts once per ciphertext, and reads
   the per-row *sum over partners* ``du`` of the direction scores;
4. it picks one step ``a`` for every partner by an exact line search along ``du``
   (``s += a du`` moves the aggregate partner score exactly), refits ``f_bank`` with
   LightGBM on top of the new score (backfitting), and stops early on a validation
   fold carved from the training rows.

At the end the partners combine the kept rounds' directions with the steps into their
final encrypted weights and keep them for serving (the bank drops the weights' low bits
from a statistically masked copy). The bank learns per-row aggregate scores of unknown
additive functions, and the partners' bin counts per feature; never a partner's
features, bins, bin edges, feature names, weights or directions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from schemas import PackingSpec
from schemas.training import BlindTraining
from services.kernel.crypto.blind import blind_training, decode_step, encode_step
from services.kernel.crypto.packing import DEFAULT_FLAG_BITS, packing_for
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.tokens import TokenSource
from services.kernel.model.scoring import sigmoid
from services.training.coordinator import Channel
from services.training.exchanges import Exchanges, ListOrder
from services.training.parallel import CryptoPool
from services.training.trace import TrainingTrace

log = logging.getLogger(__name__)


@dataclass
class TrainParams:
    """Defaults from a plaintext study of the protocol on the reference split (docs/model.md):
    count-preconditioned Newton directions with a pseudo-count of 600 and one exact line
    search for all partners reach the additive model's test AUC of per-partner steps on
    Hessian sums in about eight rounds."""

    rounds: int = 12
    pseudo_count: int = 600
    max_bins: int = 16
    validation_fraction: float = 0.2
    patience: int = 3
    seed: int = 0
    max_trees: int = 300
    early_stopping_trees: int = 30
    num_leaves: int = 15
    learning_rate: float = 0.05
    min_child_samples: int = 50
    # Stacking: a final LightGBM on the bank's features plus the aggregate partner score
    # learns bank x partner interactions the additive model cannot; kept only when it
    # beats the additive model on the validation fold.
    stack: bool = True
    stack_num_leaves: int = 7
    stack_learning_rate: float = 0.02
    stack_max_trees: int = 1000
    stack_early_stopping_trees: int = 50
    # t of the bundles' blacklist field (docs/crypto.md, "The blacklist field").
    flag_bits: int = DEFAULT_FLAG_BITS
    # LightGBM's threads. The training job has its cores to itself; where others share
    # them (the unit tests), two OpenMP threads spin waiting for each other and one is
    # many times faster.
    num_threads: int = 2

    def lgb_params(self) -> dict[str, object]:
        return {
            "objective": "binary",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples,
            "verbose": -1,
            "num_threads": self.num_threads,
            "seed": self.seed,
        }


@dataclass
class BankRows:
    ids: list[str]
    x: np.ndarray
    y: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> BankRows:
        """The rows at the indices ``idx``, in that order."""
        return BankRows(
            [self.ids[i] for i in idx], self.x[idx], None if self.y is None else self.y[idx]
        )


@dataclass
class Trained:
    bins_per_feature: dict[str, list[int]]
    booster: lgb.Booster
    fallback: lgb.Booster
    packing: PackingSpec
    metrics: dict[str, float]
    test_scores: np.ndarray | None
    history: list[dict[str, float]] = field(default_factory=list)
    stacked: bool = False
    steps: list[float] = field(default_factory=list)
    """The kept rounds' steps, as the partners applied them."""


def _line_search(y: np.ndarray, logit: np.ndarray, du: np.ndarray, limit: float) -> float:
    """argmin_a sum logloss(logit + a du) over [0, limit], by damped Newton with
    backtracking (at most 30 iterations)."""

    def objective(a: float) -> float:
        z = logit + a * du
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    a, value = 0.0, objective(0.0)
    for _ in range(30):
        prob = sigmoid(logit + a * du)
        grad = float(du @ (prob - y))
        hess = float((du * du) @ (prob * (1 - prob))) + 1e-9
        step, scale = -grad / hess, 1.0
        while (
            objective(min(max(a + scale * step, 0.0), limit)) > value + 1e-4 * scale * grad * step
        ):
            scale *= 0.5
            if scale < 1e-6:
                break
        a = min(max(a + scale * step, 0.0), limit)
        previous, value = value, objective(a)
        if previous - value < 1e-9 * abs(previous):
            break
    return a


@dataclass
class SessionRows:
    """A session's rows, split three ways: the fit rows (the only ones with a gradient),
    the validation fold carved from the training rows (early stopping, the stacker's
    test) and the caller's test rows. Per-row arrays such as the aggregate partner score
    run over all of them in that order; ``order`` is the shuffled list the partners see."""

    fit: BankRows
    val: BankRows
    test: BankRows
    order: ListOrder

    @classmethod
    def split(cls, train: BankRows, test: BankRows | None, params: TrainParams) -> SessionRows:
        """Validation rows stratified on the label; the list order drawn afresh."""
        assert train.y is not None
        fit_idx, val_idx = train_test_split(
            np.arange(len(train.ids)),
            test_size=params.validation_fraction,
            stratify=train.y,
            random_state=params.seed,
        )
        fit, val = train.take(np.sort(fit_idx)), train.take(np.sort(val_idx))
        test = test if test is not None else BankRows([], train.x[:0])
        return cls(fit, val, test, ListOrder.shuffled(len(fit.ids) + len(val.ids) + len(test.ids)))

    @property
    def ids(self) -> list[str]:
        return [*self.fit.ids, *self.val.ids, *self.test.ids]

    @property
    def total(self) -> int:
        return len(self.order)

    def fit_part(self, per_row: np.ndarray) -> np.ndarray:
        out: np.ndarray = per_row[: len(self.fit.ids)]
        return out

    def val_part(self, per_row: np.ndarray) -> np.ndarray:
        start = len(self.fit.ids)
        out: np.ndarray = per_row[start : start + len(self.val.ids)]
        return out

    def test_part(self, per_row: np.ndarray) -> np.ndarray:
        out: np.ndarray = per_row[len(self.fit.ids) + len(self.val.ids) :]
        return out

    @property
    def y_fit(self) -> np.ndarray:
        assert self.fit.y is not None
        return self.fit.y

    @property
    def y_val(self) -> np.ndarray:
        assert self.val.y is not None
        return self.val.y


@dataclass(frozen=True)
class Backfitted:
    """One point of the rounds: ``s``, the aggregate partner score of every session row
    as the bank tracks it (sum_r a_r du_r: exactly what the partners' final weights
    produce, up to their rounding to the serving layout's fixed point), and the bank's
    trees refitted on top of it."""

    round: int
    s: np.ndarray
    booster: lgb.Booster
    val_auc: float


@dataclass
class Rounds:
    """What the rounds leave: the best point, the quantised step of every round run (the
    partners apply those of rounds 1 to ``best.round``) and the per-round history."""

    best: Backfitted
    steps: list[int]
    history: list[dict[str, float]]


class FederatedTrainer:
    def __init__(
        self,
        coordinator: Channel,
        key: PrivateKey,
        tokenizers: dict[str, TokenSource],
        params: TrainParams,
        progress: Callable[[str, float], None] | None = None,
        pool: CryptoPool | None = None,
        trace: bool = False,
    ) -> None:
        self.keep_trace = trace
        self.trace: TrainingTrace | None = None
        self.key = key
        self.partners = list(tokenizers)
        self.params = params
        self.progress = progress or (lambda _stage, _fraction: None)
        self.blind: BlindTraining = blind_training(params.rounds, pseudo_count=params.pseudo_count)
        pool = pool or CryptoPool(key)  # without workers: runs in this process
        self.exchanges = Exchanges(coordinator, key, pool, tokenizers, self.blind)

    async def fit(self, train: BankRows, test: BankRows | None = None) -> Trained:
        rows = SessionRows.split(train, test, self.params)
        bins = await self.exchanges.start(rows.order, rows.ids, self.params.max_bins)
        if self.keep_trace:
            self.trace = self._new_trace(rows, bins)
        rounds = await self._run_rounds(rows)
        best = rounds.best
        if self.trace is not None:
            self.trace.best_round = best.round
        self.progress("final weights", 0.97)
        await self.exchanges.finish(best.round, rounds.steps[: best.round], self.trace)
        fallback = self._fit_bank(rows, np.zeros(rows.total))
        metrics = {
            "validation_auc": best.val_auc,
            "rounds": float(best.round),
            "rounds_run": float(len(rounds.history) - 1),
        }
        # Stacking: kept only when it beats the additive model on the validation fold.
        stacker = self._fit_stacker(rows, best.s) if self.params.stack else None
        if stacker is not None:
            stacked_logit = self._stacked_logit(stacker, rows.val.x, rows.val_part(best.s))
            metrics["validation_auc_stacked"] = float(roc_auc_score(rows.y_val, stacked_logit))
        stacked = stacker is not None and metrics["validation_auc_stacked"] > best.val_auc + 1e-4
        metrics["stacked"] = float(stacked)
        test_scores = None
        if rows.test.ids and rows.test.y is not None:
            test_scores, on_test = self._evaluate_on_test(rows, best, stacker, stacked, fallback)
            metrics |= on_test
        self.progress("done", 1.0)
        return Trained(
            bins_per_feature=bins,
            booster=stacker if stacked and stacker is not None else best.booster,
            fallback=fallback,
            packing=self._serving_packing(bins, float(np.abs(best.s).max(initial=0.0))),
            metrics=metrics,
            test_scores=test_scores,
            history=rounds.history,
            stacked=stacked,
            steps=[decode_step(self.blind, a) for a in rounds.steps[: best.round]],
        )

    # -- the rounds ---------------------------------------------------------------------
    async def _run_rounds(self, rows: SessionRows) -> Rounds:
        """Round after round until ``params.rounds`` or ``params.patience`` rounds without
        a better validation AUC; the best round wins, not the last."""
        p = self.params
        current = self._backfit(rows, 0, np.zeros(rows.total))
        best = current
        steps: list[int] = []
        history: list[dict[str, float]] = [{"round": 0, "val_auc": current.val_auc}]
        for round_ in range(1, p.rounds + 1):
            started = time.perf_counter()
            self.progress(f"round {round_}: encrypted directions", (round_ - 1) / p.rounds)
            step, du = await self._step(rows, round_, current, steps[-1] if steps else None)
            steps.append(step)
            current = self._backfit(rows, round_, current.s + decode_step(self.blind, step) * du)
            history.append(
                {
                    "round": round_,
                    "val_auc": current.val_auc,
                    "seconds": time.perf_counter() - started,
                    "bank_trees": float(
                        current.booster.best_iteration or current.booster.num_trees()
                    ),
                    "step": decode_step(self.blind, step),
                }
            )
            log.info(
                "round %d: validation AUC %.4f, step %.3f",
                round_,
                current.val_auc,
                decode_step(self.blind, step),
            )
            if current.val_auc > best.val_auc:
                best = current
            elif round_ - best.round >= p.patience:
                break
        return Rounds(best, steps, history)

    async def _step(
        self, rows: SessionRows, round_: int, current: Backfitted, previous: int | None
    ) -> tuple[int, np.ndarray]:
        """One round's exchange and its exact line search: the quantised step and the
        aggregate direction score ``du`` of every row."""
        logit = self._raw(current.booster, rows.fit.x) + rows.fit_part(current.s)
        # The held-out rows get a zero gradient: they must not shape the directions.
        g = np.concatenate([sigmoid(logit) - rows.y_fit, np.zeros(rows.total - len(logit))])
        du = await self.exchanges.round(round_, g, previous)
        step = encode_step(
            self.blind, _line_search(rows.y_fit, logit, rows.fit_part(du), self.blind.max_step)
        )
        if self.trace is not None:
            scale = float(1 << self.blind.direction_bits)
            order = rows.order
            self.trace.record_round(
                order.to_list_order(g), np.rint(order.to_list_order(du) * scale), step
            )
        return step, du

    def _backfit(self, rows: SessionRows, round_: int, s: np.ndarray) -> Backfitted:
        """Backfitting: the bank's trees re-learn on top of the partner scores ``s``."""
        booster = self._fit_bank(rows, s)
        val_logit = self._raw(booster, rows.val.x) + rows.val_part(s)
        return Backfitted(round_, s, booster, float(roc_auc_score(rows.y_val, val_logit)))

    def _new_trace(self, rows: SessionRows, bins: dict[str, list[int]]) -> TrainingTrace:
        held_out = [i >= len(rows.fit.ids) for i in rows.order.row_at.tolist()]
        return TrainingTrace(
            ids=rows.order.listed(rows.ids),
            blind=self.blind,
            bins_per_feature=bins,
            held_out=held_out,
        )

    # -- the final model ----------------------------------------------------------------
    def _evaluate_on_test(
        self,
        rows: SessionRows,
        best: Backfitted,
        stacker: lgb.Booster | None,
        stacked: bool,
        fallback: lgb.Booster,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """The kept model's scores of the test rows, and the test AUC of every model."""
        x, y, s_test = rows.test.x, rows.test.y, rows.test_part(best.s)
        assert y is not None
        additive_logit = self._raw(best.booster, x) + s_test
        stacked_logit = None if stacker is None else self._stacked_logit(stacker, x, s_test)
        test_logit = stacked_logit if stacked and stacked_logit is not None else additive_logit
        metrics = {
            "test_auc": float(roc_auc_score(y, test_logit)),
            "test_auc_additive": float(roc_auc_score(y, additive_logit)),
        }
        if stacked_logit is not None:
            metrics["test_auc_stacked"] = float(roc_auc_score(y, stacked_logit))
        metrics["test_auc_bank_only"] = float(roc_auc_score(y, self._raw(fallback, x)))
        return sigmoid(test_logit), metrics

    def _serving_packing(self, bins: dict[str, list[int]], largest_score: float) -> PackingSpec:
        """The bundles' slot layout. The bank never sees a weight, so the clip bounds the
        *sum* a slot can hold instead: every feature's offset is clip * 2^F, so any
        aggregate score within +-clip * (features) decodes; the clip is at least 8 and
        at least the largest aggregate score seen on any session row."""
        counts = [len(bins[k]) for k in self.partners]
        clip = max(8.0, float(np.ceil(largest_score)))
        return packing_for(
            self.key.public.bits, counts, weight_clip=clip, flag_bits=self.params.flag_bits
        )

    def _fit_stacker(self, rows: SessionRows, s: np.ndarray) -> lgb.Booster:
        """LightGBM on [bank features, aggregate partner score], on top of that score.
        The validation rows, which early-stop the stacker and decide whether it is kept,
        never contributed a gradient."""
        p = self.params
        params = {
            **p.lgb_params(),
            "num_leaves": p.stack_num_leaves,
            "learning_rate": p.stack_learning_rate,
        }
        s_fit, s_val = rows.fit_part(s), rows.val_part(s)
        train_set = lgb.Dataset(
            np.column_stack([rows.fit.x, s_fit]), rows.y_fit, init_score=s_fit, free_raw_data=False
        )
        valid_set = lgb.Dataset(
            np.column_stack([rows.val.x, s_val]), rows.y_val, init_score=s_val, reference=train_set
        )
        return lgb.train(
            params,
            train_set,
            p.stack_max_trees,
            valid_sets=[valid_set],
            callbacks=[lgb.early_stopping(p.stack_early_stopping_trees, verbose=False)],
        )

    @classmethod
    def _stacked_logit(cls, stacker: lgb.Booster, x: np.ndarray, s: np.ndarray) -> np.ndarray:
        logit: np.ndarray = cls._raw(stacker, np.column_stack([x, s])) + s
        return logit

    @staticmethod
    def _raw(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(x, raw_score=True, num_iteration=booster.best_iteration))

    def _fit_bank(self, rows: SessionRows, s: np.ndarray) -> lgb.Booster:
        """LightGBM on the bank's features on top of the partner scores ``s``, early-stopped
        on the validation rows (whose partner scores came back through the protocol)."""
        s_fit, s_val = rows.fit_part(s), rows.val_part(s)
        train_set = lgb.Dataset(rows.fit.x, rows.y_fit, init_score=s_fit, free_raw_data=False)
        valid_set = lgb.Dataset(rows.val.x, rows.y_val, init_score=s_val, reference=train_set)
        return lgb.train(
            self.params.lgb_params(),
            train_set,
            self.params.max_trees,
            valid_sets=[valid_set],
            callbacks=[lgb.early_stopping(self.params.early_stopping_trees, verbose=False)],
        )

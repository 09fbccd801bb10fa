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
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
from gmpy2 import mpz
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from schemas import PackingSpec, TrainFinish, TrainReady, TrainScores, TrainStart
from schemas.training import (
    BlindTraining,
    ScoreLayout,
    TrainDone,
    TrainRound,
    TrainTruncate,
    TrainTruncated,
)
from services.kernel.crypto.blind import (
    PROVISIONAL_FEATURES,
    blind_training,
    decode_scores,
    decode_step,
    encode_gradients,
    encode_step,
    score_layout,
    truncate,
)
from services.kernel.crypto.codec import b64_to_int, int_to_b64
from services.kernel.crypto.packing import DEFAULT_FLAG_BITS, PackingOverflowError, packing_for
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.tokens import TokenSource, token_or_decoy
from services.kernel.model.scoring import sigmoid
from services.training.coordinator import Channel, TrainingError
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

    def lgb_params(self) -> dict[str, object]:
        return {
            "objective": "binary",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples,
            "verbose": -1,
            "num_threads": 2,
            "seed": self.seed,
        }


@dataclass
class BankRows:
    ids: list[str]
    x: np.ndarray
    y: np.ndarray | None = None


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
class _Rows:
    """The session's rows as the partners see them: one shuffled list."""

    order: np.ndarray  # position in the list -> row (fit rows, then validation, then test)
    fit: int
    val: int
    test: int

    @property
    def total(self) -> int:
        return self.fit + self.val + self.test

    def to_list_order(self, values: np.ndarray) -> np.ndarray:
        """Per-row values (fit, val, test order) in the session's list order."""
        out: np.ndarray = values[self.order]
        return out

    def from_list_order(self, values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[self.order] = values
        return out


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
        self.coord = coordinator
        self.keep_trace = trace
        self.trace: TrainingTrace | None = None
        self.key = key
        self.pool = pool or CryptoPool(key)  # without workers: runs in this process
        self.tokenizers = tokenizers
        self.partners = list(tokenizers)
        self.params = params
        self.progress = progress or (lambda _stage, _fraction: None)
        self.blind: BlindTraining = blind_training(params.rounds, pseudo_count=params.pseudo_count)

    def _split(self, train: BankRows) -> tuple[np.ndarray, np.ndarray]:
        """Fit and validation rows (sorted indices), stratified on the label."""
        assert train.y is not None
        fit_idx, val_idx = train_test_split(
            np.arange(len(train.ids)),
            test_size=self.params.validation_fraction,
            stratify=train.y,
            random_state=self.params.seed,
        )
        return np.sort(fit_idx), np.sort(val_idx)

    async def fit(self, train: BankRows, test: BankRows | None = None) -> Trained:
        assert train.y is not None
        p = self.params
        fit_idx, val_idx = self._split(train)
        fit = BankRows([train.ids[i] for i in fit_idx], train.x[fit_idx], train.y[fit_idx])
        val = BankRows([train.ids[i] for i in val_idx], train.x[val_idx], train.y[val_idx])
        test = test or BankRows([], train.x[:0])
        assert fit.y is not None and val.y is not None
        n_fit, n_val, n_test = len(fit.ids), len(val.ids), len(test.ids)
        # An unpredictable order, so nothing in the list tells a partner which rows are
        # held out; the order does not change the model.
        rng = np.random.default_rng(secrets.randbits(128))
        rows = _Rows(rng.permutation(n_fit + n_val + n_test), n_fit, n_val, n_test)
        ids = [*fit.ids, *val.ids, *test.ids]
        bins = await self._start(rows, ids)
        total_features = sum(len(b) for b in bins.values())
        if self.keep_trace:
            listed = rows.order.tolist()
            self.trace = TrainingTrace(
                ids=[ids[i] for i in listed],
                blind=self.blind,
                bins_per_feature=bins,
                held_out=[i >= n_fit for i in listed],
            )

        # The aggregate partner score of every row (fit, val, test order), as the bank
        # tracks it: sum_r a_r du_r, exactly what the partners' final weights produce,
        # up to their rounding to the serving layout's fixed point.
        s = np.zeros(rows.total)
        booster = self._fit_bank(fit, val, np.zeros(n_fit), np.zeros(n_val))
        f_fit = self._raw(booster, fit.x)
        best_auc = float(roc_auc_score(val.y, self._raw(booster, val.x)))
        best = (0, booster, s.copy())
        history: list[dict[str, float]] = [{"round": 0, "val_auc": best_auc}]
        steps: list[int] = []
        for round_ in range(1, p.rounds + 1):
            started = time.perf_counter()
            self.progress(f"round {round_}: encrypted directions", (round_ - 1) / p.rounds)
            prob = sigmoid(f_fit + s[:n_fit])
            g = np.concatenate([prob - fit.y, np.zeros(n_val + n_test)])
            du = await self._round(round_, rows, g, steps[-1] if steps else None, total_features)
            step = encode_step(
                self.blind, _line_search(fit.y, f_fit + s[:n_fit], du[:n_fit], self.blind.max_step)
            )
            steps.append(step)
            s = s + decode_step(self.blind, step) * du
            if self.trace is not None:
                scale = float(1 << self.blind.direction_bits)
                self.trace.record_round(
                    rows.to_list_order(g), np.rint(rows.to_list_order(du) * scale), step
                )
            # Backfitting: the bank's trees re-learn on top of the new partner scores.
            booster = self._fit_bank(fit, val, s[:n_fit], s[n_fit : n_fit + n_val])
            f_fit = self._raw(booster, fit.x)
            val_auc = float(
                roc_auc_score(val.y, self._raw(booster, val.x) + s[n_fit : n_fit + n_val])
            )
            history.append(
                {
                    "round": round_,
                    "val_auc": val_auc,
                    "seconds": time.perf_counter() - started,
                    "bank_trees": float(booster.best_iteration or booster.num_trees()),
                    "step": decode_step(self.blind, step),
                }
            )
            log.info(
                "round %d: validation AUC %.4f, step %.3f",
                round_,
                val_auc,
                decode_step(self.blind, step),
            )
            if val_auc > best_auc:
                best_auc = val_auc
                best = (round_, booster, s.copy())
            elif round_ - best[0] >= p.patience:
                break
        best_round, booster, s = best
        if self.trace is not None:
            self.trace.best_round = best_round
        self.progress("final weights", 0.97)
        await self._finish(best_round, steps[:best_round])
        fallback = self._fit_bank(fit, val, np.zeros(n_fit), np.zeros(n_val))
        metrics = {
            "validation_auc": best_auc,
            "rounds": float(best_round),
            "rounds_run": float(len(history) - 1),
        }
        s_fit, s_val, s_test = s[:n_fit], s[n_fit : n_fit + n_val], s[n_fit + n_val :]
        additive = booster
        stacked = False
        if p.stack:
            stacker = self._fit_stacker(fit, val, s_fit, s_val)
            stacked_auc = float(roc_auc_score(val.y, self._stacked_logit(stacker, val.x, s_val)))
            metrics["validation_auc_stacked"] = stacked_auc
            if stacked_auc > best_auc + 1e-4:
                booster, stacked = stacker, True
        metrics["stacked"] = float(stacked)
        test_scores = None
        if n_test and test.y is not None:
            additive_logit = self._raw(additive, test.x) + s_test
            test_logit = self._stacked_logit(booster, test.x, s_test) if stacked else additive_logit
            test_scores = sigmoid(test_logit)
            metrics["test_auc"] = float(roc_auc_score(test.y, test_logit))
            metrics["test_auc_additive"] = float(roc_auc_score(test.y, additive_logit))
            if p.stack:
                metrics["test_auc_stacked"] = float(
                    roc_auc_score(test.y, self._stacked_logit(stacker, test.x, s_test))
                )
            metrics["test_auc_bank_only"] = float(
                roc_auc_score(test.y, self._raw(fallback, test.x))
            )
        self.progress("done", 1.0)
        return Trained(
            bins_per_feature=bins,
            booster=booster,
            fallback=fallback,
            packing=self._serving_packing(bins, float(np.abs(s).max(initial=0.0))),
            metrics=metrics,
            test_scores=test_scores,
            history=history,
            stacked=stacked,
            steps=[decode_step(self.blind, a) for a in steps[:best_round]],
        )

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

    def _fit_stacker(
        self, fit: BankRows, val: BankRows, s_fit: np.ndarray, s_val: np.ndarray
    ) -> lgb.Booster:
        """LightGBM on [bank features, aggregate partner score], on top of that score.
        The validation rows, which early-stop the stacker and decide whether it is kept,
        never contributed a gradient."""
        assert fit.y is not None and val.y is not None
        p = self.params
        params = {
            **p.lgb_params(),
            "num_leaves": p.stack_num_leaves,
            "learning_rate": p.stack_learning_rate,
        }
        train_set = lgb.Dataset(
            np.column_stack([fit.x, s_fit]), fit.y, init_score=s_fit, free_raw_data=False
        )
        valid_set = lgb.Dataset(
            np.column_stack([val.x, s_val]), val.y, init_score=s_val, reference=train_set
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

    # -- the protocol steps -----------------------------------------------------
    async def _start(self, rows: _Rows, ids: Sequence[str]) -> dict[str, list[int]]:
        listed = [ids[i] for i in rows.order.tolist()]
        # Sized as if every partner had PROVISIONAL_FEATURES features; the real counts
        # arrive with TrainReady and are checked against it.
        self.layout: ScoreLayout = score_layout(
            self.key.public.bits, self.blind, PROVISIONAL_FEATURES * len(self.partners)
        )
        await self.coord.send_all(
            {
                k: TrainStart(
                    session_id=self.coord.session_id,
                    partner=k,
                    participants=sorted(self.partners),
                    key_id=self.key.key_id,
                    public_key_n=self.key.public.to_b64(),
                    blind=self.blind,
                    layout=self.layout,
                    max_bins=self.params.max_bins,
                    tokens=[token_or_decoy(self.tokenizers[k], i) for i in listed],
                )
                for k in self.partners
            }
        )
        ready = await self.coord.collect(TrainReady)
        bins = {k: ready[k].bins_per_feature for k in self.partners}
        for k, counts in bins.items():
            if len(counts) > PROVISIONAL_FEATURES:
                raise TrainingError(
                    f"partner {k} has {len(counts)} features; at most {PROVISIONAL_FEATURES}"
                )
        return bins

    async def _round(
        self, round_: int, rows: _Rows, g: np.ndarray, previous: int | None, features: int
    ) -> np.ndarray:
        """Send a round's gradients (in list order); return the aggregate direction score
        of every row (fit, val, test order)."""
        n = int(self.key.public.n)
        plaintexts = encode_gradients(self.blind, rows.to_list_order(g), n)
        ciphertexts = [int_to_b64(c) for c in await self.pool.encrypt(plaintexts)]
        message = TrainRound(
            session_id=self.coord.session_id,
            round=round_,
            previous_step=previous,
            gradients=ciphertexts,
        )
        await self.coord.send_all(dict.fromkeys(self.partners, message))
        replies = await self.coord.collect(TrainScores, round_)
        public = self.key.public
        slots = self.layout.slots
        expected = -(-rows.total // slots)
        product = [mpz(1)] * expected
        for k in self.partners:
            if len(replies[k].ciphertexts) != expected:
                raise TrainingError(
                    f"partner {k} sent {len(replies[k].ciphertexts)} score ciphertexts, "
                    f"expected {expected}"
                )
            product = [
                a * public.validate(b64_to_int(c)) % public.nsquare
                for a, c in zip(product, replies[k].ciphertexts, strict=True)
            ]
        plain = await self.pool.decrypt(product)
        scores: list[float] = []
        try:
            for i, m in enumerate(plain):
                count = min(slots, rows.total - i * slots)
                scores.extend(decode_scores(self.layout, self.blind, m, count, features))
        except PackingOverflowError as exc:
            raise TrainingError(
                f"round {round_}: the direction scores do not decode: {exc}"
            ) from exc
        return rows.from_list_order(np.array(scores))

    async def _finish(self, best_round: int, steps: list[int]) -> None:
        """The partners' final weights: each sends its accumulated directions, masked;
        the bank drops their low bits and sends them back; each stores the result."""
        await self.coord.send_all(
            {
                k: TrainFinish(
                    session_id=self.coord.session_id,
                    status="done",
                    best_round=best_round,
                    steps=steps,
                )
                for k in self.partners
            }
        )
        replies = await self.coord.collect(TrainTruncate)
        public = self.key.public
        for k in self.partners:
            masked = [public.validate(b64_to_int(c)) for c in replies[k].ciphertexts]
            plain = await self.pool.decrypt(masked)
            if self.trace is not None:
                self.trace.truncated[k] = [int(x) for x in plain]
            try:
                dropped = [truncate(self.blind, int(x)) for x in plain]
            except PackingOverflowError as exc:
                raise TrainingError(f"partner {k}: a masked weight is out of range") from exc
            encrypted = await self.pool.encrypt(dropped)
            await self.coord.send(
                k,
                TrainTruncated(
                    session_id=self.coord.session_id,
                    ciphertexts=[int_to_b64(c) for c in encrypted],
                ),
            )
        await self.coord.collect(TrainDone)

    def _fit_bank(
        self, fit: BankRows, val: BankRows, s_fit: np.ndarray, s_val: np.ndarray
    ) -> lgb.Booster:
        """LightGBM on the bank's features on top of the partner scores, early-stopped on
        the validation rows (whose partner scores came back through the protocol)."""
        assert fit.y is not None and val.y is not None
        train_set = lgb.Dataset(fit.x, fit.y, init_score=s_fit, free_raw_data=False)
        valid_set = lgb.Dataset(val.x, val.y, init_score=s_val, reference=train_set)
        return lgb.train(
            self.params.lgb_params(),
            train_set,
            self.params.max_trees,
            valid_sets=[valid_set],
            callbacks=[lgb.early_stopping(self.params.early_stopping_trees, verbose=False)],
        )

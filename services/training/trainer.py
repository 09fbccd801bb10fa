"""Federated training v1, bank side (DESIGN.md section 3).

Model: ``logit = f_bank(x_bank) + sum_k u_k``, ``u_k = sum_j w_k[j, bin_j]``.

Each round costs two encrypted exchanges per partner:
1. the bank encrypts every fit row's packed (g, h) once; each partner returns its
   encrypted per-(feature, bin) sums;
2. the bank turns them into a damped Newton direction ``d = -G / (H + lambda)`` per
   partner, sends it as encrypted tables, and each partner returns the encrypted
   per-row scores of that direction, ``du_k``.
The bank then line-searches a step per partner on its own (``u_k += eta_k du_k`` is
exact, so no further exchange is needed), refits ``f_bank`` with LightGBM on top of
the partner scores (backfitting), and stops early on a validation fold carved from
the training rows. The bank learns per-bin gradient sums and per-row aggregate
partner scores (the privacy contract's allowance), never a partner's features, bin
edges or feature names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from schemas import (
    PackingSpec,
    TrainFinish,
    TrainGradients,
    TrainHistograms,
    TrainReady,
    TrainScores,
    TrainStart,
    TrainWeights,
)
from services.kernel.crypto.codec import b64_to_int, int_to_b64
from services.kernel.crypto.packing import encode_weight, packing_for, unpack
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.tokens import Tokenizer
from services.kernel.model.scoring import sigmoid
from services.training.coordinator import Coordinator
from services.training.gradients import decode_sums, encode, gradient_packing

log = logging.getLogger(__name__)


@dataclass
class TrainParams:
    rounds: int = 12
    l2: float = 10.0
    max_bins: int = 16
    validation_fraction: float = 0.2
    patience: int = 3
    seed: int = 0
    trees: int = 300
    num_leaves: int = 15
    learning_rate: float = 0.05
    min_child_samples: int = 50
    step_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)

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
    weights: dict[str, list[list[float]]]
    bins_per_feature: dict[str, list[int]]
    booster: lgb.Booster
    fallback: lgb.Booster
    packing: PackingSpec
    metrics: dict[str, float]
    test_scores: np.ndarray | None
    history: list[dict[str, float]] = field(default_factory=list)


def _total(arrays: Iterable[np.ndarray], n: int) -> np.ndarray:
    total = np.zeros(n)
    for array in arrays:
        total = total + array
    return total


def _logloss(y: np.ndarray, logit: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0, logit) - y * logit))


class FederatedTrainer:
    def __init__(
        self,
        coordinator: Coordinator,
        key: PrivateKey,
        tokenizers: dict[str, Tokenizer],
        params: TrainParams,
        progress: Callable[[str, float], None] | None = None,
    ) -> None:
        self.coord = coordinator
        self.key = key
        self.tokenizers = tokenizers
        self.partners = list(tokenizers)
        self.params = params
        self.progress = progress or (lambda _stage, _fraction: None)
        self.gpack = gradient_packing()

    async def fit(self, train: BankRows, test: BankRows | None = None) -> Trained:
        assert train.y is not None
        p = self.params
        fit_idx, val_idx = train_test_split(
            np.arange(len(train.ids)),
            test_size=p.validation_fraction,
            stratify=train.y,
            random_state=p.seed,
        )
        fit_idx, val_idx = np.sort(fit_idx), np.sort(val_idx)
        fit = BankRows([train.ids[i] for i in fit_idx], train.x[fit_idx], train.y[fit_idx])
        val = BankRows([train.ids[i] for i in val_idx], train.x[val_idx], train.y[val_idx])
        test = test or BankRows([], train.x[:0])
        eval_ids = val.ids + test.ids
        assert fit.y is not None and val.y is not None

        bins = await self._start(fit.ids, eval_ids)
        packing = packing_for(self.key.public.bits, [len(b) for b in bins.values()])
        self.packing = packing
        n_fit, n_val = len(fit.ids), len(val.ids)
        u_fit = {k: np.zeros(n_fit) for k in self.partners}
        u_eval = {k: np.zeros(len(eval_ids)) for k in self.partners}
        weights = {k: [[0.0] * b for b in bins[k]] for k in self.partners}

        booster = self._fit_bank(fit, np.zeros(n_fit))
        f_fit = np.asarray(booster.predict(fit.x, raw_score=True))
        f_val = booster.predict(val.x, raw_score=True)
        best = (-np.inf, 0, {k: [row[:] for row in w] for k, w in weights.items()})
        history: list[dict[str, float]] = []
        stale = 0
        for round_ in range(p.rounds):
            started = time.perf_counter()
            self.progress(f"round {round_ + 1}/{p.rounds}: encrypted gradients", round_ / p.rounds)
            logit = f_fit + _total(u_fit.values(), n_fit)
            prob = sigmoid(logit)
            g, h = prob - fit.y, prob * (1 - prob)
            sums = await self._histograms(round_, g, h)
            directions = {
                k: [
                    [
                        float(np.clip(-gs / (hs + p.l2), -packing.weight_clip, packing.weight_clip))
                        for gs, hs in zip(G, H, strict=True)
                    ]
                    for G, H in sums[k]
                ]
                for k in self.partners
            }
            self.progress(
                f"round {round_ + 1}/{p.rounds}: encrypted direction scores",
                (round_ + 0.5) / p.rounds,
            )
            du_fit, du_eval = await self._direction_scores(round_, directions, n_fit, len(eval_ids))
            steps = self._line_search(fit.y, f_fit, u_fit, du_fit)
            for k, eta in steps.items():
                u_fit[k] += eta * du_fit[k]
                u_eval[k] += eta * du_eval[k]
                weights[k] = [
                    [
                        float(np.clip(w + eta * d, -packing.weight_clip, packing.weight_clip))
                        for w, d in zip(wr, dr, strict=True)
                    ]
                    for wr, dr in zip(weights[k], directions[k], strict=True)
                ]
            # Backfitting: the bank's trees re-learn on top of the new partner scores.
            booster = self._fit_bank(fit, _total(u_fit.values(), n_fit))
            f_fit = np.asarray(booster.predict(fit.x, raw_score=True))
            f_val = booster.predict(val.x, raw_score=True)
            val_logit = f_val + _total((u[:n_val] for u in u_eval.values()), n_val)
            val_auc = float(roc_auc_score(val.y, val_logit))
            history.append(
                {
                    "round": round_ + 1,
                    "val_auc": val_auc,
                    "val_logloss": _logloss(val.y, val_logit),
                    "seconds": time.perf_counter() - started,
                    **{f"step_{k}": v for k, v in steps.items()},
                }
            )
            log.info("round %d: validation AUC %.4f, steps %s", round_ + 1, val_auc, steps)
            if val_auc > best[0] + 1e-4:
                best = (val_auc, round_ + 1, {k: [r[:] for r in w] for k, w in weights.items()})
                best_u = (
                    {k: v.copy() for k, v in u_fit.items()},
                    {k: v.copy() for k, v in u_eval.items()},
                )
                stale = 0
            else:
                stale += 1
                if stale >= p.patience:
                    break
        await self.coord.send_all(
            {k: TrainFinish(session_id=self.coord.session_id, status="done") for k in self.partners}
        )
        best_auc, best_round, best_weights = best
        u_fit, u_eval = best_u
        # Final bank model on fit + validation rows, partner scores as init_score.
        all_rows = BankRows(
            fit.ids + val.ids, np.vstack([fit.x, val.x]), np.concatenate([fit.y, val.y])
        )
        partner_all = np.concatenate(
            [_total(u_fit.values(), n_fit), _total((u[:n_val] for u in u_eval.values()), n_val)]
        )
        booster = self._fit_bank(all_rows, partner_all)
        fallback = self._fit_bank(all_rows, np.zeros(len(all_rows.ids)))
        metrics = {"validation_auc": best_auc, "rounds": float(best_round)}
        test_scores = None
        if test.ids and test.y is not None:
            test_logit = booster.predict(test.x, raw_score=True) + _total(
                (u[n_val:] for u in u_eval.values()), len(test.ids)
            )
            test_scores = sigmoid(test_logit)
            metrics["test_auc"] = float(roc_auc_score(test.y, test_logit))
            metrics["test_auc_bank_only"] = float(
                roc_auc_score(test.y, fallback.predict(test.x, raw_score=True))
            )
        self.progress("done", 1.0)
        return Trained(
            weights=best_weights,
            bins_per_feature=bins,
            booster=booster,
            fallback=fallback,
            packing=packing,
            metrics=metrics,
            test_scores=test_scores,
            history=history,
        )

    # -- the protocol steps -----------------------------------------------------
    async def _start(self, fit_ids: Sequence[str], eval_ids: Sequence[str]) -> dict[str, list[int]]:
        # A provisional packing (generous feature count) for the session; the final one
        # is derived from the partners' actual feature counts.
        session_packing = packing_for(self.key.public.bits, [64] * len(self.partners))
        self.session_packing = session_packing
        await self.coord.send_all(
            {
                k: TrainStart(
                    session_id=self.coord.session_id,
                    partner=k,
                    key_id=self.key.key_id,
                    public_key_n=self.key.public.to_b64(),
                    packing=session_packing,
                    gradient_packing=self.gpack,
                    max_bins=self.params.max_bins,
                    tokens=[self.tokenizers[k].token(i) for i in fit_ids],
                    eval_tokens=[self.tokenizers[k].token(i) for i in eval_ids],
                )
                for k in self.partners
            }
        )
        ready = await self.coord.collect(TrainReady)
        return {k: ready[k].bins_per_feature for k in self.partners}

    async def _histograms(
        self, round_: int, g: np.ndarray, h: np.ndarray
    ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        plaintexts = encode(self.gpack, g, h)
        ciphertexts = [int_to_b64(c) for c in self.key.encrypt_many(plaintexts)]
        message = TrainGradients(
            session_id=self.coord.session_id, round=round_, ciphertexts=ciphertexts
        )
        await self.coord.send_all(dict.fromkeys(self.partners, message))
        replies = await self.coord.collect(TrainHistograms, round_)
        out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for k, reply in replies.items():
            out[k] = [
                decode_sums(
                    self.gpack, self.key, [self.key.public.validate(b64_to_int(c)) for c in row]
                )
                for row in reply.ciphertexts
            ]
        return out

    async def _direction_scores(
        self, round_: int, directions: dict[str, list[list[float]]], n_fit: int, n_eval: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        spec = self.session_packing
        messages = {}
        for k, rows in directions.items():
            entries = [encode_weight(spec, d) for row in rows for d in row]
            enc = iter(self.key.encrypt_many(entries))
            tables = [[int_to_b64(next(enc)) for _ in row] for row in rows]
            messages[k] = TrainWeights(
                session_id=self.coord.session_id, round=round_, tables=tables
            )
        await self.coord.send_all(messages)
        replies = await self.coord.collect(TrainScores, round_)
        du_fit, du_eval = {}, {}
        total = n_fit + n_eval
        for k, reply in replies.items():
            features = {k: len(directions[k])}
            scores: list[float] = []
            for i, c in enumerate(reply.ciphertexts):
                count = min(spec.slots, total - i * spec.slots)
                plain = int(self.key.decrypt(self.key.public.validate(b64_to_int(c))))
                scores.extend(s.partner_score for s in unpack(spec, plain, count, features))
            if len(scores) != total:
                raise ValueError(f"partner {k} scored {len(scores)} rows, expected {total}")
            arr = np.array(scores)
            du_fit[k], du_eval[k] = arr[:n_fit], arr[n_fit:]
        return du_fit, du_eval

    def _line_search(
        self,
        y: np.ndarray,
        f_bank: np.ndarray,
        u: dict[str, np.ndarray],
        du: dict[str, np.ndarray],
    ) -> dict[str, float]:
        """One step length per partner, by coordinate search over a grid on the fit rows."""
        steps = dict.fromkeys(self.partners, 0.0)
        base = f_bank + _total(u.values(), len(y))
        for _ in range(2):
            for k in self.partners:
                others = base + _total((steps[j] * du[j] for j in self.partners if j != k), len(y))
                losses = [_logloss(y, others + eta * du[k]) for eta in self.params.step_grid]
                steps[k] = self.params.step_grid[int(np.argmin(losses))]
        return steps

    def _fit_bank(self, rows: BankRows, init_score: np.ndarray) -> lgb.Booster:
        assert rows.y is not None
        dataset = lgb.Dataset(rows.x, rows.y, init_score=init_score, free_raw_data=False)
        return lgb.train(self.params.lgb_params(), dataset, self.params.trees)

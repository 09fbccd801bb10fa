"""Federated training v1, bank side (DESIGN.md section 3).

Model: ``logit = f_bank(x_bank) + sum_k u_k``, ``u_k = sum_j w_k[j, bin_j]``.

Each round costs two encrypted exchanges per partner:
1. the bank encrypts every fit row's packed (g, h) once; each partner returns its
   encrypted per-(feature, bin) sums;
2. the bank turns them into an L2-regularised diagonal Newton direction
   ``d = -(G + lambda w) / (H + lambda)`` per partner, sends it as encrypted tables,
   and each partner returns the encrypted per-row scores of that direction, ``du_k``.
The bank then line-searches a step per partner on its own (``u_k += eta_k du_k`` is
exact, so no further exchange is needed), refits ``f_bank`` with LightGBM on top of
the partner scores (backfitting), and stops early on a validation fold carved from
the training rows. The bank learns per-bin gradient sums and per-row aggregate
partner scores (the privacy contract's allowance), never a partner's features, bin
edges or feature names.

With ``cross_fit``, K fold chains train next to the main model so that the stacker
learns from out-of-fold partner scores (``services/training/crossfit.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
from gmpy2 import mpz
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
from services.kernel.crypto.packing import DEFAULT_FLAG_BITS, encode_weight, packing_for, unpack
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.tokens import TokenSource, token_or_decoy
from services.kernel.model.scoring import sigmoid
from services.training.coordinator import Coordinator, TrainingError
from services.training.crossfit import (
    FoldLayout,
    decode_fold_scores,
    encode_fold_tables,
    fold_ids,
    fold_layout,
)
from services.training.gradients import (
    decode_field_plaintexts,
    encode_fields,
    gradient_packing,
    max_fields,
)
from services.training.parallel import CryptoPool

log = logging.getLogger(__name__)


@dataclass
class TrainParams:
    """Defaults from a plaintext study of the protocol on the reference split (docs/model.md):
    diagonal Newton directions with L2 weight 100 and an exact per-partner line search
    reach test AUC ~0.770 in about ten rounds."""

    rounds: int = 12
    l2: float = 100.0
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
    # Cross-fitting: the stacker learns from out-of-fold partner scores, each fit row's
    # from a fold chain trained without that row's fold (docs/model.md, "Cross-fitting").
    # Off by default: on the measured splits it did not beat in-sample scores.
    cross_fit: bool = False
    cross_fit_folds: int = 3
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
    weights: dict[str, list[list[float]]]
    bins_per_feature: dict[str, list[int]]
    booster: lgb.Booster
    fallback: lgb.Booster
    packing: PackingSpec
    metrics: dict[str, float]
    test_scores: np.ndarray | None
    history: list[dict[str, float]] = field(default_factory=list)
    stacked: bool = False
    # The partner score the stacker was trained on, per fit row (out of fold with
    # cross-fitting), with the fit rows' ids and, with cross-fitting, their folds.
    stack_scores: np.ndarray | None = None
    fit_ids: list[str] = field(default_factory=list)
    folds: np.ndarray | None = None


@dataclass
class _FoldChain:
    """Cross-fitting: the main model's training, round for round, on the fit rows
    outside one fold. It learns from no label of its fold's rows."""

    rows: np.ndarray  # over the fit rows: True where the chain fits
    w: dict[str, np.ndarray]
    s_fit: np.ndarray  # its aggregate partner score, every fit row
    s_val: np.ndarray
    booster: lgb.Booster
    f_fit: np.ndarray  # its booster's raw score, every fit row
    best_auc: float
    best_round: int = 0
    best_s_fit: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.best_s_fit = self.s_fit.copy()


def _total(arrays: Iterable[np.ndarray], n: int) -> np.ndarray:
    total = np.zeros(n)
    for array in arrays:
        total = total + array
    return total


def _logloss(y: np.ndarray, logit: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0, logit) - y * logit))


def _subset(rows: BankRows, mask: np.ndarray) -> BankRows:
    return BankRows(
        [i for i, keep in zip(rows.ids, mask.tolist(), strict=True) if keep],
        rows.x[mask],
        None if rows.y is None else rows.y[mask],
    )


def _newton_steps(
    y: np.ndarray, logit: np.ndarray, du: np.ndarray, quad: np.ndarray, lin: np.ndarray
) -> np.ndarray:
    """argmin_a  sum logloss(logit + du a) + a'(quad)a/2 + (lin)'a, by damped Newton with
    backtracking (at most 30 iterations); ``du`` has one column per unknown."""

    def objective(a: np.ndarray) -> float:
        z = logit + du @ a
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * a @ quad @ a + lin @ a)

    a = np.zeros(du.shape[1])
    value = objective(a)
    for _ in range(30):
        prob = sigmoid(logit + du @ a)
        grad = du.T @ (prob - y) + quad @ a + lin
        hess = (du * (prob * (1 - prob))[:, None]).T @ du + quad + 1e-9 * np.eye(len(a))
        step, scale = -np.linalg.solve(hess, grad), 1.0
        while objective(a + scale * step) > value + 1e-4 * scale * float(grad @ step):
            scale *= 0.5
            if scale < 1e-6:
                break
        a = a + scale * step
        previous, value = value, objective(a)
        if previous - value < 1e-9 * abs(previous):
            break
    return a


class FederatedTrainer:
    def __init__(
        self,
        coordinator: Coordinator,
        key: PrivateKey,
        tokenizers: dict[str, TokenSource],
        params: TrainParams,
        progress: Callable[[str, float], None] | None = None,
        pool: CryptoPool | None = None,
    ) -> None:
        self.coord = coordinator
        self.key = key
        self.pool = pool or CryptoPool(key)  # without workers: runs in this process
        self.tokenizers = tokenizers
        self.partners = list(tokenizers)
        self.params = params
        self.progress = progress or (lambda _stage, _fraction: None)
        self.gpack = gradient_packing()
        self.cross_session = f"{coordinator.session_id}.xf"

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
        cross_fit = p.stack and p.cross_fit
        if cross_fit and not 2 <= p.cross_fit_folds < max_fields(self.gpack, self.key.public.bits):
            raise ValueError(
                f"cross_fit_folds must be 2 to "
                f"{max_fields(self.gpack, self.key.public.bits) - 1}, got {p.cross_fit_folds}"
            )
        fit_idx, val_idx = self._split(train)
        fit = BankRows([train.ids[i] for i in fit_idx], train.x[fit_idx], train.y[fit_idx])
        val = BankRows([train.ids[i] for i in val_idx], train.x[val_idx], train.y[val_idx])
        test = test or BankRows([], train.x[:0])
        eval_ids = val.ids + test.ids
        assert fit.y is not None and val.y is not None
        n_fit, n_val, n_test = len(fit.ids), len(val.ids), len(test.ids)

        bins = await self._start(fit.ids, eval_ids)
        packing = packing_for(self.key.public.bits, [len(b) for b in bins.values()])
        folds: np.ndarray | None = None
        layout: FoldLayout | None = None
        chains: list[_FoldChain] = []
        if cross_fit:
            folds = fold_ids(n_fit, p.cross_fit_folds, p.seed)
            layout = await self._start_cross_fit(bins, n_val)
            chains = [self._new_chain(fit, val, folds != f, bins) for f in range(p.cross_fit_folds)]
        # Per partner: flat weights w, per-row scores on fit rows and on eval rows.
        w = {k: np.zeros(sum(bins[k])) for k in self.partners}
        u_fit = {k: np.zeros(n_fit) for k in self.partners}
        u_eval = {k: np.zeros(n_val + n_test) for k in self.partners}

        booster = self._fit_bank(fit, val, np.zeros(n_fit), np.zeros(n_val))
        f_fit = self._raw(booster, fit.x)
        f_val = self._raw(booster, val.x)
        best_auc = float(roc_auc_score(val.y, f_val))
        best = (
            0,
            booster,
            {k: v.copy() for k, v in w.items()},
            {k: v.copy() for k, v in u_eval.items()},
            {k: v.copy() for k, v in u_fit.items()},
        )
        history: list[dict[str, float]] = [{"round": 0, "val_auc": best_auc}]
        for round_ in range(1, p.rounds + 1):
            started = time.perf_counter()
            self.progress(f"round {round_}: encrypted gradient sums", (round_ - 1) / p.rounds)
            logit = f_fit + _total(u_fit.values(), n_fit)
            prob = sigmoid(logit)
            # Field 0: the main model's (g, h); field 1 + c: fold chain c's, zero on its
            # fold's rows. One ciphertext per row carries them all.
            g_fields, h_fields = [prob - fit.y], [prob * (1 - prob)]
            for chain in chains:
                q = sigmoid(chain.f_fit + chain.s_fit)
                g_fields.append(np.where(chain.rows, q - fit.y, 0.0))
                h_fields.append(np.where(chain.rows, q * (1 - q), 0.0))
            sums = await self._histograms(round_, np.array(g_fields), np.array(h_fields))
            directions = {
                k: self._direction(sums[0][k], w[k], packing.weight_clip) for k in self.partners
            }
            chain_directions = [
                {
                    k: self._direction(sums[1 + c][k], chain.w[k], layout.packing.weight_clip)
                    for k in self.partners
                }
                for c, chain in enumerate(chains)
                if layout is not None
            ]
            self.progress(f"round {round_}: encrypted direction scores", (round_ - 0.5) / p.rounds)
            tables = self._unflatten(directions, bins)
            await self._send_directions(round_, tables)
            if layout is not None:  # scored by the partners while the bank works on these
                await self._send_fold_directions(round_, layout, chain_directions, bins)
            du_fit, du_eval = await self._direction_scores(round_, tables, n_fit, n_val + n_test)
            steps = self._line_search(fit.y, logit, w, directions, du_fit)
            for i, k in enumerate(self.partners):
                # Not clipped: the scores below move by exactly steps[i] * du, so the
                # weights must too. The final layout's clip is sized to the weights.
                w[k] = w[k] + steps[i] * directions[k]
                u_fit[k] += steps[i] * du_fit[k]
                u_eval[k] += steps[i] * du_eval[k]
            # Backfitting: the bank's trees re-learn on top of the new partner scores.
            s_fit = _total(u_fit.values(), n_fit)
            s_val = _total((u[:n_val] for u in u_eval.values()), n_val)
            booster = self._fit_bank(fit, val, s_fit, s_val)
            f_fit = self._raw(booster, fit.x)
            val_auc = float(roc_auc_score(val.y, self._raw(booster, val.x) + s_val))
            if layout is not None:
                du = await self._fold_scores(round_, layout, n_fit + n_val)
                for c, chain in enumerate(chains):
                    self._step_chain(
                        chain, fit, val, chain_directions[c], du[:n_fit, c], du[n_fit:, c], round_
                    )
            history.append(
                {
                    "round": round_,
                    "val_auc": val_auc,
                    "seconds": time.perf_counter() - started,
                    "bank_trees": float(booster.best_iteration or booster.num_trees()),
                    **{f"step_{k}": float(steps[i]) for i, k in enumerate(self.partners)},
                    **(
                        {"cross_fit_val_auc": float(np.mean([c.best_auc for c in chains]))}
                        if chains
                        else {}
                    ),
                }
            )
            log.info("round %d: validation AUC %.4f, steps %s", round_, val_auc, steps.round(3))
            if val_auc > best_auc:
                best_auc = val_auc
                best = (
                    round_,
                    booster,
                    {k: v.copy() for k, v in w.items()},
                    {k: v.copy() for k, v in u_eval.items()},
                    {k: v.copy() for k, v in u_fit.items()},
                )
            elif round_ - best[0] >= p.patience:
                break
        for session in [self.coord.session_id, *([self.cross_session] if chains else [])]:
            await self.coord.send_all(
                {k: TrainFinish(session_id=session, status="done") for k in self.partners}
            )
        best_round, booster, best_w, best_u_eval, best_u_fit = best
        largest = max((float(np.abs(v).max()) for v in best_w.values() if v.size), default=0.0)
        packing = packing_for(
            self.key.public.bits,
            [len(b) for b in bins.values()],
            weight_clip=max(packing.weight_clip, float(np.ceil(largest))),
            flag_bits=p.flag_bits,
        )
        fallback = self._fit_bank(fit, val, np.zeros(n_fit), np.zeros(n_val))
        metrics = {
            "validation_auc": best_auc,
            "rounds": float(best_round),
            "rounds_run": float(len(history) - 1),
        }
        s_fit = _total(best_u_fit.values(), n_fit)
        s_val = _total((u[:n_val] for u in best_u_eval.values()), n_val)
        s_test = _total((u[n_val:] for u in best_u_eval.values()), n_test)
        additive = booster
        stacked = False
        # The stacker's partner-score feature on the fit rows: in-sample, or out of fold.
        stack_scores = s_fit
        in_sample_stacker: lgb.Booster | None = None
        if chains:
            assert folds is not None
            stack_scores = np.empty(n_fit)
            for f, chain in enumerate(chains):
                stack_scores[folds == f] = chain.best_s_fit[folds == f]
            metrics["cross_fit_folds"] = float(len(chains))
            metrics["cross_fit_validation_auc"] = float(np.mean([c.best_auc for c in chains]))
            metrics["fit_auc_partner_score"] = float(roc_auc_score(fit.y, s_fit))
            metrics["fit_auc_partner_score_cross_fit"] = float(roc_auc_score(fit.y, stack_scores))
        if p.stack:
            stacker = self._fit_stacker(fit, val, stack_scores, s_val)
            stacked_auc = float(roc_auc_score(val.y, self._stacked_logit(stacker, val.x, s_val)))
            metrics["validation_auc_stacked"] = stacked_auc
            if stacked_auc > best_auc + 1e-4:
                booster, stacked = stacker, True
            if chains and n_test and test.y is not None:
                # The comparison that decides the default, on the same run: the
                # stacker trained on in-sample scores instead.
                in_sample_stacker = self._fit_stacker(fit, val, s_fit, s_val)
                metrics["validation_auc_stacked_in_sample"] = float(
                    roc_auc_score(val.y, self._stacked_logit(in_sample_stacker, val.x, s_val))
                )
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
            if in_sample_stacker is not None:
                metrics["test_auc_stacked_in_sample"] = float(
                    roc_auc_score(test.y, self._stacked_logit(in_sample_stacker, test.x, s_test))
                )
            metrics["test_auc_bank_only"] = float(
                roc_auc_score(test.y, self._raw(fallback, test.x))
            )
        self.progress("done", 1.0)
        weights = {
            k: [list(map(float, row)) for row in self._unflatten({k: best_w[k]}, bins)[k]]
            for k in self.partners
        }
        return Trained(
            weights=weights,
            bins_per_feature=bins,
            booster=booster,
            fallback=fallback,
            packing=packing,
            metrics=metrics,
            test_scores=test_scores,
            history=history,
            stacked=stacked,
            stack_scores=stack_scores if p.stack else None,
            fit_ids=fit.ids,
            folds=folds,
        )

    @staticmethod
    def _unflatten(
        flat: dict[str, np.ndarray], bins: dict[str, list[int]]
    ) -> dict[str, list[list[float]]]:
        out = {}
        for k, values in flat.items():
            rows, start = [], 0
            for count in bins[k]:
                rows.append([float(v) for v in values[start : start + count]])
                start += count
            out[k] = rows
        return out

    def _fit_stacker(
        self, fit: BankRows, val: BankRows, s_fit: np.ndarray, s_val: np.ndarray
    ) -> lgb.Booster:
        """LightGBM on [bank features, aggregate partner score], on top of that score.

        ``s_fit`` is the fit rows' partner score: in-sample (the main model's, fitted on
        those rows' labels) or, with cross-fitting, out of fold. The validation rows',
        which early-stop the stacker and decide whether it is kept, never contributed a
        gradient either way."""
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

    def _direction(
        self, sums: tuple[np.ndarray, np.ndarray], w: np.ndarray, clip: float
    ) -> np.ndarray:
        """The diagonal Newton direction -(G + l2 w) / (H + l2), clipped."""
        G, H = sums
        lam = self.params.l2
        return np.clip(-(G + lam * w) / (H + lam), -clip, clip)

    # -- cross-fitting ----------------------------------------------------------
    def _new_chain(
        self, fit: BankRows, val: BankRows, rows: np.ndarray, bins: dict[str, list[int]]
    ) -> _FoldChain:
        """Round 0 of a fold chain: its bank booster on its rows, no partner score."""
        assert val.y is not None
        n_fit, n_val = len(fit.ids), len(val.ids)
        booster = self._fit_bank(
            _subset(fit, rows), val, np.zeros(int(rows.sum())), np.zeros(n_val)
        )
        return _FoldChain(
            rows=rows,
            w={k: np.zeros(sum(bins[k])) for k in self.partners},
            s_fit=np.zeros(n_fit),
            s_val=np.zeros(n_val),
            booster=booster,
            f_fit=self._raw(booster, fit.x),
            best_auc=float(roc_auc_score(val.y, self._raw(booster, val.x))),
        )

    def _step_chain(
        self,
        chain: _FoldChain,
        fit: BankRows,
        val: BankRows,
        d: dict[str, np.ndarray],
        du_fit: np.ndarray,
        du_val: np.ndarray,
        round_: int,
    ) -> None:
        """One round of a fold chain, as the main model's but on its own rows: an exact
        step along its directions (one step for all partners: the bank decrypts only the
        chain's aggregate score), a backfit of its booster, its own validation AUC."""
        assert fit.y is not None and val.y is not None
        lam = self.params.l2
        rows = chain.rows
        logit = chain.f_fit + chain.s_fit
        Q = np.array([[lam * sum(float(d[k] @ d[k]) for k in self.partners)]])
        q = np.array([lam * sum(float(chain.w[k] @ d[k]) for k in self.partners)])
        step = float(_newton_steps(fit.y[rows], logit[rows], du_fit[rows, None], Q, q)[0])
        for k in self.partners:
            chain.w[k] = chain.w[k] + step * d[k]
        chain.s_fit = chain.s_fit + step * du_fit
        chain.s_val = chain.s_val + step * du_val
        chain.booster = self._fit_bank(_subset(fit, rows), val, chain.s_fit[rows], chain.s_val)
        chain.f_fit = self._raw(chain.booster, fit.x)
        auc = float(roc_auc_score(val.y, self._raw(chain.booster, val.x) + chain.s_val))
        if auc > chain.best_auc:
            chain.best_auc, chain.best_round = auc, round_
            chain.best_s_fit = chain.s_fit.copy()

    async def _start_cross_fit(self, bins: dict[str, list[int]], n_val: int) -> FoldLayout:
        """The second session: the same fit rows (so the partners fit the same bins) and
        the validation rows, scored with the fold layout."""
        layout = fold_layout(
            self.key.public.bits,
            [len(bins[k]) for k in self.partners],
            self.params.cross_fit_folds,
            clip=self.session_packing.weight_clip,
        )
        self.coord.add_session(self.cross_session)
        await self.coord.send_all(
            {
                k: TrainStart(
                    session_id=self.cross_session,
                    partner=k,
                    key_id=self.key.key_id,
                    public_key_n=self.key.public.to_b64(),
                    packing=layout.packing,
                    gradient_packing=self.gpack,
                    max_bins=self.params.max_bins,
                    tokens=self._tokens[k][0],
                    eval_tokens=self._tokens[k][1][:n_val],
                )
                for k in self.partners
            }
        )
        ready = await self.coord.collect(TrainReady, session_id=self.cross_session)
        for k in self.partners:
            if ready[k].bins_per_feature != bins[k]:
                raise TrainingError(f"partner {k} binned the cross-fit session differently")
        return layout

    async def _send_fold_directions(
        self,
        round_: int,
        layout: FoldLayout,
        directions: list[dict[str, np.ndarray]],
        bins: dict[str, list[int]],
    ) -> None:
        messages = {}
        for k in self.partners:
            tables = [self._unflatten({k: d[k]}, bins)[k] for d in directions]
            entries = encode_fold_tables(layout, tables)
            enc = iter(self.key.encrypt_many([e for row in entries for e in row]))
            messages[k] = TrainWeights(
                session_id=self.cross_session,
                round=round_,
                tables=[[int_to_b64(next(enc)) for _ in row] for row in entries],
            )
        await self.coord.send_all(messages)

    async def _fold_scores(self, round_: int, layout: FoldLayout, rows: int) -> np.ndarray:
        """Every fold chain's aggregate direction score, shape (rows, folds): the product
        of the partners' answers, decrypted once per ciphertext."""
        replies = await self.coord.collect(TrainScores, round_, self.cross_session)
        public = self.key.public
        slots = layout.packing.slots
        expected = -(-rows // slots)
        product = [mpz(1)] * expected
        for k in self.partners:
            ciphertexts = replies[k].ciphertexts
            if len(ciphertexts) != expected:
                raise TrainingError(
                    f"partner {k} sent {len(ciphertexts)} cross-fit scores, expected {expected}"
                )
            product = [
                a * public.validate(b64_to_int(c)) % public.nsquare
                for a, c in zip(product, ciphertexts, strict=True)
            ]
        plain = await self.pool.decrypt(product)
        return np.vstack(
            [
                decode_fold_scores(layout, m, min(slots, rows - i * slots))
                for i, m in enumerate(plain)
            ]
        )

    # -- the protocol steps -----------------------------------------------------
    async def _start(self, fit_ids: Sequence[str], eval_ids: Sequence[str]) -> dict[str, list[int]]:
        # A provisional packing (generous feature count) for the session; the final one
        # is derived from the partners' actual feature counts.
        # Training's scores carry no blacklist field: the narrowest one, the most slots.
        session_packing = packing_for(self.key.public.bits, [64] * len(self.partners), flag_bits=1)
        self.session_packing = session_packing
        # Kept for the cross-fit session, which must bin exactly the same rows.
        self._tokens = {
            k: (
                [token_or_decoy(self.tokenizers[k], i) for i in fit_ids],
                [token_or_decoy(self.tokenizers[k], i) for i in eval_ids],
            )
            for k in self.partners
        }
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
                    tokens=self._tokens[k][0],
                    eval_tokens=self._tokens[k][1],
                )
                for k in self.partners
            }
        )
        ready = await self.coord.collect(TrainReady)
        self.bins = {k: ready[k].bins_per_feature for k in self.partners}
        return self.bins

    async def _histograms(
        self, round_: int, g: np.ndarray, h: np.ndarray
    ) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        """``g``, ``h`` of shape (fields, fit rows); per field, per partner, the flat
        per-(feature, bin) sums (G, H)."""
        fields = g.shape[0]
        plaintexts = encode_fields(self.gpack, g, h)
        ciphertexts = [int_to_b64(c) for c in await self.pool.encrypt(plaintexts)]
        message = TrainGradients(
            session_id=self.coord.session_id, round=round_, ciphertexts=ciphertexts
        )
        await self.coord.send_all(dict.fromkeys(self.partners, message))
        replies = await self.coord.collect(TrainHistograms, round_)
        public = self.key.public
        for k in self.partners:
            if [len(row) for row in replies[k].ciphertexts] != self.bins[k]:
                raise TrainingError(f"partner {k} sent histograms for other bins")
        flat = [
            public.validate(b64_to_int(c))
            for k in self.partners
            for row in replies[k].ciphertexts
            for c in row
        ]
        plain = iter(await self.pool.decrypt(flat))
        out: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(fields)]
        n = int(public.n)
        for k in self.partners:
            sums = decode_field_plaintexts(
                self.gpack, n, [next(plain) for _ in range(sum(self.bins[k]))], fields
            )
            for t in range(fields):
                out[t][k] = sums[t]
        return out

    async def _send_directions(self, round_: int, directions: dict[str, list[list[float]]]) -> None:
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

    async def _direction_scores(
        self, round_: int, directions: dict[str, list[list[float]]], n_fit: int, n_eval: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each partner's per-row scores of the directions sent for ``round_``."""
        spec = self.session_packing
        replies = await self.coord.collect(TrainScores, round_)
        du_fit, du_eval = {}, {}
        total = n_fit + n_eval
        public = self.key.public
        plain_by_partner = {}
        for k in self.partners:
            flat = [public.validate(b64_to_int(c)) for c in replies[k].ciphertexts]
            plain_by_partner[k] = await self.pool.decrypt(flat)
        for k in self.partners:
            features = {k: len(directions[k])}
            scores: list[float] = []
            for i, plain in enumerate(plain_by_partner[k]):
                count = min(spec.slots, total - i * spec.slots)
                scores.extend(s.partner_score for s in unpack(spec, plain, count, features))
            if len(scores) != total:
                raise ValueError(f"partner {k} scored {len(scores)} rows, expected {total}")
            arr = np.array(scores)
            du_fit[k], du_eval[k] = arr[:n_fit], arr[n_fit:]
        return du_fit, du_eval

    def _line_search(
        self,
        y: np.ndarray,
        logit: np.ndarray,
        w: dict[str, np.ndarray],
        d: dict[str, np.ndarray],
        du: dict[str, np.ndarray],
    ) -> np.ndarray:
        """Exact step per partner: argmin_a  logloss(logit + D a) + l2/2 * sum_k |w_k + a_k d_k|^2,
        by damped Newton on K unknowns. The bank can do this alone because scores are
        linear in the weights: a step a_k moves partner k's scores by a_k * du_k."""
        lam = self.params.l2
        D = np.column_stack([du[k] for k in self.partners])
        Q = np.diag([lam * float(d[k] @ d[k]) for k in self.partners])
        q = np.array([lam * float(w[k] @ d[k]) for k in self.partners])
        return _newton_steps(y, logit, D, Q, q)

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

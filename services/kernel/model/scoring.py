"""The bank's scorer: LightGBM on bank features plus the decrypted partner score.

``logit = f_bank(x_bank) + s`` (backfitting) or ``logit = f(x_bank, s) + s`` when
the booster was trained stacked (on the bank's features and s, on top of s); the
bank-only fallback booster scores degraded batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightgbm as lgb
import numpy as np

from schemas import BankBundle


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


# A batch is at most a few hundred rows: one thread beats waking OpenMP's pool per
# call, and leaves the other cores to the rest of the pipeline.


class BankScorer:
    def __init__(self, bundle: BankBundle) -> None:
        self.bundle = bundle
        self.features = list(bundle.bank_features)
        self.booster = lgb.Booster(model_str=bundle.booster)
        self.fallback = lgb.Booster(model_str=bundle.fallback_booster)
        self.features_per_partner = {
            card.partner: len(card.bins_per_feature) for card in bundle.partners
        }

    def matrix(self, rows: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        x = np.full((len(rows), len(self.features)), np.nan, dtype=np.float64)
        for i, row in enumerate(rows):
            for j, name in enumerate(self.features):
                value = row.get(name)
                if value is not None:
                    x[i, j] = value
        return x

    def score(self, x_bank: np.ndarray, partner_score: np.ndarray) -> np.ndarray:
        """Probability of default from bank features and the aggregate partner score."""
        if self.bundle.stacked:
            # Trained on top of the partner score (init_score), so add it back.
            features = np.column_stack([x_bank, partner_score])
            raw = self.booster.predict(features, raw_score=True, num_threads=1) + partner_score
        else:
            raw = self.booster.predict(x_bank, raw_score=True, num_threads=1) + partner_score
        return np.asarray(sigmoid(np.asarray(raw, dtype=np.float64)))

    def score_fallback(self, x_bank: np.ndarray) -> np.ndarray:
        raw = self.fallback.predict(x_bank, raw_score=True, num_threads=1)
        return np.asarray(sigmoid(np.asarray(raw, dtype=np.float64)))

"""The partner's private bin edges. They never leave the partner's process; the bank
only ever learns how many bins each (unnamed) feature has.

Features with few distinct values get one bin per value; others get quantile bins.
The last bin of every feature is the 'missing' bin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Binning:
    edges: tuple[tuple[float, ...], ...]

    @property
    def bins_per_feature(self) -> list[int]:
        # len(edges) + 1 value bins, plus the missing bin
        return [len(e) + 2 for e in self.edges]

    @classmethod
    def fit(cls, values: np.ndarray, max_bins: int) -> Binning:
        edges: list[tuple[float, ...]] = []
        for column in values.T:
            present = column[~np.isnan(column)]
            unique = np.unique(present)
            if len(unique) <= 1:
                edges.append(())
            elif len(unique) <= max_bins:
                edges.append(tuple(float(x) for x in (unique[1:] + unique[:-1]) / 2))
            else:
                qs = np.quantile(present, np.linspace(0, 1, max_bins + 1)[1:-1])
                edges.append(tuple(float(x) for x in np.unique(qs)))
        return cls(tuple(edges))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Bin indices, shape (n, J); NaN goes to each feature's missing bin."""
        if values.ndim != 2 or values.shape[1] != len(self.edges):
            raise ValueError(f"expected {len(self.edges)} feature columns, got {values.shape}")
        out = np.empty(values.shape, dtype=np.int64)
        for j, edges in enumerate(self.edges):
            column = values[:, j]
            bins = np.searchsorted(np.asarray(edges, dtype=np.float64), column, side="right")
            bins[np.isnan(column)] = len(edges) + 1
            out[:, j] = bins
        return out

    def to_json(self) -> str:
        return json.dumps({"edges": [list(e) for e in self.edges]})

    @classmethod
    def from_json(cls, text: str) -> Binning:
        return cls(tuple(tuple(float(x) for x in e) for e in json.loads(text)["edges"]))

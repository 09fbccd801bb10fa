"""What the bank holds after a training session, written down for the privacy audit.

A curious bank keeps everything it computes and decrypts (docs/design.md §1b). ``fedscreen
train --trace-dir DIR`` writes exactly that to ``DIR/trace.npz``, so the audit's attacks
(services/audit) work from the bank's real view of a real run rather than from a
reconstruction: the ids in the order the partners saw them, each round's gradients and
step, and each round's decrypted per-row direction scores, which are sums over every
partner of the session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas.training import BlindTraining


@dataclass
class TrainingTrace:
    ids: list[str]
    """Row ids in the order of the session's token list."""
    blind: BlindTraining
    bins_per_feature: dict[str, list[int]]
    held_out: list[bool]
    """Per list position: the row carried a zero gradient (validation or test)."""
    gradients: list[np.ndarray] = field(default_factory=list)
    """Per round: g in [-1, 1] per list position (0 where held out)."""
    scores: list[np.ndarray] = field(default_factory=list)
    """Per round: the decrypted aggregate direction score per list position, as the
    integer the slots carry (scale 2^V, offset removed)."""
    steps: list[int] = field(default_factory=list)
    best_round: int = 0
    truncated: dict[str, list[int]] = field(default_factory=dict)
    """Per partner: the masked values the bank decrypted to truncate the final weights."""

    def record_round(self, g: np.ndarray, scores: np.ndarray, step: int) -> None:
        self.gradients.append(np.asarray(g, dtype=np.float64))
        self.scores.append(np.asarray(scores, dtype=np.int64))
        self.steps.append(int(step))

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "trace.npz"
        meta = {
            "ids": self.ids,
            "blind": self.blind.model_dump(),
            "bins_per_feature": self.bins_per_feature,
            "held_out": self.held_out,
            "steps": self.steps,
            "best_round": self.best_round,
            "truncated": {k: [str(v) for v in values] for k, values in self.truncated.items()},
        }
        np.savez_compressed(
            path,
            meta=np.array(json.dumps(meta)),
            gradients=np.array(self.gradients).reshape(len(self.gradients), len(self.ids)),
            scores=np.array(self.scores).reshape(len(self.scores), len(self.ids)),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> TrainingTrace:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            gradients, scores = data["gradients"], data["scores"]
        return cls(
            ids=list(meta["ids"]),
            blind=BlindTraining.model_validate(meta["blind"]),
            bins_per_feature={k: list(v) for k, v in meta["bins_per_feature"].items()},
            held_out=list(meta["held_out"]),
            gradients=list(gradients),
            scores=list(scores),
            steps=list(meta["steps"]),
            best_round=int(meta["best_round"]),
            truncated={k: [int(v) for v in values] for k, values in meta["truncated"].items()},
        )

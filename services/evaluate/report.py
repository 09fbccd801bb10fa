"""The evaluation's numbers, as written to ``report.json`` (and shown in ``report.html``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.evaluate.outcome import Outcome

FEDERATED, FLOOR, CEILING = "federated", "bank_only_floor", "pooled_ceiling"
TITLES = {
    FEDERATED: "federated (through the protocol)",
    FLOOR: "bank only, LightGBM (floor)",
    CEILING: "all columns pooled, LightGBM (ceiling)",
}


@dataclass
class ModelScore:
    auc: float
    ks: float
    columns: list[str]


@dataclass
class Training:
    model_version: str
    seconds: float
    rounds_max: int
    rounds_run: int
    rounds_kept: int
    validation_auc: float
    test_auc: float | None  # as the training run computed it (from logits)
    bytes_sent_to_partner: dict[str, int]
    bytes_received_from_partner: dict[str, int]
    # Every metric the training run reported (stacking, cross-fitting, per-model AUCs).
    metrics: dict[str, float] = field(default_factory=dict)

    def bytes_per_party(self) -> dict[str, dict[str, int]]:
        """What each party put on (sent) and took off (received) Kafka in the session."""
        parties = {
            "bank": {
                "sent": sum(self.bytes_sent_to_partner.values()),
                "received": sum(self.bytes_received_from_partner.values()),
            }
        }
        for name, sent_to in self.bytes_sent_to_partner.items():
            parties[name] = {
                "sent": self.bytes_received_from_partner.get(name, 0),
                "received": sent_to,
            }
        return parties


@dataclass
class Evaluation:
    data: str
    id_column: str
    label_column: str
    seed: int
    test_size: float
    rows: int
    train_rows: int
    test_rows: int
    train_positive_rate: float
    test_positive_rate: float
    bank_columns: list[str]
    partner_columns: dict[str, list[str]]
    models: dict[str, ModelScore]  # FEDERATED, FLOOR, CEILING
    training: Training
    reference_lightgbm: dict[str, object]
    wall_seconds: float = 0.0
    # At equal release volume: the bad rate among released customers per model.
    outcome: Outcome | None = None

    def to_json(self) -> dict[str, Any]:
        t = self.training
        return {
            "models": {
                key: {"auc": m.auc, "ks": m.ks, "columns": m.columns, "title": TITLES[key]}
                for key, m in self.models.items()
            },
            "training": {
                "model_version": t.model_version,
                "seconds": t.seconds,
                "rounds_max": t.rounds_max,
                "rounds_run": t.rounds_run,
                "rounds_kept": t.rounds_kept,
                "validation_auc": t.validation_auc,
                "test_auc_reported_by_training": t.test_auc,
                "metrics": t.metrics,
            },
            "bytes": {
                "sent_to_partner": t.bytes_sent_to_partner,
                "received_from_partner": t.bytes_received_from_partner,
                "per_party": t.bytes_per_party(),
            },
            "split": {
                "rows": self.rows,
                "train_rows": self.train_rows,
                "test_rows": self.test_rows,
                "test_size": self.test_size,
                "seed": self.seed,
                "stratified_on": self.label_column,
                "train_positive_rate": self.train_positive_rate,
                "test_positive_rate": self.test_positive_rate,
            },
            "seed": self.seed,
            "columns": {
                "id": self.id_column,
                "label": self.label_column,
                "bank": self.bank_columns,
                "partners": self.partner_columns,
            },
            "reference_lightgbm": self.reference_lightgbm,
            "data": self.data,
            "wall_seconds": self.wall_seconds,
            **({"outcome": self.outcome.to_json()} if self.outcome is not None else {}),
        }

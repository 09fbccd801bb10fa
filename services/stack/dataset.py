"""The bundled UCI credit data, split vertically as in data/README.md.

Blacklists do not exist in the public data, so each partner's list is synthetic and
documented: "repayments" flags customers 4+ months behind in any month; "payments"
flags a seeded 0.5 % sample (reported fraud). Consent (85 %) and the campaign of
each candidate are seeded too, so every run of the demo sees the same stream.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[2]
DATA_CSV = ROOT / "data" / "UCI_Credit_Card.csv"
ID = "ID"
LABEL = "default.payment.next.month"
BANK_FEATURES = ["LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE"]
PAY_STATUS = ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]
BILLS = [f"BILL_AMT{i}" for i in range(1, 7)]
PAYMENTS = [f"PAY_AMT{i}" for i in range(1, 7)]
REFERENCE_PARTNERS: dict[str, list[str]] = {
    "repayments": PAY_STATUS + BILLS,
    "payments": PAYMENTS,
}
CAMPAIGNS = ("card-upgrade", "personal-loan")


@dataclass
class Table:
    columns: list[str]
    rows: np.ndarray  # float, (n, len(columns))

    def column(self, name: str) -> np.ndarray:
        return self.rows[:, self.columns.index(name)]

    def select(self, names: list[str]) -> np.ndarray:
        return self.rows[:, [self.columns.index(n) for n in names]]

    def take(self, index: np.ndarray) -> Table:
        return Table(self.columns, self.rows[index])

    @property
    def ids(self) -> list[str]:
        return [str(int(v)) for v in self.column(ID)]


def load(path: Path = DATA_CSV) -> Table:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        columns = next(reader)
        rows = np.array([[float(v) for v in row] for row in reader], dtype=np.float64)
    return Table(columns, rows)


def split(table: Table, test_size: float = 0.3, seed: int = 0) -> tuple[Table, Table]:
    """The reference split: stratified on the label, reproducible from the seed."""
    index = np.arange(len(table.rows))
    train, test = train_test_split(
        index, test_size=test_size, stratify=table.column(LABEL), random_state=seed
    )
    return table.take(np.sort(train)), table.take(np.sort(test))


def blacklist(table: Table, partner: str, seed: int = 0) -> np.ndarray:
    if partner == "repayments":
        return np.asarray(table.select(PAY_STATUS).max(axis=1) >= 4)
    rng = np.random.default_rng(seed + sum(map(ord, partner)))
    return rng.random(len(table.rows)) < 0.005


def consent(table: Table, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 1).random(len(table.rows)) < 0.85


def campaigns(table: Table, seed: int = 0) -> list[str]:
    draws = np.random.default_rng(seed + 2).random(len(table.rows))
    return [CAMPAIGNS[0] if d < 0.6 else CAMPAIGNS[1] for d in draws]


def write_csv(path: Path, header: list[str], rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_fmt(v) for v in row])


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))

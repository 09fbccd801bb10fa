"""Reading the evaluation CSV and splitting it: stratified on the label, from the seed.

"The world" holds every column here; each party's files get only that party's columns
(the bank: ids, its features and the label; a partner: ids and its features).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.evaluate.spec import EvaluateSpec
from services.kernel.errors import CliError

MISSING = frozenset({"", "na", "nan", "null", "none"})
"""Spellings of a missing value (the partner feature store reads the same ones)."""


@dataclass
class Dataset:
    ids: list[str]
    labels: np.ndarray  # int, 0/1
    text: dict[str, list[str]]  # per feature column, "" where missing
    values: dict[str, np.ndarray]  # per feature column, float with NaN where missing

    def matrix(self, columns: Sequence[str], rows: np.ndarray) -> np.ndarray:
        return np.column_stack([self.values[c][rows] for c in columns])

    def take(self, rows: np.ndarray) -> Dataset:
        """Only these rows (indices), in this order."""
        picked = rows.tolist()
        return Dataset(
            [self.ids[i] for i in picked],
            self.labels[rows],
            {c: [t[i] for i in picked] for c, t in self.text.items()},
            {c: v[rows] for c, v in self.values.items()},
        )


@dataclass
class Split:
    train: np.ndarray  # row indices, sorted
    test: np.ndarray


def _number(text: str, where: str, column: str) -> tuple[str, float]:
    stripped = text.strip()
    if stripped.lower() in MISSING:
        return "", math.nan
    try:
        value = float(stripped)
    except ValueError:
        raise CliError(f"{where}: column {column} is not a number: {text!r}") from None
    if math.isnan(value):
        return "", math.nan
    if math.isinf(value):
        raise CliError(f"{where}: column {column} is infinite: {text!r}")
    return stripped, value


def _label(text: str, where: str, column: str) -> int:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise CliError(f"{where}: label {column} must be 0 or 1, got {text!r}")
    return int(value)


def read_dataset(spec: EvaluateSpec) -> Dataset:
    path = spec.data
    if not path.is_file():
        raise CliError(f"data file {path} does not exist")
    features = spec.all_columns
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise CliError(f"data file {path} is empty")
            header = [h.strip() for h in header]
            wanted = [spec.id_column, spec.label_column, *features]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise CliError(f"{path} has no column(s) {', '.join(missing)}")
            position = {c: header.index(c) for c in wanted}
            ids: list[str] = []
            labels: list[int] = []
            text: dict[str, list[str]] = {c: [] for c in features}
            values: dict[str, list[float]] = {c: [] for c in features}
            seen: set[str] = set()
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                where = f"{path}:{line}"
                if len(row) != len(header):
                    raise CliError(f"{where}: {len(row)} fields, the header has {len(header)}")
                customer = row[position[spec.id_column]].strip()
                if not customer:
                    raise CliError(f"{where}: empty id ({spec.id_column})")
                if customer in seen:
                    raise CliError(f"{where}: id {customer} appears twice")
                seen.add(customer)
                ids.append(customer)
                labels.append(_label(row[position[spec.label_column]], where, spec.label_column))
                for column in features:
                    shown, value = _number(row[position[column]], where, column)
                    text[column].append(shown)
                    values[column].append(value)
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text: {exc.reason}") from exc
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    y = np.array(labels, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise CliError(f"{path}: label {spec.label_column} needs both 0 and 1 rows")
    return Dataset(ids, y, text, {c: np.array(v, dtype=np.float64) for c, v in values.items()})


def split(labels: np.ndarray, test_size: float, seed: int) -> Split:
    """``train_test_split(stratify=y, random_state=seed)`` on the row indices."""
    from sklearn.model_selection import train_test_split  # heavy: not needed to check input

    try:
        train, test = train_test_split(
            np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise CliError(f"cannot split {len(labels)} rows stratified on the label: {exc}") from exc
    train, test = np.sort(train), np.sort(test)
    for name, rows in (("training", train), ("test", test)):
        if len(np.unique(labels[rows])) < 2:
            raise CliError(f"the {name} set would hold only one label class: use more rows")
    return Split(train, test)


def sample(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """A stratified subset of ``rows`` row indices (sorted); every row if there are fewer."""
    if rows >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    try:
        kept, _ = train_test_split(
            np.arange(len(labels)), train_size=rows, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise CliError(f"cannot sample {rows} rows stratified on the label: {exc}") from exc
    return np.sort(kept)


@dataclass(frozen=True)
class PartyFiles:
    """Where each party's own file goes."""

    train: Path  # the bank: ids, its features, the label (training rows)
    test: Path  # the same columns, held-out rows
    customers: Path  # every id the bank holds (its PSI offer)
    partners: dict[str, Path]  # per partner: ids and its features, every row

    @classmethod
    def at(cls, root: Path, partners: Sequence[str]) -> PartyFiles:
        """``fedscreen split``'s layout (the demo's): bank/, partners/<name>/features.csv."""
        bank = root / "bank"
        return cls(
            bank / "train.csv",
            bank / "test.csv",
            bank / "customers.csv",
            {name: root / "partners" / name / "features.csv" for name in partners},
        )


def write_parties(data: Dataset, spec: EvaluateSpec, parts: Split, files: PartyFiles) -> None:
    """Each party's file with only that party's columns."""
    bank = spec.bank_columns
    write_party_csv(files.train, data, spec.id_column, bank, parts.train, spec.label_column)
    write_party_csv(files.test, data, spec.id_column, bank, parts.test, spec.label_column)
    everyone = np.arange(len(data.ids))
    write_party_csv(files.customers, data, spec.id_column, [], everyone)
    for name, own in spec.partners.items():
        write_party_csv(files.partners[name], data, spec.id_column, own, everyone)


def write_party_csv(
    path: Path,
    data: Dataset,
    id_column: str,
    columns: Sequence[str],
    rows: np.ndarray,
    label_column: str | None = None,
) -> None:
    """One party's own file: ids, its columns and (the bank only) the label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([id_column, *columns, *([label_column] if label_column else [])])
        for i in rows.tolist():
            label = [str(int(data.labels[i]))] if label_column else []
            writer.writerow([data.ids[i], *(data.text[c][i] for c in columns), *label])

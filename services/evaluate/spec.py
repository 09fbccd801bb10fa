"""What ``fedscreen evaluate`` was asked to do, checked before anything runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from services.evaluate.outcome import QUOTA_CANDIDATES
from services.kernel.errors import CliError

PARTNER_NAME = re.compile(r"^[a-z0-9-]+$")
FEATURE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")


@dataclass(frozen=True)
class EvaluateSpec:
    data: Path
    id_column: str
    label_column: str
    bank_columns: list[str]
    partners: dict[str, list[str]]  # in the order given on the command line
    test_size: float
    seed: int
    out_dir: Path
    rounds: int = 12
    workdir: Path | None = None
    audit: bool = False
    quota_candidates: int = QUOTA_CANDIDATES

    @property
    def party_columns(self) -> dict[str, list[str]]:
        """Every party's columns, the bank first."""
        return {"bank": self.bank_columns, **self.partners}

    @property
    def all_columns(self) -> list[str]:
        return [c for columns in self.party_columns.values() for c in columns]


def parse_columns(text: str, what: str) -> list[str]:
    columns = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not c for c in columns):
        raise CliError(f"{what}: expected comma-separated column names, got {text!r}")
    return columns


def parse_partner(text: str) -> tuple[str, list[str]]:
    name, sep, columns = text.partition("=")
    name = name.strip()
    if not sep:
        raise CliError(f"--partner {text!r}: expected NAME=COL1,COL2,...")
    if not PARTNER_NAME.match(name):
        raise CliError(f"--partner {text!r}: the name must match ^[a-z0-9-]+$")
    return name, parse_columns(columns, f"--partner {name}")


def build_spec(
    *,
    data: Path,
    id_column: str,
    label_column: str,
    bank: str,
    partners: list[str],
    test_size: float,
    seed: int,
    out_dir: Path,
    rounds: int = 12,
    workdir: Path | None = None,
    audit: bool = False,
    quota_candidates: int = QUOTA_CANDIDATES,
) -> EvaluateSpec:
    """Everything that can be checked without reading the data; raises :class:`CliError`."""
    if not 0.0 < test_size < 1.0:
        raise CliError(f"--test-size must be strictly between 0 and 1, got {test_size}")
    if not partners:
        raise CliError("at least one --partner NAME=COLS is needed")
    if quota_candidates < 1:
        raise CliError(f"--quota-candidates must be at least 1, got {quota_candidates}")
    parsed: dict[str, list[str]] = {}
    for text in partners:
        name, columns = parse_partner(text)
        if name == "bank":
            # fed.training.bank.v1 is the bank's own reply topic
            raise CliError("--partner: 'bank' is the bank's own name; pick another")
        if name in parsed:
            raise CliError(f"--partner {name} is given twice")
        for column in columns:
            # The partner's feature store names a SQLite column after each feature.
            if not FEATURE_NAME.match(column):
                raise CliError(f"partner {name}: feature name {column!r} is not a plain identifier")
        parsed[name] = columns
    spec = EvaluateSpec(
        data=data,
        id_column=id_column,
        label_column=label_column,
        bank_columns=parse_columns(bank, "--bank"),
        partners=parsed,
        test_size=test_size,
        seed=seed,
        out_dir=out_dir,
        rounds=rounds,
        workdir=workdir,
        audit=audit,
        quota_candidates=quota_candidates,
    )
    owner: dict[str, str] = {}
    for party, columns in spec.party_columns.items():
        for column in columns:
            if column in (id_column, label_column):
                kind = "id" if column == id_column else "label"
                raise CliError(f"column {column} is the {kind} column; it cannot be a feature")
            if column in owner:
                where = (
                    f"listed twice for {party}"
                    if owner[column] == party
                    else f"in two parties ({owner[column]} and {party})"
                )
                raise CliError(f"column {column} is {where}")
            owner[column] = party
    if id_column == label_column:
        raise CliError("--id and --label must be different columns")
    return spec

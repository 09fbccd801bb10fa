"""The ids going into an alignment and the token maps coming out, as CSV files."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from services.kernel.crypto.paillier import write_secret
from services.kernel.crypto.tokens import TOKEN_MAP_HEADER


class AlignmentInputError(ValueError):
    """The ids file is unusable; the message says why in one line."""


def read_ids(path: Path, id_column: str) -> list[str]:
    """Distinct, stripped ids in file order (the same normalisation ``partner load`` uses,
    so both sides hash the same strings)."""
    if not path.is_file():
        raise AlignmentInputError(f"CSV file {path} does not exist")
    ids: dict[str, None] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if id_column not in (reader.fieldnames or []):
            raise AlignmentInputError(f"{path} has no column {id_column}")
        for line, row in enumerate(reader, start=2):
            customer_id = (row[id_column] or "").strip()
            if not customer_id:
                raise AlignmentInputError(f"{path}:{line}: empty {id_column}")
            ids[customer_id] = None
    if not ids:
        raise AlignmentInputError(f"{path} has no rows")
    return list(ids)


def write_token_map(path: Path, tokens: Mapping[str, str]) -> None:
    """``customer_id,token`` rows, mode 0600: the file links ids to pseudonyms."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TOKEN_MAP_HEADER)
    writer.writerows(tokens.items())
    write_secret(path, buffer.getvalue().encode())

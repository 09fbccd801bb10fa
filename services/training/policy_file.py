"""Reading the risk team's policy file (TOML) into the wire model."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from schemas import PolicyConfig


def load_policy(path: Path) -> PolicyConfig:
    try:
        return PolicyConfig.model_validate(tomllib.loads(path.read_text()))
    except OSError as exc:
        raise ValueError(f"cannot read policy file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise ValueError(f"policy file {path} is invalid: {' '.join(first[:3])}") from exc

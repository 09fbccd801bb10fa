"""Reading the risk team's policy file (TOML) into the wire model.

The default policy ships inside the package (``default_policy.toml``, the same text as
``deploy/policy.toml`` and the k8s ConfigMap's copy; tests keep them identical), so
``fedscreen train`` without ``--policy`` works from any directory and from an
installed wheel.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from schemas import PolicyConfig

DEFAULT_POLICY = "default_policy.toml"


def default_policy_text() -> str:
    """The packaged default policy (identical to ``deploy/policy.toml``)."""
    return resources.files("services.training").joinpath(DEFAULT_POLICY).read_text(encoding="utf-8")


def load_policy(path: Path | None = None) -> PolicyConfig:
    """``path``'s policy, or the packaged default when ``path`` is None."""
    where = path if path is not None else f"(packaged) {DEFAULT_POLICY}"
    try:
        text = path.read_text() if path is not None else default_policy_text()
        return PolicyConfig.model_validate(tomllib.loads(text))
    except OSError as exc:
        raise ValueError(f"cannot read policy file {where}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise ValueError(f"policy file {where} is invalid: {' '.join(first[:3])}") from exc

"""Running ``fedscreen`` as a user does: its own process, in any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fedscreen(
    cwd: Path, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """This checkout's ``fedscreen`` (on PYTHONPATH, whatever the virtualenv's install
    points at), run in ``cwd`` with ``env`` (default: this process's environment); a
    non-zero exit is returned, not raised."""
    environment = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *argv],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )

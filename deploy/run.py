#!/usr/bin/env python3
"""Bootstrap a local virtualenv and run fedscreen's demo, tests or benchmark.

Stdlib only, so a fresh machine with Python >= 3.11 and pip needs nothing else:

    python3 deploy/run.py demo     # the end-to-end demo
    python3 deploy/run.py test     # ruff, mypy and the whole pytest suite
    python3 deploy/run.py bench    # fedscreen bench (extra args are passed on)

The virtualenv lives in .venv at the repository root and is reinstalled only when
pyproject.toml changes (a stamp file records its hash).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("FEDSCREEN_VENV", ROOT / ".venv"))
STAMP = VENV / ".fedscreen-stamp"


def _bin(name: str) -> str:
    return str(VENV / "bin" / name)


def _run(cmd: list[str], **kwargs: object) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, **kwargs)  # type: ignore[call-overload, no-any-return]


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"fedscreen needs Python >= 3.11, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and Path(_bin("fedscreen")).exists():
        return
    if not (VENV / "bin" / "python").exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    pip = [_bin("python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    if _run([*pip, "install", "--upgrade", "pip"]) != 0:
        sys.exit("could not upgrade pip in the virtualenv")
    if _run([*pip, "install", "-e", ".[dev]"]) != 0:
        sys.exit("could not install fedscreen into the virtualenv")
    STAMP.write_text(digest)


def run_tests(extra: list[str]) -> int:
    steps = [
        [_bin("ruff"), "check", "."],
        [_bin("ruff"), "format", "--check", "."],
        [_bin("mypy")],
        [_bin("fedscreen"), "schemas", "export", "--check"],
    ]
    for step in steps:
        if (rc := _run(step)) != 0:
            print(f"FAILED: {' '.join(step)} (exit {rc})", flush=True)
            return rc
    # pytest exits 5 when it collected nothing: that is a failure here, and it
    # propagates because we return pytest's own code.
    return _run([_bin("pytest"), *extra])


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench", "shell"}:
        print("usage: python3 deploy/run.py {demo|test|bench|shell} [args...]", file=sys.stderr)
        return 2
    command, extra = argv[0], argv[1:]
    ensure_venv()
    if command == "test":
        return run_tests(extra)
    if command == "shell":
        return _run([_bin("fedscreen"), *extra])
    return _run([_bin("fedscreen"), command, *extra])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``fedscreen demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.kernel.errors import CliError


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        workdir: Annotated[
            Path, typer.Option(help="Scratch directory (recreated): keys, stores, logs.")
        ] = Path(".fedscreen/demo"),
        rows: Annotated[
            int | None, typer.Option(help="Use a stratified sample of this many rows (1000+).")
        ] = None,
        rounds: Annotated[int, typer.Option(min=1, max=100, help="Training rounds at most.")] = 8,
    ) -> None:
        """Train, roll out, stream the held-out customers through every service, verify."""
        from services.demo.run import DemoOptions, run_demo

        if rows is not None and not 1000 <= rows <= 30000:
            raise CliError("--rows must be between 1000 and 30000")
        code = run_demo(DemoOptions(workdir=workdir, rows=rows, rounds=rounds))
        if code != 0:
            raise CliError("the demo found problems (listed above)", exit_code=code)

"""``fedscreen prescreen run``."""

from __future__ import annotations

from typing import Annotated

import typer

from services.kernel.errors import CliError


def register(app: typer.Typer) -> None:
    prescreen = typer.Typer(help="Prescreen: the faust joiner, scorer and policy (bank side).")
    app.add_typer(prescreen, name="prescreen")

    @prescreen.command("run")
    def run(log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO") -> None:
        """Run the faust worker (settings from PRESCREEN_* / KAFKA_*)."""
        import faust

        from services.kernel.config import KafkaSettings, load_settings
        from services.prescreen.app import build_app
        from services.prescreen.settings import PrescreenSettings

        try:
            app = build_app(load_settings(PrescreenSettings), load_settings(KafkaSettings))
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        worker = faust.Worker(app, loglevel=log_level.lower(), quiet=True)
        worker.execute_from_commandline()

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
        from services.kernel.config import KafkaSettings, load_settings
        from services.kernel.logs import configure_logging
        from services.prescreen.app import build_app
        from services.prescreen.settings import PrescreenSettings
        from services.prescreen.worker import Worker

        # Before anything logs (the settings' warnings, faust's imports): every line on
        # stderr is then in FEDSCREEN_LOG_FORMAT, and the worker keeps the same setup.
        configure_logging(log_level)
        try:
            app = build_app(load_settings(PrescreenSettings), load_settings(KafkaSettings))
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        Worker(app, log_level).execute_from_commandline()

"""``fedscreen intake run``."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    intake = typer.Typer(help="Intake: consent, frequency cap, tokens, batching (bank side).")
    app.add_typer(intake, name="intake")

    @intake.command("run")
    def run(log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO") -> None:
        """Consume bank.candidates.v1 (settings from INTAKE_* / KAFKA_*)."""
        from services.intake.service import IntakeService
        from services.intake.settings import IntakeSettings
        from services.kernel.config import KafkaSettings, load_settings
        from services.kernel.lifecycle import configure_logging

        configure_logging(log_level)
        service = IntakeService(load_settings(IntakeSettings), load_settings(KafkaSettings))
        asyncio.run(service.run())

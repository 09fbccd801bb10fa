"""Registers each service's subcommands on the ``fedscreen`` CLI."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Each service module adds its own commands; imports stay light until a command runs."""

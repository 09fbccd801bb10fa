"""Registers each service's subcommands on the ``fedscreen`` CLI."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Each service module adds its own commands; imports stay light until a command runs."""
    from services import keys_cli
    from services.alignment import cli as alignment_cli
    from services.bench import cli as bench_cli
    from services.campaigns import cli as campaigns_cli
    from services.candidates import cli as candidates_cli
    from services.demo import cli as demo_cli
    from services.evaluate import cli as evaluate_cli
    from services.intake import cli as intake_cli
    from services.partner import cli as partner_cli
    from services.prescreen import cli as prescreen_cli
    from services.receiver import cli as receiver_cli
    from services.training import cli as training_cli
    from services.training import rollout_cli
    from services.webhooks import cli as webhooks_cli

    keys_cli.register(app)
    demo_cli.register(app)
    intake_cli.register(app)
    partner_cli.register(app)
    alignment_cli.register(app)
    prescreen_cli.register(app)
    training_cli.register(app)
    rollout_cli.register(app)
    webhooks_cli.register(app)
    receiver_cli.register(app)
    bench_cli.register(app)
    evaluate_cli.register(app)
    candidates_cli.register(app)
    campaigns_cli.register(app)

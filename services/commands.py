"""Registers each service's subcommands on the ``fedscreen`` CLI."""

from __future__ import annotations

import typer

BENCH_PACKAGE = "services.bench"
BENCH_MISSING = (
    "fedscreen bench runs from a source checkout (python3 deploy/run.py bench): "
    "this installation leaves the benchmark out"
)


def register(app: typer.Typer) -> None:
    """Each service module adds its own commands; imports stay light until a command runs."""
    from services import keys_cli
    from services.alignment import cli as alignment_cli
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
    register_bench(app)
    evaluate_cli.register(app)
    candidates_cli.register(app)
    campaigns_cli.register(app)


def register_bench(app: typer.Typer) -> None:
    """``fedscreen bench``, the one place outside services/bench that imports it (a leaf:
    tests/unit/test_import_graph.py). The wheel, and so the runtime image, leaves the
    benchmark out (pyproject.toml); there the command only says where it runs."""
    try:
        from services.bench import cli as bench_cli
    except ModuleNotFoundError as exc:
        if exc.name != BENCH_PACKAGE:
            raise

        @app.command(
            "bench",
            help="The benchmark: runs from a source checkout only.",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            add_help_option=False,
        )
        def bench() -> None:
            from services.kernel.errors import CliError

            raise CliError(BENCH_MISSING)

        return
    bench_cli.register(app)

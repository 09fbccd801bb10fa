"""The ``fedscreen`` command: one subcommand per service and tool.

Heavy imports (faust, lightgbm) happen inside the subcommands so ``fedscreen --help``
stays fast and a service process loads only what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.24 vendors click under typer._click
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException as _ClickException  # type: ignore[assignment]

from services.kernel.errors import CliError

app = typer.Typer(
    name="fedscreen",
    help="Federated risk pre-screening for bank marketing, on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
schemas_app = typer.Typer(help="The wire contract.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")


@schemas_app.command("export")
def schemas_export(
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the committed JSON Schema drifted.")
    ] = False,
) -> None:
    """Write every message model as JSON Schema under schemas/json/."""
    from schemas.export import JSON_DIR, drift, write_all

    if check:
        problems = drift()
        if problems:
            raise CliError(
                "JSON Schema drifted from the models (run `fedscreen schemas export`): "
                + "; ".join(problems)
            )
        typer.echo(f"JSON Schema in {JSON_DIR} matches the models")
        return
    for path in write_all():
        typer.echo(f"wrote {path}")


@app.command("broker")
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.")] = 0,
    partitions: Annotated[int, typer.Option(min=1)] = 4,
    partner: Annotated[
        list[str] | None, typer.Option("--partner", help="Create this partner's topics too.")
    ] = None,
) -> None:
    """Run the embedded Tansu broker in the foreground with every topic created.

    SIGTERM and SIGINT stop the broker, wait for it and exit 0. Clients reach it
    through a relay that lets librdkafka before 2.2.0 (Debian's kcat) connect.
    """
    import signal

    from services.kernel.kafka.broker import EmbeddedBroker
    from services.kernel.kafka.topics import all_topics

    async def run() -> int | None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        embedded = EmbeddedBroker(
            port=port or None,
            partitions=partitions,
            topics=all_topics(partner or []),
            compat_relay=True,
        )
        async with embedded:
            typer.echo(f"KAFKA_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}", err=False)
            sys.stdout.flush()
            while not stopping.is_set():
                if embedded.process is None or embedded.process.poll() is not None:
                    return embedded.process.returncode if embedded.process else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 0.5)
        return None

    exited = asyncio.run(run())
    if exited is not None:
        raise CliError(f"the broker exited on its own (status {exited})")
    typer.echo("broker stopped", err=True)


@app.command("topics")
def topics(
    partner: Annotated[list[str] | None, typer.Option("--partner")] = None,
) -> None:
    """Create every topic (with the configured partition count) on KAFKA_BOOTSTRAP_SERVERS."""
    from services.kernel.config import KafkaSettings, load_settings
    from services.kernel.kafka.admin import ensure_topics
    from services.kernel.kafka.topics import all_topics

    created = asyncio.run(ensure_topics(load_settings(KafkaSettings), all_topics(partner or [])))
    typer.echo(f"created {len(created)} topics")


def _register_services() -> None:
    from services import commands

    commands.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and configuration errors become one line and a non-zero exit."""
    _register_services()
    try:
        result = app(args=argv, standalone_mode=False)
    except _ClickException as exc:
        print(f"fedscreen: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("fedscreen: aborted", file=sys.stderr)
        sys.exit(130)
    except CliError as exc:
        report_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


def report_error(message: str) -> None:
    """``fedscreen: error: …`` on stderr; a service that already set up JSON logging (its
    ``run`` command does so first) logs it as one JSON line instead, so that a service
    refusing to start (an invalid setting) writes nothing but JSON to its log."""
    import logging

    from services.kernel.logs import JsonFormatter

    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.getLogger("fedscreen").error("fedscreen: error: %s", message)
    else:
        print(f"fedscreen: error: {message}", file=sys.stderr)


def existing_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CliError(f"{what} {path} does not exist or is not a file")
    return path


if __name__ == "__main__":
    main()

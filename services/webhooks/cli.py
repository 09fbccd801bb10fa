"""``fedscreen webhooks run``: the webhooks service in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.kernel.errors import CliError

if TYPE_CHECKING:
    from services.kernel.config import KafkaSettings
    from services.webhooks.settings import WebhooksSettings
    from services.webhooks.subscriptions import Subscriptions


def register(app: typer.Typer) -> None:
    webhooks_app = typer.Typer(
        help="Deliver releases to campaign tools as signed webhooks.", no_args_is_help=True
    )

    @webhooks_app.command("run")
    def run(
        subscriptions: Annotated[
            Path | None,
            typer.Option(
                "--subscriptions",
                help="Subscriptions JSON file (default: $WEBHOOKS_SUBSCRIPTIONS_FILE).",
            ),
        ] = None,
        log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    ) -> None:
        """Consume campaign.released.v1 and deliver each release to its subscribers.

        Configured by WEBHOOKS_* (this service) and KAFKA_* (the brokers) variables.
        """
        from services.kernel.config import KafkaSettings, load_settings
        from services.kernel.lifecycle import configure_logging
        from services.webhooks.settings import WebhooksSettings
        from services.webhooks.subscriptions import load_subscriptions

        configure_logging(log_level)  # first: the settings' warnings are log lines too
        settings = load_settings(WebhooksSettings, subscriptions_file=subscriptions)
        kafka = load_settings(KafkaSettings)
        loaded = load_subscriptions(settings.subscriptions_file)
        try:
            asyncio.run(run_until_signalled(kafka, settings, loaded))
        except RuntimeError as exc:
            raise CliError(str(exc)) from exc

    app.add_typer(webhooks_app, name="webhooks")


async def run_until_signalled(
    kafka: KafkaSettings, settings: WebhooksSettings, subscriptions: Subscriptions
) -> None:
    from services.kernel.lifecycle import STOP_GRACE_S, exit_if_stuck
    from services.webhooks.service import WebhookService

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        if not stop.is_set():  # in-flight deliveries get their own grace first
            exit_if_stuck(STOP_GRACE_S + settings.shutdown_grace_s)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping)
    await WebhookService(kafka, settings, subscriptions).run(stop)

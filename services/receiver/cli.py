"""``fedscreen receiver run``: the demo campaign-tool receiver in the foreground."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from services.receiver.settings import ReceiverSettings


def register(app: typer.Typer) -> None:
    receiver_app = typer.Typer(
        help="A demo campaign tool that verifies and records webhooks.", no_args_is_help=True
    )

    @receiver_app.command("run")
    def run(
        port: Annotated[
            int | None, typer.Option(help="Port (default: $RECEIVER_PORT or 8090; 0 = free port).")
        ] = None,
        host: Annotated[
            str | None, typer.Option(help="Interface (default: $RECEIVER_HOST or 127.0.0.1).")
        ] = None,
        secret: Annotated[
            str | None, typer.Option(help="whsec_ secret (default: $RECEIVER_SECRET).")
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(help="JSON lines file (default: $RECEIVER_OUT or deliveries.jsonl)."),
        ] = None,
        fail_first: Annotated[
            int | None, typer.Option(help="Answer 500 to the first N requests.")
        ] = None,
        throttle_first: Annotated[
            int | None, typer.Option(help="Answer 429 + Retry-After to the first N requests.")
        ] = None,
    ) -> None:
        """Verify webhooks (401 if forged), de-duplicate them, append each to --out."""
        from services.kernel.config import load_settings
        from services.kernel.logs import configure_logging
        from services.receiver.settings import ReceiverSettings

        configure_logging("INFO")  # first: the settings' warnings are log lines too
        settings = load_settings(
            ReceiverSettings,
            port=port,
            host=host,
            secret=secret,
            out=out,
            fail_first=fail_first,
            throttle_first=throttle_first,
        )
        asyncio.run(serve_until_signalled(settings))

    app.add_typer(receiver_app, name="receiver")


async def serve_until_signalled(settings: ReceiverSettings) -> None:
    from aiohttp import web

    from services.receiver.app import Receiver

    runner = web.AppRunner(Receiver(settings).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    # Printed (not logged) so a script starting us on port 0 can read the address.
    typer.echo(f"receiver listening on http://{host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

"""Running a service's long-lived tasks until SIGTERM/SIGINT or until one of them fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from services.kernel.logs import configure_logging

__all__ = ["configure_logging", "run_until_stopped"]

log = logging.getLogger(__name__)


async def run_until_stopped(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines as tasks; return when a signal arrives or any task ends.

    A task that raises takes the service down (and the exception propagates), because
    a half-working service that keeps its consumer group membership is worse than a
    restart.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(c) for c in coroutines]
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*tasks, stopper]:
            task.cancel()
        results = await asyncio.gather(*tasks, stopper, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    for task, result in zip(tasks, results, strict=False):
        if (
            task in done
            and isinstance(result, BaseException)
            and not isinstance(result, asyncio.CancelledError)
        ):
            raise result

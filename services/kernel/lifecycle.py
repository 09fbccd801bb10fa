"""Running a service's long-lived tasks until SIGTERM/SIGINT or until one of them fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from typing import Any

from services.kernel.logs import configure_logging

__all__ = ["configure_logging", "exit_if_stuck", "run_until_stopped"]

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0
"""How long a signalled service may take to flush, commit and leave its group."""


def exit_if_stuck(grace_s: float | None = None) -> threading.Timer:
    """Exit the process ``grace_s`` (default :data:`STOP_GRACE_S`) from now unless it has
    exited by then.

    A clean stop flushes its outputs and commits its offsets, which waits on the broker;
    with the broker gone that wait has no end, and an operator's SIGTERM would be
    ignored. Past the grace the process exits as a kill -9 would, which the services
    are built to survive: what was not committed is redelivered after the restart. The
    timer is a daemon thread, so it never keeps a process alive that is otherwise done.
    """

    grace_s = STOP_GRACE_S if grace_s is None else grace_s

    def expire() -> None:
        log.error(
            "did not stop within %.0fs of the signal (is Kafka reachable?): exiting; "
            "uncommitted work is redelivered after the restart",
            grace_s,
        )
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(grace_s, expire)
    timer.daemon = True
    timer.start()
    return timer


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
        if stopper in done:
            exit_if_stuck()  # covers the caller's own flush and commit after we return
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

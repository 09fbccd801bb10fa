"""Why a service is not ready, said once in its log and on every ``/readyz`` answer.

Every service computes a reason (``None`` when ready): the health server returns it as
the body of ``503`` and :func:`report_readiness` logs it once it has held for a while,
so a service stuck short of ready (a wrong key directory, a partner that never loaded
the model) says why in one line instead of sitting silently unready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

NotReady = Callable[[], str | None]
"""Why the service is not ready, or None when it is."""

SETTLE_S = 10.0
"""How long a reason must hold before it is logged: starting up (joining a consumer
group, reading the rollout topic) takes a few seconds and is not worth a warning."""


class ReadinessLog:
    """Decides which readiness lines to log; the clock is injected so tests need no sleeps.

    A reason is logged (WARNING) once it has held for ``settle_s``, once per reason in a
    row; becoming ready is logged (INFO) the first time, and again after a logged reason.
    """

    def __init__(
        self, service: str, settle_s: float = SETTLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.service = service
        self.settle_s = settle_s
        self.clock = clock
        self._reason: str | None = None
        self._since = clock()
        self._logged: str | None = None
        self._ready_logged = False

    def observe(self, reason: str | None) -> None:
        now = self.clock()
        if reason != self._reason:
            self._reason, self._since = reason, now
        if reason is None:
            if not self._ready_logged or self._logged is not None:
                log.info("%s ready", self.service, extra={"service": self.service})
                self._ready_logged, self._logged = True, None
            return
        if reason != self._logged and now - self._since >= self.settle_s:
            log.warning(
                "%s not ready: %s",
                self.service,
                reason,
                extra={"service": self.service, "reason": reason},
            )
            self._logged = reason


async def report_readiness(
    service: str, not_ready: NotReady, settle_s: float = SETTLE_S, poll_s: float = 1.0
) -> None:
    """Forever: check the service's readiness every ``poll_s`` and log what changed."""
    reporter = ReadinessLog(service, settle_s)
    while True:
        try:
            reason = not_ready()
        except Exception as exc:  # a readiness probe must not take the service down
            reason = f"readiness check failed: {exc!r}"
        reporter.observe(reason)
        await asyncio.sleep(poll_s)

"""What a failed attempt's cause was, and retry log lines an outage cannot flood.

An endpoint that is down fails every release in flight to it, each several times: one
line per retry made 1,412 lines of one minute's outage. :class:`RetryLog` logs the first
retry to an endpoint as it happens (with its decision id and cause) and then at most one
line per endpoint per interval, counting the retries by cause::

    webhook retries to crm: 40 in the last 10s: 37 connection refused, 3 HTTP 503
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

log = logging.getLogger("services.webhooks.delivery")

_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connect timeout",
}


def http_cause(status: int) -> str:
    return f"HTTP {status}"


def error_cause(exc: BaseException) -> str:
    """A short, stable name for why an attempt got no HTTP answer: what an operator
    acts on (the receiver is down, its name does not resolve, its certificate is wrong)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timeout"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "DNS lookup failed"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "TLS error"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientConnectionResetError | ConnectionResetError):
        return "connection reset"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "broken response"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(os_error, OSError):
        if (known := _ERRNO_CAUSES.get(os_error.errno or 0)) is not None:
            return known
        if isinstance(os_error, ConnectionRefusedError):
            return "connection refused"
        detail = os_error.strerror or str(os_error) or type(os_error).__name__
        return f"connection error ({detail})"
    return type(exc).__name__


@dataclass
class _Window:
    started: float
    causes: Counter[str] = field(default_factory=Counter)


class RetryLog:
    """Per endpoint: the first retry logged at once, then one summary per ``interval_s``
    while retries go on (``flush`` writes the summaries that are due; call it regularly)."""

    def __init__(
        self,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.logger = logger
        self._windows: dict[str, _Window] = {}

    def retry(
        self, endpoint: str, cause: str, *, decision_id: str, attempt: int, delay_s: float
    ) -> None:
        now = self.clock()
        self.flush(now)
        window = self._windows.get(endpoint)
        if window is not None:
            window.causes[cause] += 1
            return
        self._windows[endpoint] = _Window(started=now)
        self.logger.warning(
            "webhook %s to %s: attempt %d failed: %s, retrying in %.2fs "
            "(further retries to %s summarised every %gs)",
            decision_id,
            endpoint,
            attempt,
            cause,
            delay_s,
            endpoint,
            self.interval_s,
            extra={"decision_id": decision_id, "endpoint": endpoint, "cause": cause},
        )

    def flush(self, now: float | None = None) -> None:
        """Log the summary of every endpoint whose interval is over; an endpoint with no
        retry in its last interval is quiet again (its next retry is logged at once)."""
        now = self.clock() if now is None else now
        for endpoint, window in list(self._windows.items()):
            elapsed = now - window.started
            if elapsed < self.interval_s:
                continue
            if not window.causes:
                del self._windows[endpoint]
                continue
            total = sum(window.causes.values())
            counts = ", ".join(f"{n} {cause}" for cause, n in window.causes.most_common())
            self.logger.warning(
                "webhook retries to %s: %d in the last %.0fs: %s",
                endpoint,
                total,
                elapsed,
                counts,
                extra={"endpoint": endpoint, "retries": total, "causes": dict(window.causes)},
            )
            self._windows[endpoint] = _Window(started=now)

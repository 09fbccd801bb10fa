"""Prometheus metrics every service shares, and the small HTTP server that exposes them
with /healthz (the process is alive) and /readyz (it has what it needs to work)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from services.kernel.readiness import NotReady

MESSAGES_IN = Counter("fedscreen_messages_in_total", "Messages consumed", ["service", "topic"])
MESSAGES_OUT = Counter("fedscreen_messages_out_total", "Messages produced", ["service", "topic"])
DLQ_MESSAGES = Counter("fedscreen_dlq_total", "Messages dead-lettered", ["topic", "reason"])
DECISIONS = Counter(
    "fedscreen_decisions_total", "Decisions by outcome and reason", ["outcome", "reason"]
)
CRYPTO_SECONDS = Histogram(
    "fedscreen_crypto_seconds",
    "Cryptographic work per batch",
    ["service", "operation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)
PARTNER_TIMEOUTS = Counter(
    "fedscreen_partner_timeouts_total", "Batches a partner missed", ["partner"]
)
PARTNER_REFUSALS = Counter(
    "fedscreen_partner_refusals_total",
    "Messages a partner refused to act on (bad signature, a conflicting or repeated "
    "request, too few participants, a re-request, ...), by reason",
    ["reason"],
)
PARTNER_FACTORS_READY = Gauge(
    "fedscreen_partner_factors_ready",
    "Uniform re-randomisation factors computed ahead for the newest model version",
    ["partner"],
)
PARTNER_FACTORS_INLINE = Counter(
    "fedscreen_partner_factors_inline_total",
    "Re-randomisation factors computed while answering a request because the pool was "
    "empty (the pool does not keep up with the request rate)",
    ["partner"],
)
PARTNER_SIBLING_CLAIMS = Counter(
    "fedscreen_partner_claimed_by_sibling_total",
    "Requests this replica left to a sibling replica of the same partner, which claimed "
    "them first in the shared request ledger (not refusals: the sibling answers)",
    ["partner"],
)
WEBHOOK_ATTEMPTS = Counter("fedscreen_webhook_attempts_total", "Webhook attempts", ["result"])
WEBHOOK_UNSUBSCRIBED = Counter(
    "fedscreen_webhook_unsubscribed_total",
    "Deliveries ended before their next attempt because a subscriptions reload removed the "
    "endpoint or its subscription to the release's campaign (dropped, not dead-lettered)",
)
WEBHOOK_SUBSCRIPTION_RELOADS = Counter(
    "fedscreen_webhook_subscription_reloads_total",
    "Changed subscriptions file contents seen at run time, by result: applied, or "
    "invalid (refused; the last good subscriptions stay in force)",
    ["result"],
)
WEBHOOK_SUBSCRIPTIONS_LOADED = Gauge(
    "fedscreen_webhook_subscriptions_loaded_timestamp_seconds",
    "Unix time the subscriptions in force were loaded, labelled with the sha256 of the "
    "file content they came from (one series)",
    ["sha256"],
)
WEBHOOK_SUBSCRIPTIONS_FILE_VALID = Gauge(
    "fedscreen_webhook_subscriptions_file_valid",
    "0 while the subscriptions file holds content that was refused (the last good "
    "subscriptions stay in force), else 1",
)
PARTNER_LATENCY = Histogram(
    "fedscreen_partner_latency_seconds",
    "From a batch's fragment request to the partner's fragment reaching prescreen",
    ["partner"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CONSUMER_LAG = Gauge(
    "fedscreen_consumer_lag",
    "Records behind the partition's end, per consumer group member",
    ["service", "topic", "partition"],
)


DEFAULT_HOST = "0.0.0.0"
"""Every interface: probes and scrapers reach a container from outside it. Each service's
``*_METRICS_HOST`` narrows it (127.0.0.1 for a laptop)."""


async def start_http(
    port: int, not_ready: NotReady, host: str = DEFAULT_HOST
) -> web.AppRunner | None:
    """Serve /metrics, /healthz and /readyz; port 0 disables the server. ``not_ready``
    says why the service is not ready (None when it is): /readyz answers ``503`` with
    ``not ready: <reason>``."""
    if port == 0:
        return None

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        try:
            reason = not_ready()
        except Exception as exc:  # say so rather than answer 500
            reason = f"readiness check failed: {exc!r}"
        if reason is None:
            return web.Response(text="ready")
        return web.Response(status=503, text=f"not ready: {reason}")

    app = web.Application()
    app.add_routes(
        [web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

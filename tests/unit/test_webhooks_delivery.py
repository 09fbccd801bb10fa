"""One endpoint over real local HTTP: timeouts, redirects, the concurrency bound."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from services.webhooks.delivery import Deliverer
from services.webhooks.settings import WebhooksSettings
from services.webhooks.subscriptions import Endpoint

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def target(handler: Handler) -> AsyncIterator[Endpoint]:
    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield Endpoint(name="t", url=f"http://{host}:{port}/", secret=SECRET, campaigns=("*",))
    finally:
        await runner.cleanup()


def settings(**overrides: Any) -> WebhooksSettings:
    options: dict[str, Any] = {"initial_backoff_s": 0.01, "max_backoff_s": 0.02, **overrides}
    return WebhooksSettings(subscriptions_file=Path("unused.json"), **options)


async def test_a_timed_out_attempt_is_retried() -> None:
    calls = 0

    async def slow_once(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.5)
        return web.Response(status=204)

    async with target(slow_once) as endpoint, aiohttp.ClientSession() as session:
        outcome = await Deliverer(session, settings(request_timeout_s=0.1)).deliver(
            endpoint, "dec-1", b"{}"
        )
    assert outcome.delivered
    assert outcome.attempts == 2


async def test_a_redirect_is_not_followed_and_not_retried() -> None:
    async def moved(_: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "http://elsewhere.invalid/"})

    async with target(moved) as endpoint, aiohttp.ClientSession() as session:
        outcome = await Deliverer(session, settings()).deliver(endpoint, "dec-1", b"{}")
    assert not outcome.delivered
    assert outcome.reason == "webhook-rejected"
    assert (outcome.attempts, outcome.last.status) == (1, 301)


async def test_attempts_in_flight_never_exceed_the_concurrency_setting() -> None:
    in_flight = peak = 0

    async def busy(_: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(status=200)

    async with target(busy) as endpoint, aiohttp.ClientSession() as session:
        deliverer = Deliverer(session, settings(concurrency=3))
        outcomes = await asyncio.gather(
            *(deliverer.deliver(endpoint, f"dec-{i}", b"{}") for i in range(12))
        )
    assert all(outcome.delivered for outcome in outcomes)
    assert peak == 3

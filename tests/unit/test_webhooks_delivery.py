"""One endpoint over real local HTTP: timeouts, redirects, the concurrency bound."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from services.webhooks.delivery import Deliverer, Outcome, Unsubscribed
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


async def test_an_endpoint_unsubscribed_between_attempts_gets_no_more() -> None:
    calls = 0
    current: dict[str, Endpoint] = {}

    async def failing(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            current.clear()  # a reload removes it while the release is being retried
        return web.Response(status=503)

    async with target(failing) as endpoint, aiohttp.ClientSession() as session:
        current["t"] = endpoint
        outcome = await Deliverer(session, settings(max_attempts=10)).follow(
            "t", current.get, "dec-1", b"{}"
        )
    assert isinstance(outcome, Unsubscribed)
    assert (outcome.name, outcome.attempts, calls) == ("t", 2, 2)
    assert outcome.describe() == "endpoint t: unsubscribed after 2 attempt(s)"


async def test_each_attempt_uses_the_endpoint_as_it_is_then() -> None:
    """A retry after a reload goes to the new URL, signed with the new secret(s)."""
    seen: list[tuple[str, str]] = []

    async def record(name: str, status: int, request: web.Request) -> web.Response:
        seen.append((name, request.headers["webhook-signature"]))
        return web.Response(status=status)

    new_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    async with (
        target(lambda r: record("old", 503, r)) as old,
        target(lambda r: record("new", 200, r)) as new,
        aiohttp.ClientSession() as session,
    ):
        moved = new.model_copy(
            update={
                "secret": new_secret,
                "previous_secret": SECRET,
                "previous_secret_until": datetime.now(UTC) + timedelta(hours=1),
            }
        )
        endpoints = iter([old, moved])
        outcome = await Deliverer(session, settings()).follow(
            "t", lambda _: next(endpoints), "dec-1", b'{"a":1}'
        )
    assert isinstance(outcome, Outcome) and outcome.delivered
    assert outcome.endpoint is moved
    assert [name for name, _ in seen] == ["old", "new"]
    assert len(seen[0][1].split(" ")) == 1
    assert len(seen[1][1].split(" ")) == 2  # the rotation's overlap: both keys sign

"""Subscriptions changed while ``fedscreen webhooks run`` runs, with no restart: an endpoint
added, a bad file refused, an endpoint removed, a secret rotated with an overlap.

The service is its own process on the embedded broker; the campaign tools are the real
demo receiver, which verifies with the independent ``standardwebhooks`` library.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.kernel.kafka.broker import EmbeddedBroker, free_port
from services.kernel.kafka.clients import make_producer
from services.receiver.app import Receiver
from services.receiver.settings import ReceiverSettings
from tests.cli import ROOT
from tests.integration.test_webhooks import (
    FAST_GROUPS,
    WAIT_S,
    committed_past,
    delivered_lines,
    endpoint,
    eventually,
    make_release,
    new_secret,
    publish,
    receiver,
    serve,
    unique,
)

pytestmark = pytest.mark.integration

RELOAD_S = 0.5
OVERLAP_S = 3.0


@pytest.fixture(scope="module")
async def producer(broker: EmbeddedBroker) -> AsyncIterator[Any]:
    producer = make_producer(broker.settings())
    await producer.start()
    yield producer
    await producer.stop()


def write_atomically(path: Path, endpoints: list[dict[str, Any]]) -> str:
    """Replace the file in one rename, as a ConfigMap/Secret update or ``mv`` does; the
    sha256 of the new content."""
    content = json.dumps({"endpoints": endpoints}).encode()
    staged = path.with_suffix(".tmp")
    staged.write_bytes(content)
    staged.replace(path)
    return hashlib.sha256(content).hexdigest()


def ids(app: Receiver) -> set[str]:
    return {line["webhook_id"] for line in delivered_lines(app)}


@asynccontextmanager
async def rotating_tool(tmp_path: Path) -> AsyncIterator[tuple[str, Receiver, Receiver]]:
    """One campaign tool's URL behind which two real receivers check every request: one
    holding the old secret, one the new. It accepts what either verifies, as a tool
    mid-rotation does."""

    def make(secret: str) -> Receiver:
        out = tmp_path / f"{unique('rotating')}.jsonl"
        return Receiver(ReceiverSettings(secret=secret, out=out))

    old, new = make(new_secret()), make(new_secret())

    async def both(request: web.Request) -> web.Response:
        answers = [await old.post(request), await new.post(request)]  # the body is cached
        return web.Response(status=200 if any(a.status == 200 for a in answers) else 401)

    app = web.Application()
    app.router.add_post("/tool", both)
    # mounted only so that their startup and cleanup (their out files) run with the app
    app.add_subapp("/old/", old.app())
    app.add_subapp("/new/", new.app())
    async with serve(app) as url:
        yield url + "/tool", old, new


async def metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


async def loaded(port: int, sha256: str) -> bool:
    try:
        text = await metrics(port)
    except aiohttp.ClientError:
        return False  # not serving yet
    return f'fedscreen_webhook_subscriptions_loaded_timestamp_seconds{{sha256="{sha256}"}}' in text


async def reload_count(port: int, result: str) -> float:
    pattern = rf'fedscreen_webhook_subscription_reloads_total{{result="{result}"}} (\S+)'
    match = re.search(pattern, await metrics(port))
    return float(match.group(1)) if match else 0.0


async def test_endpoints_added_removed_and_rotated_while_the_service_runs(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("reload")
    metrics_port = free_port()
    group_id = unique("test-reload")
    path = tmp_path / "subscriptions.json"
    log_path = tmp_path / "webhooks.log"
    async with (
        receiver(tmp_path) as (url_a, a),
        receiver(tmp_path) as (url_b, b),
        rotating_tool(tmp_path) as (url_tool, old, new),
    ):
        crm_a = endpoint("crm-a", url_a, a.settings.secret, campaign)
        crm_b = endpoint("crm-b", url_b, b.settings.secret, campaign)
        tool = endpoint("tool", url_tool, old.settings.secret, campaign)
        start = write_atomically(path, [crm_a, tool])
        env = {
            **os.environ,
            **broker.env(),
            **{f"KAFKA_{name.upper()}": str(value) for name, value in FAST_GROUPS.items()},
            "PYTHONPATH": str(ROOT),
            "WEBHOOKS_SUBSCRIPTIONS_FILE": str(path),
            "WEBHOOKS_SUBSCRIPTIONS_RELOAD_S": str(RELOAD_S),
            "WEBHOOKS_GROUP_ID": group_id,
            "WEBHOOKS_COMMIT_INTERVAL_S": "0.1",
            "WEBHOOKS_METRICS_PORT": str(metrics_port),
        }
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli", "webhooks", "run", env=env, stdout=log,
                stderr=log,
            )  # fmt: skip
        try:
            await eventually(lambda: loaded(metrics_port, start), "the service's metrics")
            r1 = make_release(campaign)
            await publish(producer, r1, r1.decision_id)
            await eventually(lambda: a.stats.unique == 1 and old.stats.unique == 1, "r1")

            # (a) a second endpoint: it receives what is consumed from then on, only
            added = write_atomically(path, [crm_a, crm_b, tool])
            await eventually(lambda: loaded(metrics_port, added), "crm-b added")
            r2 = make_release(campaign)
            await publish(producer, r2, r2.decision_id)
            await eventually(lambda: a.stats.unique == 2 and b.stats.unique == 1, "r2")

            # a bad file changes nothing, and is reported once however often it is checked
            path.write_text('{"endpoints": [')
            await eventually(
                lambda: reload_count_is(metrics_port, "invalid", 1), "the refusal counted"
            )
            await asyncio.sleep(3 * RELOAD_S)

            # (b) the first endpoint removed; (c) the tool's secret rotated with an overlap
            until = datetime.now(UTC) + timedelta(seconds=OVERLAP_S)
            rotated = {
                **tool,
                "secret": new.settings.secret,
                "previous_secret": old.settings.secret,
                "previous_secret_until": until.isoformat(),
            }
            changed = write_atomically(path, [crm_b, rotated])
            await eventually(lambda: loaded(metrics_port, changed), "crm-a removed, rotated")
            r3 = make_release(campaign)
            at3 = await publish(producer, r3, r3.decision_id)
            await eventually(lambda: committed_past(broker, group_id, at3), "r3 finished")
            assert datetime.now(UTC) < until, "r3 was meant to go out during the overlap"

            # after the overlap only the new secret signs
            await asyncio.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.2)
            r4 = make_release(campaign)
            at4 = await publish(producer, r4, r4.decision_id)
            await eventually(lambda: committed_past(broker, group_id, at4), "r4 finished")
            assert await reload_count(metrics_port, "applied") == 2
            assert await reload_count(metrics_port, "invalid") == 1

            process.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(process.wait(), WAIT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        logs = log_path.read_text()
        assert returncode == 0, logs

    # (a) crm-b got what was released after it was added: r1 is not back-filled
    assert ids(b) == {r2.decision_id, r3.decision_id, r4.decision_id}
    # (b) crm-a got nothing after its removal
    assert ids(a) == {r1.decision_id, r2.decision_id}
    assert a.stats.received == 2
    # (c) before the rotation only the old secret verified; during the overlap both did;
    # after it, only the new one
    assert ids(old) == {r1.decision_id, r2.decision_id, r3.decision_id}
    assert ids(new) == {r3.decision_id, r4.decision_id}
    assert old.stats.rejected == 1  # r4
    assert new.stats.rejected == 2  # r1, r2
    assert b.stats.rejected == a.stats.rejected == 0

    lines = [json.loads(line) for line in logs.splitlines()]  # every line is JSON
    refused = [line for line in lines if "subscriptions not reloaded" in line["message"]]
    assert len(refused) == 1, refused
    assert refused[0]["level"] == "ERROR"
    assert "Invalid JSON" in refused[0]["message"]
    reloads = [line["message"] for line in lines if "subscriptions reloaded" in line["message"]]
    assert len(reloads) == 2
    assert reloads[0].endswith("added crm-b")
    assert "removed crm-a" in reloads[1]
    assert "changed tool (secret, previous_secret, previous_secret_until)" in reloads[1]
    for secret in (a.settings.secret, b.settings.secret, old.settings.secret, new.settings.secret):
        assert secret not in logs


async def reload_count_is(port: int, result: str, expected: float) -> bool:
    return await reload_count(port, result) == expected

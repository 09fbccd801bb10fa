"""The webhooks service against the real embedded broker and real HTTP receivers.

Every test uses its own consumer group and campaign ids, so tests sharing the broker
(and reading the shared ``campaign.released.v1`` from the beginning) do not interfere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka.structs import TopicPartition
from standardwebhooks.webhooks import Webhook

from schemas import DlqEnvelope, Release
from services.kernel.config import KafkaSettings
from services.kernel.kafka.broker import EmbeddedBroker, free_port
from services.kernel.kafka.clients import make_consumer, make_producer
from services.kernel.kafka.topics import RELEASES, dlq_topic
from services.kernel.webhook_signing import secret_bytes, signed_headers
from services.receiver.app import Receiver
from services.receiver.settings import ReceiverSettings
from services.webhooks.service import WebhookService
from services.webhooks.settings import WebhooksSettings
from services.webhooks.subscriptions import load_subscriptions

pytestmark = pytest.mark.integration

# Tansu holds a group join for half the session timeout, and the first member of a group
# (generation 0) never sends LeaveGroup from aiokafka; short timeouts keep joins ~1 s.
FAST_GROUPS = {"session_timeout_s": 2.0, "rebalance_timeout_s": 1.0, "heartbeat_interval_s": 0.3}
WAIT_S = 20.0


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_release(campaign: str) -> Release:
    now = datetime.now(UTC).replace(microsecond=0)
    return Release(
        decision_id=unique("dec"),
        campaign_id=campaign,
        candidate_ref=unique("evt"),
        score_band="B",
        released_at=now,
        expires_at=now + timedelta(days=3),
    )


def kafka_settings(broker: EmbeddedBroker) -> KafkaSettings:
    return broker.settings().model_copy(update=FAST_GROUPS)


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll until ``check`` holds; the deadline is a hang guard, not a timing assertion."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# -- HTTP servers ----------------------------------------------------------------------


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def receiver(
    tmp_path: Path, fail_first: int = 0, throttle_first: int = 0
) -> AsyncIterator[tuple[str, Receiver]]:
    """The real demo receiver, in-process, with its own secret and out file."""
    settings = ReceiverSettings(
        secret=new_secret(),
        out=tmp_path / f"{unique('out')}.jsonl",
        fail_first=fail_first,
        throttle_first=throttle_first,
    )
    app = Receiver(settings)
    async with serve(app.app()) as url:
        yield url, app


def delivered_lines(app: Receiver) -> list[dict[str, Any]]:
    text = app.settings.out.read_text() if app.settings.out.exists() else ""
    return [json.loads(line) for line in text.splitlines()]


@dataclass
class Hit:
    at: float
    webhook_id: str
    verified: bool


@dataclass
class ScriptedTarget:
    """An endpoint answering from a script (then ``then``), recording every request."""

    secret: str = field(default_factory=new_secret)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    then: int = 200
    hits: list[Hit] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
            verified = True
        except Exception:
            verified = False
        self.hits.append(Hit(time.monotonic(), request.headers.get("webhook-id", ""), verified))
        status, headers = self.script.pop(0) if self.script else (self.then, {})
        return web.Response(status=status, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.handle)
        return app


# -- Kafka -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def producer(broker: EmbeddedBroker) -> AsyncIterator[Any]:
    producer = make_producer(broker.settings())
    await producer.start()
    yield producer
    await producer.stop()


async def publish(
    producer: Any, value: bytes | Release, key: str, partition: int | None = None
) -> tuple[int, int]:
    data = value.model_dump_json().encode() if isinstance(value, Release) else value
    metadata = await producer.send_and_wait(
        RELEASES, value=data, key=key.encode(), partition=partition
    )
    return int(metadata.partition), int(metadata.offset)


async def dead_letters(
    broker: EmbeddedBroker, expected: dict[str, int]
) -> dict[str, list[DlqEnvelope]]:
    """Read the DLQ from the start until each key has its expected number of envelopes."""
    consumer = make_consumer(broker.settings(), dlq_topic(RELEASES), group_id=None)
    await consumer.start()
    found: dict[str, list[DlqEnvelope]] = {key: [] for key in expected}
    try:
        async with asyncio.timeout(WAIT_S):
            while any(len(found[key]) < n for key, n in expected.items()):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        key = record.key.decode() if record.key else ""
                        if key in found:
                            found[key].append(DlqEnvelope.model_validate_json(record.value))
    finally:
        await consumer.stop()
    return found


async def committed(broker: EmbeddedBroker, group_id: str, partition: int) -> int | None:
    consumer = make_consumer(broker.settings(), group_id=group_id)
    await consumer.start()
    try:
        offset = await consumer.committed(TopicPartition(RELEASES, partition))
        return None if offset is None else int(offset)
    finally:
        await consumer.stop()


async def committed_past(broker: EmbeddedBroker, group_id: str, at: tuple[int, int]) -> bool:
    offset = await committed(broker, group_id, at[0])
    return offset is not None and offset > at[1]


# -- the service in-process ------------------------------------------------------------


@dataclass
class Running:
    service: WebhookService
    group_id: str
    task: asyncio.Task[None]


def subscriptions_file(tmp_path: Path, endpoints: list[dict[str, Any]]) -> Path:
    path = tmp_path / f"{unique('subscriptions')}.json"
    path.write_text(json.dumps({"endpoints": endpoints}))
    return path


def endpoint(name: str, url: str, secret: str, *campaigns: str) -> dict[str, Any]:
    return {"name": name, "url": url, "secret": secret, "campaigns": list(campaigns)}


@asynccontextmanager
async def webhooks(
    broker: EmbeddedBroker,
    tmp_path: Path,
    endpoints: list[dict[str, Any]],
    group_id: str | None = None,
    **overrides: Any,
) -> AsyncIterator[Running]:
    path = subscriptions_file(tmp_path, endpoints)
    options: dict[str, Any] = {
        "initial_backoff_s": 0.05,
        "max_backoff_s": 0.2,
        "commit_interval_s": 0.1,
        "shutdown_grace_s": 0.0,
        "request_timeout_s": 5.0,
        **overrides,
    }
    settings = WebhooksSettings(
        subscriptions_file=path, group_id=group_id or unique("test-webhooks"), **options
    )
    service = WebhookService(kafka_settings(broker), settings, load_subscriptions(path))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield Running(service, settings.group_id, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


# -- delivery --------------------------------------------------------------------------


async def test_releases_reach_each_subscriber_signed_with_its_secret_and_only_release_fields(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    card, loan = unique("card-upgrade"), unique("loan-offer")
    async with receiver(tmp_path) as (url_a, a), receiver(tmp_path) as (url_b, b):
        subscribers = [
            endpoint("crm-a", url_a, a.settings.secret, card),
            endpoint("crm-b", url_b, b.settings.secret, card, loan),
        ]
        releases = [make_release(card), make_release(card), make_release(loan)]
        async with webhooks(broker, tmp_path, subscribers):
            for release in releases:
                await publish(producer, release, release.decision_id)
            await eventually(lambda: a.stats.unique == 2 and b.stats.unique == 3, "deliveries")

        # Verified by the standardwebhooks library inside each receiver: nothing rejected.
        assert a.stats.rejected == b.stats.rejected == 0
        by_id = {line["webhook_id"]: line["payload"] for line in delivered_lines(b)}
        assert set(by_id) == {r.decision_id for r in releases}  # webhook-id = decision id
        for release in releases:
            payload = by_id[release.decision_id]
            assert set(payload) == {"type", "timestamp", "data"}
            assert payload["type"] == "candidate.released"
            # exactly the release's fields: no score inputs, features or partner names
            assert payload["data"] == json.loads(release.model_dump_json())
        assert {line["webhook_id"] for line in delivered_lines(a)} == {
            r.decision_id for r in releases[:2]
        }


async def test_a_500_is_retried_until_the_receiver_accepts(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("retry-500")
    async with receiver(tmp_path, fail_first=2) as (url, app):
        release = make_release(campaign)
        async with webhooks(
            broker, tmp_path, [endpoint("crm", url, app.settings.secret, campaign)]
        ):
            await publish(producer, release, release.decision_id)
            await eventually(lambda: app.stats.unique == 1, "delivery after two 500s")
        assert app.stats.received == 3
        assert [line["webhook_id"] for line in delivered_lines(app)] == [release.decision_id]


async def test_retry_after_on_429_is_honoured(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("throttled")
    target = ScriptedTarget(script=[(429, {"Retry-After": "1"})])
    async with serve(target.app()) as url:
        release = make_release(campaign)
        subscribers = [endpoint("crm", url, target.secret, campaign)]
        # backoff alone would retry after at most 0.05 s
        async with webhooks(broker, tmp_path, subscribers, initial_backoff_s=0.05):
            await publish(producer, release, release.decision_id)
            await eventually(lambda: len(target.hits) == 2, "the retry")
    first, second = target.hits
    assert second.at - first.at >= 0.95
    assert first.webhook_id == second.webhook_id == release.decision_id
    assert first.verified and second.verified  # each attempt re-signed, still valid


async def test_an_endpoint_that_keeps_failing_gets_the_release_dead_lettered(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("down")
    target = ScriptedTarget(then=503)
    closed_port = free_port()
    async with serve(target.app()) as url:
        subscribers = [
            endpoint("down", url, target.secret, campaign),
            endpoint("unreachable", f"http://127.0.0.1:{closed_port}/", new_secret(), campaign),
        ]
        release = make_release(campaign)
        async with webhooks(broker, tmp_path, subscribers, max_attempts=3) as running:
            at = await publish(producer, release, release.decision_id)
            letters = (await dead_letters(broker, {release.decision_id: 2}))[release.decision_id]
            # dead-lettered counts as finished: the offset moves past it
            await eventually(lambda: committed_past(broker, running.group_id, at), "commit")

    assert len(target.hits) == 3
    assert all(hit.verified and hit.webhook_id == release.decision_id for hit in target.hits)
    by_endpoint = {("unreachable" in e.error): e for e in letters}
    down, unreachable = by_endpoint[False], by_endpoint[True]
    for letter in (down, unreachable):
        assert letter.reason == "webhook-delivery-failed"
        assert letter.attempts == 3
        assert letter.source_topic == RELEASES
        assert letter.consumer == "webhooks"
        assert (letter.partition, letter.offset) == at
        assert letter.value_b64 is not None
        assert Release.model_validate_json(base64.b64decode(letter.value_b64)) == release
    assert "endpoint down" in down.error and "status 503" in down.error
    assert "3 attempt" in down.error
    assert "connection refused after 3 attempt" in unreachable.error


async def test_a_non_retryable_4xx_is_dead_lettered_without_retries(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("gone")
    target = ScriptedTarget(then=410)
    async with serve(target.app()) as url:
        release = make_release(campaign)
        subscribers = [endpoint("gone", url, target.secret, campaign)]
        async with webhooks(broker, tmp_path, subscribers, max_attempts=6):
            await publish(producer, release, release.decision_id)
            letters = await dead_letters(broker, {release.decision_id: 1})
    (letter,) = letters[release.decision_id]
    assert letter.reason == "webhook-rejected"
    assert letter.attempts == 1
    assert "status 410" in letter.error
    assert len(target.hits) == 1


async def test_garbage_is_dead_lettered_and_the_releases_around_it_still_delivered(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("mixed")
    before, after = make_release(campaign), make_release(campaign)
    not_json, wrong_shape = unique("garbage"), unique("garbage")
    wrong_shape_bytes = json.dumps({**json.loads(before.model_dump_json()), "pd": 0.1}).encode()
    async with receiver(tmp_path) as (url, app):
        subscribers = [endpoint("crm", url, app.settings.secret, campaign)]
        async with webhooks(broker, tmp_path, subscribers):
            # one partition, so the consumer must get past the garbage to reach `after`
            await publish(producer, before, before.decision_id, partition=0)
            await publish(producer, b"\x00not json at all", not_json, partition=0)
            await publish(producer, wrong_shape_bytes, wrong_shape, partition=0)
            await publish(producer, after, after.decision_id, partition=0)
            await eventually(lambda: app.stats.unique == 2, "both valid releases")
            letters = await dead_letters(broker, {not_json: 1, wrong_shape: 1})

    assert {line["webhook_id"] for line in delivered_lines(app)} == {
        before.decision_id,
        after.decision_id,
    }
    garbage = letters[not_json][0]
    assert garbage.reason == "invalid-schema"
    assert garbage.value_b64 is not None
    assert base64.b64decode(garbage.value_b64) == b"\x00not json at all"
    extra = letters[wrong_shape][0]
    assert extra.reason == "invalid-schema"
    assert "pd" in extra.error  # an extra field (a score!) is refused, never forwarded
    assert extra.value_b64 is not None
    assert base64.b64decode(extra.value_b64) == wrong_shape_bytes


async def test_a_release_nobody_subscribed_to_is_committed_and_not_delivered(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    subscribed, orphan = unique("subscribed"), unique("orphan")
    async with receiver(tmp_path) as (url, app):
        subscribers = [endpoint("crm", url, app.settings.secret, subscribed)]
        async with webhooks(broker, tmp_path, subscribers) as running:
            unwanted, wanted = make_release(orphan), make_release(subscribed)
            at = await publish(producer, unwanted, unwanted.decision_id, partition=1)
            await publish(producer, wanted, wanted.decision_id, partition=1)
            await eventually(lambda: committed_past(broker, running.group_id, at), "commit")
            await eventually(lambda: app.stats.unique == 1, "the subscribed release")
    assert app.stats.received == 1
    assert [line["webhook_id"] for line in delivered_lines(app)] == [wanted.decision_id]


async def test_a_release_in_flight_at_shutdown_is_redelivered_after_restart(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("restart")
    target = ScriptedTarget(then=503)
    group_id = unique("test-restart")
    async with serve(target.app()) as url:
        subscribers = [endpoint("crm", url, target.secret, campaign)]
        release = make_release(campaign)
        # first run: the endpoint is down and the retry is far away when we stop
        async with webhooks(
            broker, tmp_path, subscribers, group_id, initial_backoff_s=30.0, max_backoff_s=30.0
        ):
            at = await publish(producer, release, release.decision_id)
            await eventually(lambda: len(target.hits) == 1, "the first attempt")
        assert not await committed_past(broker, group_id, at)

        target.then = 200
        async with webhooks(broker, tmp_path, subscribers, group_id) as running:
            await eventually(lambda: len(target.hits) == 2, "redelivery")
            await eventually(lambda: committed_past(broker, running.group_id, at), "commit")
    assert [hit.webhook_id for hit in target.hits] == [release.decision_id] * 2


async def test_two_instances_share_the_partitions_and_every_release_is_delivered(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("scale-out")
    group_id = unique("test-scale-out")
    async with receiver(tmp_path) as (url, app):
        subscribers = [endpoint("crm", url, app.settings.secret, campaign)]
        first = [make_release(campaign) for _ in range(8)]
        second = [make_release(campaign) for _ in range(8)]
        async with webhooks(broker, tmp_path, subscribers, group_id):
            for release in first:
                await publish(producer, release, release.decision_id)
            await eventually(lambda: app.stats.unique == 8, "the first releases")
            # a second instance joins: the first gives up its partitions (rebalance)
            async with webhooks(broker, tmp_path, subscribers, group_id):
                placed = [
                    await publish(producer, release, release.decision_id) for release in second
                ]
                await eventually(lambda: app.stats.unique == 16, "the releases after it")

                async def all_committed() -> bool:
                    return all([await committed_past(broker, group_id, at) for at in placed])

                await eventually(all_committed, "commits")
    assert {line["webhook_id"] for line in delivered_lines(app)} == {
        release.decision_id for release in first + second
    }


# -- the receiver ----------------------------------------------------------------------


async def test_receiver_rejects_forgeries_and_acknowledges_replays_once(tmp_path: Path) -> None:
    async with receiver(tmp_path) as (url, app), aiohttp.ClientSession() as http:
        body = b'{"type":"candidate.released","data":{}}'
        now = int(time.time())
        genuine = signed_headers(secret_bytes(app.settings.secret), "dec-1", now, body)
        forged = signed_headers(secret_bytes(new_secret()), "dec-2", now, body)
        malformed = {**genuine, "webhook-signature": "not-a-signature"}
        stale = signed_headers(secret_bytes(app.settings.secret), "dec-3", now - 3600, body)

        statuses = []
        for headers in (forged, malformed, stale, genuine, genuine):
            async with http.post(url + "/hooks", data=body, headers=headers) as response:
                statuses.append(response.status)
        async with http.get(url + "/stats") as response:
            stats = await response.json()

    assert statuses == [401, 401, 401, 200, 200]
    assert stats == {"received": 5, "unique": 1, "rejected": 3, "duplicates": 1}
    assert [line["webhook_id"] for line in delivered_lines(app)] == ["dec-1"]


async def test_receiver_fault_injection_fails_then_throttles_then_accepts(tmp_path: Path) -> None:
    async with (
        receiver(tmp_path, fail_first=1, throttle_first=1) as (url, app),
        aiohttp.ClientSession() as http,
    ):
        body = b"{}"
        headers = signed_headers(secret_bytes(app.settings.secret), "dec-1", int(time.time()), body)
        answers = []
        for _ in range(3):
            async with http.post(url, data=body, headers=headers) as response:
                answers.append((response.status, response.headers.get("Retry-After")))
    assert answers == [(500, None), (429, "1"), (200, None)]


# -- the CLI ---------------------------------------------------------------------------


async def test_fedscreen_webhooks_run_delivers_and_stops_cleanly_on_sigterm(
    broker: EmbeddedBroker, producer: Any, tmp_path: Path
) -> None:
    campaign = unique("cli")
    metrics_port = free_port()
    group_id = unique("test-cli")
    async with receiver(tmp_path) as (url, app):
        path = subscriptions_file(tmp_path, [endpoint("crm", url, app.settings.secret, campaign)])
        env = {
            **os.environ,
            **broker.env(),
            **{f"KAFKA_{name.upper()}": str(value) for name, value in FAST_GROUPS.items()},
            "WEBHOOKS_SUBSCRIPTIONS_FILE": str(path),
            "WEBHOOKS_GROUP_ID": group_id,
            "WEBHOOKS_COMMIT_INTERVAL_S": "0.1",
            "WEBHOOKS_METRICS_PORT": str(metrics_port),
        }
        log_path = tmp_path / "webhooks.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                "webhooks",
                "run",
                env=env,
                stdout=log,
                stderr=log,
            )
        try:
            release = make_release(campaign)
            at = await publish(producer, release, release.decision_id)
            await eventually(lambda: app.stats.unique == 1, "delivery by the CLI process")
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
            ):
                metrics = await response.text()
            assert 'fedscreen_webhook_attempts_total{result="delivered"} 1.0' in metrics
            await eventually(lambda: committed_past(broker, group_id, at), "commit")
            process.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(process.wait(), WAIT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert returncode == 0, log_path.read_text()
        # FEDSCREEN_LOG_FORMAT=json, the default: every line is one JSON object
        log_lines = log_path.read_text().splitlines()
        assert log_lines
        assert all(isinstance(json.loads(line), dict) for line in log_lines), log_lines
    assert [line["webhook_id"] for line in delivered_lines(app)] == [release.decision_id]

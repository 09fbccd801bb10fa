"""The receiver's HTTP app: ``POST /`` (any path) takes webhooks, ``GET /stats`` counts them.

It behaves like a well-mannered campaign tool: it trusts nothing it cannot verify
(401 on a bad signature), acknowledges a replayed webhook-id without processing it
again (the sender delivers at least once), and can pretend to be unhealthy so retries
can be demonstrated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import IO

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.receiver.settings import ReceiverSettings

log = logging.getLogger(__name__)


@dataclass
class Stats:
    received: int = 0
    unique: int = 0
    rejected: int = 0
    duplicates: int = 0


class Receiver:
    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self.webhook = Webhook(settings.secret)
        self.stats = Stats()
        self.seen: set[str] = set()
        self._out: IO[str] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/stats", self.get_stats), web.post("/{path:.*}", self.post)])
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _: web.Application) -> None:
        self.settings.out.parent.mkdir(parents=True, exist_ok=True)
        # What was processed before a restart stays processed: a redelivery of it is a
        # duplicate, not a second campaign contact.
        before = self.settings.out.read_text("utf-8") if self.settings.out.exists() else ""
        for line in before.splitlines():
            try:
                self.seen.add(json.loads(line)["webhook_id"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        self._out = self.settings.out.open("a", encoding="utf-8")
        if before and not before.endswith("\n"):
            self._out.write("\n")  # close the line a crash cut short

    async def _close(self, _: web.Application) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    async def get_stats(self, _: web.Request) -> web.Response:
        return web.json_response(asdict(self.stats))

    async def post(self, request: web.Request) -> web.Response:
        self.stats.received += 1
        n = self.stats.received
        # Injected faults come first, as from a proxy in front of an overloaded app.
        if n <= self.settings.fail_first:
            return web.Response(status=500, text="injected failure")
        if n <= self.settings.fail_first + self.settings.throttle_first:
            return web.Response(
                status=429,
                text="injected throttling",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        body = await request.read()
        try:
            payload = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            return self._reject(request, str(exc))
        except ValueError as exc:
            # The library raises plain ValueErrors on malformed signature headers and on
            # bodies that are not UTF-8 JSON.
            return self._reject(request, f"malformed webhook: {exc}")
        webhook_id = request.headers["webhook-id"]
        if webhook_id in self.seen:
            self.stats.duplicates += 1
            return web.Response(status=200, text="duplicate")
        self.seen.add(webhook_id)
        self.stats.unique += 1
        self._record(webhook_id, payload)
        return web.Response(status=200, text="ok")

    def _reject(self, request: web.Request, why: str) -> web.Response:
        self.stats.rejected += 1
        log.warning(
            "rejected webhook %s from %s: %s",
            request.headers.get("webhook-id"),
            request.remote,
            why,
        )
        return web.Response(status=401, text="invalid signature")

    def _record(self, webhook_id: str, payload: object) -> None:
        assert self._out is not None, "the app's startup opens the out file"
        line = {
            "webhook_id": webhook_id,
            "received_at": datetime.now(UTC).isoformat(),
            "payload": payload,
        }
        # One small line, flushed at once so a reader (the demo's funnel) sees it.
        self._out.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._out.flush()

"""The subscriptions file, re-read at run time: endpoints and secrets change with no restart.

The file is checked every ``WEBHOOKS_SUBSCRIPTIONS_RELOAD_S`` and compared by content (a
sha256), not by modification time: in Kubernetes it is a mounted Secret or ConfigMap,
which the kubelet replaces by swapping a symlink, and the new file's mtime says nothing
reliable. A changed file that validates is in force for every delivery attempt from then
on. One that does not changes nothing: the last good subscriptions stay in force, and the
problem is logged once per distinct bad content (not on every check) and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from services.kernel.metrics import (
    WEBHOOK_SUBSCRIPTION_RELOADS,
    WEBHOOK_SUBSCRIPTIONS_FILE_VALID,
    WEBHOOK_SUBSCRIPTIONS_LOADED,
)
from services.webhooks.subscriptions import (
    Endpoint,
    Subscriptions,
    SubscriptionsError,
    parse_subscriptions,
    read_subscriptions,
)

log = logging.getLogger(__name__)

CheckResult = Literal["unchanged", "applied", "invalid"]
UNKNOWN_DIGEST = "unknown"


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def describe_changes(old: Subscriptions, new: Subscriptions) -> str:
    """What a reload changes, by endpoint name and field name: never a secret or a URL."""
    before = {endpoint.name: endpoint for endpoint in old.endpoints}
    after = {endpoint.name: endpoint for endpoint in new.endpoints}
    parts = []
    if added := [name for name in after if name not in before]:
        parts.append("added " + ", ".join(added))
    if removed := [name for name in before if name not in after]:
        parts.append("removed " + ", ".join(removed))
    changed = [
        f"{name} ({', '.join(fields)})"
        for name in after
        if name in before and (fields := _changed_fields(before[name], after[name]))
    ]
    if changed:
        parts.append("changed " + "; ".join(changed))
    return "; ".join(parts) or "no endpoint changed"


def _changed_fields(old: Endpoint, new: Endpoint) -> list[str]:
    return [field for field in Endpoint.model_fields if getattr(old, field) != getattr(new, field)]


class SubscriptionsWatcher:
    """Holds the subscriptions in force and replaces them when the file changes validly."""

    def __init__(
        self, path: Path, subscriptions: Subscriptions, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._subscriptions = subscriptions
        self._clock = clock
        self._refused: str | None = None
        """The digest (or read error) of the content last refused: it is reported once."""
        # The subscriptions given were loaded from this file just before: if it still
        # holds them, its digest is theirs; if not, the first check takes it as a change.
        self._digest = UNKNOWN_DIGEST
        try:
            content = read_subscriptions(path)
            if parse_subscriptions(content, path) == subscriptions:
                self._digest = digest(content)
        except SubscriptionsError:
            pass  # the first check reports it
        self._loaded_at = self._clock()
        self._publish()

    @property
    def subscriptions(self) -> Subscriptions:
        return self._subscriptions

    @property
    def sha256(self) -> str:
        """The sha256 of the file content in force (``unknown`` if it was never hashed)."""
        return self._digest

    def check(self) -> CheckResult:
        """Read the file once; apply it if its content changed and validates."""
        try:
            content = read_subscriptions(self.path)
        except SubscriptionsError as exc:
            return self._refuse(str(exc), str(exc))
        new_digest = digest(content)
        if new_digest == self._digest:
            if self._refused is not None:
                log.info(
                    "webhooks: subscriptions file %s holds the subscriptions in force again",
                    self.path,
                    extra={"sha256": new_digest},
                )
                self._refused = None
                WEBHOOK_SUBSCRIPTIONS_FILE_VALID.set(1)
            return "unchanged"
        if new_digest == self._refused:
            return "invalid"  # reported when first seen
        try:
            subscriptions = parse_subscriptions(content, self.path)
        except SubscriptionsError as exc:
            return self._refuse(new_digest, str(exc))
        changes = describe_changes(self._subscriptions, subscriptions)
        self._subscriptions, self._digest, self._refused = subscriptions, new_digest, None
        self._loaded_at = self._clock()
        self._publish()
        WEBHOOK_SUBSCRIPTION_RELOADS.labels(result="applied").inc()
        log.info(
            "webhooks: subscriptions reloaded from %s (sha256 %s), %d endpoint(s): %s",
            self.path,
            new_digest[:12],
            len(subscriptions.endpoints),
            changes,
            extra={"sha256": new_digest},
        )
        return "applied"

    def _refuse(self, key: str, problem: str) -> CheckResult:
        WEBHOOK_SUBSCRIPTIONS_FILE_VALID.set(0)
        if key != self._refused:
            self._refused = key
            WEBHOOK_SUBSCRIPTION_RELOADS.labels(result="invalid").inc()
            loaded_at = datetime.fromtimestamp(self._loaded_at, UTC).isoformat(timespec="seconds")
            log.error(
                "webhooks: subscriptions not reloaded: %s; the subscriptions loaded at %s "
                "(sha256 %s) stay in force",
                problem,
                loaded_at,
                self._digest[:12],
                extra={"sha256": self._digest},
            )
        return "invalid"

    def _publish(self) -> None:
        WEBHOOK_SUBSCRIPTIONS_LOADED.clear()
        WEBHOOK_SUBSCRIPTIONS_LOADED.labels(sha256=self._digest).set(self._loaded_at)
        WEBHOOK_SUBSCRIPTIONS_FILE_VALID.set(1)

    async def watch(self, interval_s: float) -> None:
        """Check every ``interval_s`` until cancelled (0: never)."""
        while interval_s > 0:
            await asyncio.sleep(interval_s)
            try:
                self.check()
            except Exception:  # a bug here must not stop the checks, nor the service
                log.exception("webhooks: checking the subscriptions file failed")

"""The subscriptions file re-read at run time: a valid change applied, an invalid one kept
out and reported once, a Kubernetes-style symlink swap noticed by content."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.webhooks.reload import SubscriptionsWatcher
from services.webhooks.subscriptions import load_subscriptions


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


SECRET_A, SECRET_B, SECRET_A2 = new_secret(), new_secret(), new_secret()


def endpoint(name: str, secret: str, *campaigns: str) -> dict[str, Any]:
    url = f"http://{name}.example/h"
    return {"name": name, "url": url, "secret": secret, "campaigns": campaigns}


def content(*endpoints: dict[str, Any]) -> bytes:
    return json.dumps({"endpoints": list(endpoints)}).encode()


FIRST = content(endpoint("crm-a", SECRET_A, "card"))
SECOND = content(endpoint("crm-a", SECRET_A2, "card", "loan"), endpoint("crm-b", SECRET_B, "*"))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reloads(result: str) -> float:
    return sample("fedscreen_webhook_subscription_reloads_total", result=result)


def file_valid() -> float:
    return sample("fedscreen_webhook_subscriptions_file_valid")


def loaded_at(data: bytes) -> float | None:
    sha = hashlib.sha256(data).hexdigest()
    return REGISTRY.get_sample_value(
        "fedscreen_webhook_subscriptions_loaded_timestamp_seconds", {"sha256": sha}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watching(path: Path, data: bytes, clock: Clock | None = None) -> SubscriptionsWatcher:
    path.write_bytes(data)
    return SubscriptionsWatcher(path, load_subscriptions(path), clock=clock or Clock())


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "services.webhooks.reload" and r.levelno == level
    ]


def test_a_valid_change_is_applied_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "subscriptions.json"
    clock = Clock()
    watcher = watching(path, FIRST, clock)
    assert watcher.sha256 == hashlib.sha256(FIRST).hexdigest()
    assert loaded_at(FIRST) == 1000.0
    assert watcher.check() == "unchanged"
    applied = reloads("applied")

    path.write_bytes(SECOND)
    clock.now = 2000.0
    assert watcher.check() == "applied"

    assert [e.name for e in watcher.subscriptions.for_campaign("loan")] == ["crm-a", "crm-b"]
    crm_a = watcher.subscriptions.subscriber("crm-a", "card")
    assert crm_a is not None and crm_a.secret == SECRET_A2
    assert reloads("applied") == applied + 1
    assert watcher.sha256 == hashlib.sha256(SECOND).hexdigest()
    assert loaded_at(SECOND) == 2000.0
    assert loaded_at(FIRST) is None  # one series: the subscriptions in force
    (line,) = records(caplog, logging.INFO)
    assert "subscriptions reloaded" in line and "2 endpoint(s)" in line
    assert "added crm-b" in line and "changed crm-a (secret, campaigns)" in line
    assert all(secret not in caplog.text for secret in (SECRET_A, SECRET_A2, SECRET_B))

    assert watcher.check() == "unchanged"  # checked again: nothing new
    assert reloads("applied") == applied + 1


def test_removing_an_endpoint_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "subscriptions.json"
    watcher = watching(path, SECOND)
    path.write_bytes(content(endpoint("crm-b", SECRET_B, "*")))
    assert watcher.check() == "applied"
    assert watcher.subscriptions.subscriber("crm-a", "card") is None
    (line,) = records(caplog, logging.INFO)
    assert line.endswith(": removed crm-a")


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (b"{not json", "Invalid JSON"),
        (content(endpoint("crm-a", "whsec_bad!", "card")), "endpoints.0.secret"),
        (
            content(endpoint("crm-a", SECRET_A, "card"), endpoint("crm-a", SECRET_B, "loan")),
            "duplicate endpoint names: crm-a",
        ),
    ],
)
def test_an_invalid_change_is_kept_out_and_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: bytes, problem: str
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "subscriptions.json"
    watcher = watching(path, FIRST)
    before = watcher.subscriptions
    invalid = reloads("invalid")

    path.write_bytes(bad)
    for _ in range(5):
        assert watcher.check() == "invalid"

    assert watcher.subscriptions is before  # the last good subscriptions stay in force
    assert watcher.sha256 == hashlib.sha256(FIRST).hexdigest()
    assert loaded_at(FIRST) == 1000.0
    assert reloads("invalid") == invalid + 1
    assert file_valid() == 0
    (line,) = records(caplog, logging.ERROR)  # once, not once per check
    assert problem in line and str(path) in line
    assert "stay in force" in line and hashlib.sha256(FIRST).hexdigest()[:12] in line
    assert "\n" not in line

    # Put back: the state clears, and the same mistake made again is reported again.
    path.write_bytes(FIRST)
    assert watcher.check() == "unchanged"
    assert file_valid() == 1
    path.write_bytes(bad)
    assert watcher.check() == "invalid"
    assert len(records(caplog, logging.ERROR)) == 2
    assert reloads("invalid") == invalid + 2


def test_each_distinct_bad_content_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "subscriptions.json"
    watcher = watching(path, FIRST)
    for bad in (b"{", b"{}", b"{", b"{"):
        path.write_bytes(bad)
        watcher.check()
    # three distinct changes of content ("{", "{}", "{"), the last one seen twice
    assert len(records(caplog, logging.ERROR)) == 3
    path.write_bytes(SECOND)
    assert watcher.check() == "applied"
    assert file_valid() == 1


def test_a_missing_file_keeps_the_subscriptions_and_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "subscriptions.json"
    watcher = watching(path, FIRST)
    path.unlink()
    assert [watcher.check() for _ in range(3)] == ["invalid"] * 3
    (line,) = records(caplog, logging.ERROR)
    assert "cannot read subscriptions file" in line
    assert [e.name for e in watcher.subscriptions.endpoints] == ["crm-a"]


def test_a_kubernetes_symlink_swap_is_noticed_by_content_not_mtime(tmp_path: Path) -> None:
    # The kubelet's layout: subscriptions.json -> ..data/subscriptions.json, and ..data is a
    # symlink to a timestamped directory that it swaps atomically on an update.
    mount = tmp_path / "mount"
    mount.mkdir()
    first, second = mount / "..2025_01_01", mount / "..2025_01_02"
    first.mkdir()
    second.mkdir()
    (first / "subscriptions.json").write_bytes(FIRST)
    (second / "subscriptions.json").write_bytes(SECOND)
    stamp = (first / "subscriptions.json").stat().st_mtime
    os.utime(second / "subscriptions.json", (stamp, stamp))  # the same mtime
    (mount / "..data").symlink_to(first.name)
    path = mount / "subscriptions.json"
    path.symlink_to("..data/subscriptions.json")
    watcher = SubscriptionsWatcher(path, load_subscriptions(path))

    swap = mount / "..data_tmp"
    swap.symlink_to(second.name)
    swap.replace(mount / "..data")  # rename(2): atomic
    assert watcher.check() == "applied"
    assert [e.name for e in watcher.subscriptions.endpoints] == ["crm-a", "crm-b"]


def test_a_file_changed_before_the_watcher_started_is_applied_at_the_first_check(
    tmp_path: Path,
) -> None:
    path = tmp_path / "subscriptions.json"
    path.write_bytes(FIRST)
    loaded = load_subscriptions(path)
    path.write_bytes(SECOND)
    watcher = SubscriptionsWatcher(path, loaded)
    assert watcher.sha256 == "unknown"
    assert watcher.check() == "applied"
    assert len(watcher.subscriptions.endpoints) == 2


async def test_watch_checks_on_its_interval(tmp_path: Path) -> None:
    path = tmp_path / "subscriptions.json"
    watcher = watching(path, FIRST)
    task = asyncio.create_task(watcher.watch(0.01))
    try:
        path.write_bytes(SECOND)
        async with asyncio.timeout(5):
            while len(watcher.subscriptions.endpoints) != 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    # 0: read only at start
    async with asyncio.timeout(1):
        await watcher.watch(0)

"""Prescreen scaled out: two workers with one app id split the partitions, decide exactly
what one worker decides, and a worker killed with kill -9 mid-stream loses and
duplicates nothing.

One pipeline for all three phases (the suite's time is the budget): the same customers
with the same features are sent as new events

1. to two workers (both announce readiness; intake waits for both),
2. to one worker, after the second stopped cleanly (and withdrew its announcement),
3. to two workers again, streamed, while the second is killed with kill -9 and restarted.

No quota and a frequency cap nobody reaches, so a candidate's decision depends only on
its features and the partners' data: every phase must give every customer the same
outcome, reasons, probability of default and band.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from schemas import Decision, ModelReady
from services.kernel.kafka.topics import MODEL_READY
from services.kernel.procs import ServiceProcess
from services.stack.pipeline import PipelineOptions
from tests.integration.harness import (
    Running,
    read_records,
    send_at_rate,
    send_candidates,
    start_pipeline,
    stop_pipeline,
    uncapped_policy,
    wait_for_decisions,
)

pytestmark = pytest.mark.integration

ROWS = 1_000
RATE = 250.0  # candidates/s in the kill -9 phase: 4 s of stream
KILL_AFTER_S = 1.5

Verdict = tuple[str, tuple[str, ...], float | None, str | None]


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    options = PipelineOptions(prescreen_workers=2)
    running = await start_pipeline(
        tmp_path_factory.mktemp("scale-out"), ROWS, uncapped_policy(), options
    )
    try:
        yield running
    finally:
        stop_pipeline(running)


def verdict(d: Decision) -> Verdict:
    return (d.outcome, tuple(r.value for r in d.reasons), d.pd, d.score_band)


async def decide(running: Running, phase: str) -> dict[str, Verdict]:
    """Every customer once, as a new event; the verdict by customer id."""
    events = [running.candidate(i, event_id=f"{phase}-{i}") for i in range(ROWS)]
    await send_candidates(running.settings, events)
    decisions = await wait_for_decisions(
        running.settings, [e.event_id for e in events], timeout_s=120.0
    )
    assert len(decisions) == ROWS, f"{phase}: {ROWS - len(decisions)} never decided"
    assert all(len(copies) == 1 for copies in decisions.values()), f"{phase}: duplicates"
    return {copies[0].customer_id: verdict(copies[0]) for copies in decisions.values()}


async def consumed(worker: ServiceProcess) -> float:
    """Inputs the worker's joiner took, from its /metrics."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fedscreen_messages_in_total{") and 'service="prescreen"' in line
    )


async def stream(running: Running, phase: str) -> list[str]:
    events = (running.candidate(i, event_id=f"{phase}-{i}") for i in range(ROWS))
    return await send_at_rate(running.settings, events, RATE)


async def last_announcement(running: Running, instance: str) -> ModelReady:
    records = await read_records(running.settings, MODEL_READY, idle_s=0.5)
    mine = [r for r in records if r.key == f"prescreen/{instance}".encode() and r.value]
    return ModelReady.model_validate_json(mine[-1].value)


async def test_two_workers_decide_as_one_and_lose_nothing_to_kill_9(running: Running) -> None:
    fleet = running.pipeline.fleet
    first, second = fleet["prescreen"], fleet["prescreen-2"]

    # 1. Two workers: each takes a share of the stream.
    before = [await consumed(first), await consumed(second)]
    two = await decide(running, "two")
    after = [await consumed(first), await consumed(second)]
    assert all(a > b for a, b in zip(after, before, strict=True)), "one worker did all the work"

    # 2. One worker: the second stops cleanly and says so on model.ready.v1.
    assert second.stop() == 0
    withdrawn = await last_announcement(running, "prescreen-2")
    assert withdrawn.withdrawn and withdrawn.model_versions == []
    one = await decide(running, "one")
    differing = {c: (one[c], two[c]) for c in one if one[c] != two[c]}
    assert not differing, f"{len(differing)} customers decided differently, e.g. {differing}"
    assert {v[0] for v in one.values()} == {"released", "suppressed"}  # a real policy ran

    # 3. Two workers, the second killed with kill -9 mid-stream and restarted.
    second.start()
    await second.wait_ready(timeout_s=90.0)

    async def kill_and_restart() -> None:
        await asyncio.sleep(KILL_AFTER_S)
        second.kill()
        second.start()
        await second.wait_ready(timeout_s=90.0)

    ids, _ = await asyncio.gather(stream(running, "kill"), kill_and_restart())
    decisions = await wait_for_decisions(running.settings, ids, timeout_s=120.0)
    missing = set(ids) - set(decisions)
    assert not missing, f"{len(missing)} candidates never decided, e.g. {sorted(missing)[:5]}"
    for event_id, copies in decisions.items():
        # Redelivered after the crash at most: the same decision id, saying the same.
        assert len({d.decision_id for d in copies}) == 1, event_id
        assert len({verdict(d) for d in copies}) == 1, f"{event_id} decided two ways: {copies}"
    killed = {copies[0].customer_id: verdict(copies[0]) for copies in decisions.values()}
    differing = {c: (killed[c], one[c]) for c in killed if killed[c] != one[c]}
    assert not differing, f"{len(differing)} customers decided differently, e.g. {differing}"
    redelivered = sum(len(c) for c in decisions.values()) - len(decisions)
    print(f"kill -9 phase: {len(decisions)} decided, {redelivered} redelivered copies")

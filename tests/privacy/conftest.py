"""A running serving pipeline the privacy attacks share: two partners as processes,
Paillier fragments, 40 candidates already decided (so there are real requests and
fragments on the topics)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.bench.fixtures import PartnerData
from services.demo import dataset as ds
from tests.integration.harness import (
    Running,
    reference_partners,
    send_candidates,
    start_pipeline,
    stop_pipeline,
    uncapped_policy,
    wait_for_decisions,
)


def flagging_partners(table: ds.Table) -> list[PartnerData]:
    """The reference partners, payments flagging every fourth customer: enough flags in a
    few batches for an attack on them to have something to find."""
    partners = reference_partners(table)
    payments = next(p for p in partners if p.name == "payments")
    payments.blacklisted[:] = False
    payments.blacklisted[::4] = True
    return partners


@pytest.fixture(scope="package")
async def serving(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    running = await start_pipeline(
        tmp_path_factory.mktemp("serving"), 60, uncapped_policy(), partners_of=flagging_partners
    )
    try:
        events = [running.candidate(i, event_id=f"real-{i}") for i in range(40)]
        await send_candidates(running.settings, events)
        await wait_for_decisions(running.settings, [e.event_id for e in events])
        yield running
    finally:
        stop_pipeline(running)

"""A running serving pipeline the privacy attacks share: two partners as processes,
Paillier fragments, 40 candidates already decided (so there are real requests and
fragments on the topics)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from services.stack import dataset as ds
from services.stack.fixtures import PartnerData
from services.stack.pipeline import PipelineOptions
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


@asynccontextmanager
async def flagging_pipeline(
    root: Path, tag: str, options: PipelineOptions | None = None
) -> AsyncIterator[Running]:
    """The pipeline with :func:`flagging_partners`, 40 candidates already decided."""
    running = await start_pipeline(
        root, 60, uncapped_policy(), options, partners_of=flagging_partners
    )
    try:
        events = [running.candidate(i, event_id=f"{tag}-{i}") for i in range(40)]
        await send_candidates(running.settings, events)
        await wait_for_decisions(running.settings, [e.event_id for e in events])
        yield running
    finally:
        stop_pipeline(running)


@pytest.fixture(scope="package")
async def serving(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with flagging_pipeline(tmp_path_factory.mktemp("serving"), "real") as running:
        yield running

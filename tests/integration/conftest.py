"""One embedded broker per test session, with every topic of the demo's partners created."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.topics import all_topics

PARTNERS = ("repayments", "payments")


@pytest.fixture(scope="session")
async def broker() -> AsyncIterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(partitions=4, topics=all_topics(PARTNERS))
    async with embedded:
        yield embedded

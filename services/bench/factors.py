"""The partners' pools of re-randomisation factors, read from their /metrics.

A partner answers from factors it computed ahead (services/kernel/crypto/randomness.py),
so a flood is served at two very different costs: from a full pool, or at the rate the
partner can compute factors once it is drained. The benchmark starts its throughput
phase with full pools and reports what each partner had left and computed inline, so
that a reader can tell the two apart."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from services.bench.session import PipelineSession

READY = "fedscreen_partner_factors_ready"
INLINE = "fedscreen_partner_factors_inline"  # the parser drops a counter's _total


@dataclass(frozen=True)
class FactorPools:
    """Per partner: factors ready, and factors computed on the request path so far."""

    ready: dict[str, int]
    inline: dict[str, int]


async def read_pools(session: PipelineSession) -> FactorPools:
    ready: dict[str, int] = {}
    inline: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:
        for name, service in session.pipeline.fleet.services.items():
            if not name.startswith("partner-"):
                continue
            partner = name.removeprefix("partner-")
            url = f"http://127.0.0.1:{service.metrics_port}/metrics"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                text = await response.text()
            ready[partner], inline[partner] = 0, 0
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.labels.get("partner") != partner:
                        continue
                    if sample.name == READY:
                        ready[partner] = int(sample.value)
                    elif sample.name == f"{INLINE}_total":
                        inline[partner] = int(sample.value)
    return FactorPools(ready, inline)


async def wait_for_full_pools(
    session: PipelineSession, target: int, timeout_s: float
) -> FactorPools:
    """Until every partner has ``target`` factors ready, or the timeout; the pools as
    they were at the end (the caller reports them either way)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pools = await read_pools(session)
        full = all(count >= target for count in pools.ready.values())
        if full or time.monotonic() >= deadline:
            return pools
        await asyncio.sleep(0.5)

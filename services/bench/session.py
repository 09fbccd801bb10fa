"""The start-up and shut-down every pipeline run of the benchmark shares (``fedscreen
bench``'s modes and ``--soak``): a fresh work root, a quick model, the embedded broker,
the pipeline's processes, the harness's decision collector and candidate producer."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiokafka import AIOKafkaProducer

from schemas import PolicyConfig
from services.bench.capacity import BROKER
from services.bench.load import DecisionCollector
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.clients import make_producer
from services.kernel.kafka.topics import all_topics
from services.stack.fixtures import BankData, Deployment, PartnerData, build_quick_model
from services.stack.pipeline import Pipeline, PipelineOptions

Say = Callable[[str], None]


@dataclass
class PipelineSession:
    """A running pipeline on its own broker, with the harness's clients started."""

    deployment: Deployment
    broker: EmbeddedBroker
    pipeline: Pipeline
    collector: DecisionCollector
    producer: AIOKafkaProducer
    partners: list[str]  # partner names, as the topics and services are named

    def pids(self) -> dict[str, int]:
        """The pipeline's running processes and the broker's, by name."""
        pids = {
            name: s.process.pid
            for name, s in self.pipeline.fleet.services.items()
            if s.process is not None
        }
        if self.broker.process is not None:
            pids[BROKER] = self.broker.process.pid
        return pids


class Parties(Protocol):
    """Every party's data (the benchmark's ``World``)."""

    @property
    def bank(self) -> BankData: ...
    @property
    def partners(self) -> Sequence[PartnerData]: ...
    @property
    def policy(self) -> PolicyConfig: ...


class StartTimes(Protocol):
    """Where a run records how long its start took (``ModeRun``, ``SoakResult``)."""

    model_build_s: float
    pipeline_start_s: float


@asynccontextmanager
async def running_pipeline(
    root: Path,
    world: Parties,
    options: PipelineOptions,
    times: StartTimes,
    *,
    label: str,
    model_version: str,
    key_bits: int,
    partitions: int,
    say: Say,
) -> AsyncIterator[PipelineSession]:
    """Empty ``root``, build a quick model in it (plaintext when ``options.plaintext``),
    start a broker and the pipeline with that model, then the collector and producer;
    on leaving, stop producer, collector and pipeline (in that order), then the broker.
    The model build and pipeline start times go to ``times`` as they are measured;
    ``label`` prefixes the progress lines (``[label] pipeline ready in …s``)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    plaintext = options.plaintext
    say(f"[{label}] building the model ({'no keys' if plaintext else 'Paillier'})")
    started = time.monotonic()
    deployment = Deployment.at(root)
    bank_bundle, partner_bundles, _ = build_quick_model(
        deployment,
        world.bank,
        world.partners,
        world.policy,
        model_version=model_version,
        key_bits=key_bits,
        plaintext=plaintext,
    )
    times.model_build_s = time.monotonic() - started
    names = [p.name for p in world.partners]
    broker = EmbeddedBroker(
        partitions=partitions, topics=all_topics(names), log_path=root / "broker.log"
    )
    async with broker:
        pipeline = Pipeline(broker, deployment, names, options)
        collector = DecisionCollector(broker.settings())
        producer = make_producer(broker.settings())
        try:
            started = time.monotonic()
            await pipeline.start(bank_bundle, partner_bundles)
            times.pipeline_start_s = time.monotonic() - started
            say(f"[{label}] pipeline ready in {times.pipeline_start_s:.1f}s")
            await collector.start()
            await producer.start()
            yield PipelineSession(deployment, broker, pipeline, collector, producer, names)
        finally:
            await producer.stop()
            await collector.stop()
            pipeline.stop()

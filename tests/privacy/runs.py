"""Real runs for the attacks to work on: federated training over the embedded broker
with the partners as processes, keeping what the bank holds (services/training/trace.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.audit.curious_bank import PartnerTruth
from services.kernel.crypto.tokens import load_token_source
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.topics import all_topics
from services.partner.store import FeatureStore
from services.stack import dataset as ds
from services.stack.fixtures import Deployment
from services.stack.pipeline import Pipeline, PipelineOptions
from services.training.run import TrainResult, run_training
from services.training.trace import TrainingTrace
from tests.integration.harness import load_partner_stores, training_job

ROWS = 2400


@dataclass
class TrainingRun:
    broker: EmbeddedBroker
    pipeline: Pipeline
    table: ds.Table
    result: TrainResult
    trace: TrainingTrace
    partners: dict[str, list[str]]

    @property
    def deployment(self) -> Deployment:
        return self.pipeline.deployment

    def truths(self) -> list[PartnerTruth]:
        """Each partner's bins for every listed row, from its own store and binning: the
        harness sees every party; no service does."""
        out = []
        session = f"train-{self.result.model_version}"
        for name in self.partners:
            tokens = load_token_source(self.deployment.token_dir, name, allow_hmac=True)
            store = FeatureStore(self.deployment.partner_dbs[name])
            try:
                binning = store.binning(session)
                assert binning is not None
                values, _ = store.lookup([tokens.token(i) or "" for i in self.trace.ids])
            finally:
                store.close()
            out.append(PartnerTruth(name, binning.transform(values), binning.bins_per_feature))
        return out

    def stop(self) -> None:
        self.pipeline.stop()
        self.broker.stop()


async def train(root: Path, partners: dict[str, list[str]], *, rounds: int = 3) -> TrainingRun:
    """Train a model on ROWS rows of the bundled data with these partners (one alone is
    a one-partner federation: its partner opts in with PARTNER_MIN_PARTICIPANTS=1)."""
    table, _ = ds.split(ds.load(), test_size=1 - ROWS / 30000, seed=5)
    train_rows, test_rows = ds.split(table)
    deployment = Deployment.at(root)
    load_partner_stores(deployment, table, partners)
    names = list(partners)
    broker = EmbeddedBroker(partitions=2, topics=all_topics(names), log_path=root / "broker.log")
    await broker.start()
    alone = {"PARTNER_MIN_PARTICIPANTS": "1"} if len(names) == 1 else {}
    options = PipelineOptions(extra_env={f"partner-{n}": alone for n in names})
    pipeline = Pipeline(broker, deployment, names, options)
    try:
        await pipeline.start_partners()
        job = training_job(
            deployment,
            train_rows,
            test_rows,
            names,
            root / "models",
            rounds=rounds,
            model_version="m-privacy",
            trace_dir=root / "trace",
        )
        result = await run_training(job, broker.settings())
    except BaseException:
        pipeline.stop()
        broker.stop()
        raise
    trace = TrainingTrace.load(root / "trace" / "trace.npz")
    assert np.all(np.isfinite(trace.gradients[0]))
    return TrainingRun(broker, pipeline, table, result, trace, partners)

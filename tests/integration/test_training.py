"""Federated training over Kafka: real partner processes, real Paillier keys."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.bench.fixtures import Deployment, PartnerData
from services.bench.pipeline import Pipeline
from services.demo import dataset as ds
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.topics import TRAINING_TO_BANK, all_topics, training_topic
from services.training.policy_file import load_policy
from services.training.run import TrainJob, TrainResult, run_training
from services.training.trainer import BankRows, TrainParams
from tests.integration.harness import PARTNERS, POLICY_FILE, read_all

pytestmark = pytest.mark.integration
ROWS = 2400
B64 = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Trained:
    broker: EmbeddedBroker
    pipeline: Pipeline
    table: ds.Table
    test: ds.Table
    result: TrainResult


@pytest.fixture(scope="module")
async def trained(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trained]:
    root = tmp_path_factory.mktemp("training")
    table, _ = ds.split(ds.load(), test_size=1 - ROWS / 30000, seed=3)
    train, test = ds.split(table)
    deployment = Deployment.at(root)
    for name, columns in ds.REFERENCE_PARTNERS.items():
        data = PartnerData(name, columns, table.select(columns), ds.blacklist(table, name))
        deployment.load_partner_store(data, table.ids).close()
    broker = EmbeddedBroker(partitions=4, topics=all_topics(PARTNERS), log_path=root / "broker.log")
    await broker.start()
    pipeline = Pipeline(broker, deployment, PARTNERS)
    try:
        await pipeline.start_partners()
        job = TrainJob(
            train=BankRows(train.ids, train.select(ds.BANK_FEATURES), train.column(ds.LABEL)),
            test=BankRows(test.ids, test.select(ds.BANK_FEATURES), test.column(ds.LABEL)),
            bank_features=ds.BANK_FEATURES,
            partners=PARTNERS,
            token_keys_dir=deployment.token_dir,
            paillier_dir=deployment.paillier_dir,
            policy=load_policy(POLICY_FILE),
            out_dir=root / "models",
            # With cross-fitting: the second session runs over Kafka next to the first.
            params=TrainParams(rounds=2, patience=2, cross_fit=True),
            model_version="m-train-test",
            timeout_s=300,
        )
        result = await run_training(job, broker.settings())
        yield Trained(broker, pipeline, table, test, result)
    finally:
        pipeline.stop()
        broker.stop()


async def test_training_beats_the_bank_alone_and_writes_bundles(trained: Trained) -> None:
    metrics = trained.result.trained.metrics
    assert metrics["rounds_run"] >= 1
    assert metrics["test_auc"] > metrics["test_auc_bank_only"] + 0.05
    directory = trained.result.bank.model_version
    out = Path(trained.pipeline.deployment.root / "models" / directory)
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["test_auc"] == pytest.approx(metrics["test_auc"])
    assert {p.name for p in out.glob("*.json")} == {
        "bank-bundle.json",
        "partner-repayments.json",
        "partner-payments.json",
        "report.json",
    }
    scores = (out / "test_scores.csv").read_text().splitlines()
    assert scores[0] == "id,score" and len(scores) == len(trained.test.ids) + 1
    # the bank's scorecards cover exactly the partners' (unnamed) bins
    for card in trained.result.bank.partners:
        assert [len(row) for row in card.weights] == card.bins_per_feature


async def test_partners_load_the_rolled_out_model(trained: Trained) -> None:
    for partner in PARTNERS:
        await trained.pipeline.fleet[f"partner-{partner}"].wait_ready(timeout_s=60)


async def test_the_bank_receives_no_partner_feature_name_value_or_bin_edge(
    trained: Trained,
) -> None:
    received = await read_all(trained.broker.settings(), TRAINING_TO_BANK)
    assert received
    text = b"\n".join(received).decode()
    for columns in ds.REFERENCE_PARTNERS.values():
        for name in columns:
            assert f'"{name}"' not in text
    for message in map(json.loads, (v for v in received if v.startswith(b"{"))):
        assert message["kind"] in {"ready", "scores", "histograms"}
        if message["kind"] == "ready":
            assert all(isinstance(b, int) for b in message["bins_per_feature"])
            assert set(message) == {"kind", "session_id", "partner", "bins_per_feature"}
        elif message["kind"] == "scores":
            assert all(B64.match(c) for c in message["ciphertexts"])
        else:
            assert all(B64.match(c) for row in message["ciphertexts"] for c in row)
    # no raw partner value shows up as a number anywhere the bank reads
    bills = trained.table.select(["BILL_AMT1"])[:, 0]
    distinctive = [v for v in np.unique(bills) if abs(v) > 10_000][:50]
    for value in distinctive:
        assert re.search(rf"(?<![\w.]){value:.1f}(?![\w])", text) is None


async def test_partners_receive_no_label_gradient_or_bank_feature(trained: Trained) -> None:
    for partner in PARTNERS:
        received = await read_all(trained.broker.settings(), training_topic(partner))
        assert received
        text = b"\n".join(received).decode()
        for name in [*ds.BANK_FEATURES, ds.LABEL]:
            assert f'"{name}"' not in text
        for customer in trained.table.ids[:200]:
            assert f'"{customer}"' not in text
        for message in map(json.loads, (v for v in received if v.startswith(b"{"))):
            assert message["kind"] in {"start", "weights", "gradients", "finish"}
            if message["kind"] == "gradients":
                assert all(B64.match(c) and len(c) > 500 for c in message["ciphertexts"])
            if message["kind"] == "weights":
                assert all(B64.match(c) and len(c) > 500 for r in message["tables"] for c in r)


async def test_cross_fitting_runs_a_second_session_over_the_same_rows(trained: Trained) -> None:
    metrics = trained.result.trained.metrics
    assert metrics["cross_fit_folds"] == 3.0
    assert 0.5 < metrics["test_auc_stacked"] <= 1.0
    assert 0.5 < metrics["test_auc_stacked_in_sample"] <= 1.0
    assert all("cross_fit_val_auc" in h for h in trained.result.trained.history[1:])
    session = "train-m-train-test"
    for partner in PARTNERS:
        received = await read_all(trained.broker.settings(), training_topic(partner))
        messages = [json.loads(v) for v in received if v.startswith(b"{")]
        starts = {m["session_id"]: m for m in messages if m["kind"] == "start"}
        assert set(starts) == {session, f"{session}.xf"}
        main, second = starts[session], starts[f"{session}.xf"]
        assert second["tokens"] == main["tokens"]  # the same fit rows: the same bins
        assert second["eval_tokens"] == main["eval_tokens"][: len(second["eval_tokens"])]
        rounds = {(m["session_id"], m["round"]) for m in messages if m["kind"] == "weights"}
        assert rounds == {(s, r) for s in (session, f"{session}.xf") for r in (1, 2)}
        finished = {m["session_id"] for m in messages if m["kind"] == "finish"}
        assert finished == {session, f"{session}.xf"}

"""Federated training over Kafka: real partner processes, real Paillier keys."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.audit.transcript import read_messages
from services.kernel.crypto.signing import PartnerKeyRegistry
from services.kernel.crypto.tokens import load_token_source
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.topics import MODEL_READY, TRAINING_TO_BANK, all_topics, training_topic
from services.kernel.model.rollout import ReadinessBoard
from services.partner.store import FeatureStore
from services.stack import dataset as ds
from services.stack.fixtures import Deployment
from services.stack.pipeline import Pipeline
from services.training.run import TrainResult, run_training
from tests.integration.harness import PARTNERS, load_partner_stores, read_records, training_job

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
    load_partner_stores(deployment, table, ds.REFERENCE_PARTNERS)
    broker = EmbeddedBroker(partitions=4, topics=all_topics(PARTNERS), log_path=root / "broker.log")
    await broker.start()
    pipeline = Pipeline(broker, deployment, PARTNERS)
    try:
        await pipeline.start_partners()
        job = training_job(
            deployment,
            train,
            test,
            PARTNERS,
            root / "models",
            rounds=2,
            model_version="m-train-test",
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
    # No weight travels: the partner bundles name the session whose encrypted weights
    # each partner stored, and the bank bundle knows only the bin counts.
    bundle = json.loads((out / "partner-repayments.json").read_text())
    assert "tables" not in bundle and bundle["binning_id"] == "train-m-train-test"
    for card in json.loads((out / "bank-bundle.json").read_text())["partners"]:
        assert set(card) == {"partner", "bins_per_feature"}
    for partner in PARTNERS:
        store = FeatureStore(trained.pipeline.deployment.partner_dbs[partner])
        scorecard = store.scorecard("train-m-train-test")
        store.close()
        assert scorecard is not None and scorecard.key_id == trained.result.bank.key_id
        assert all(len(str(w)) > 600 for w in scorecard.weights)  # ciphertexts, not weights


async def readiness_board(trained: Trained, version: str, timeout_s: float) -> ReadinessBoard:
    """model.ready.v1 as intake reads it (only announcements signed by their partner's
    key count), once every partner's live instances list ``version``: a partner announces
    right after its tables are built, so the record can trail /readyz by a moment."""
    registry = PartnerKeyRegistry.parse(trained.pipeline.deployment.registry_spec)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        board = ReadinessBoard(trained.broker.settings(), registry)
        for record in await read_records(trained.broker.settings(), MODEL_READY, idle_s=0.5):
            board.offer(record.value)
        if board.all_ready(PARTNERS, version) or loop.time() > deadline:
            return board
        await asyncio.sleep(0.5)


async def test_partners_load_the_rolled_out_model(trained: Trained) -> None:
    """Ready is not enough: every partner serves the very version training rolled out, as
    its signed announcement on model.ready.v1 says (what intake activates a version by)
    and its log confirms. Prescreen is not part of this module (no bank bundle is served)."""
    version = trained.result.bank.model_version
    assert {b.model_version for b in trained.result.partners.values()} == {version}
    for partner in PARTNERS:
        await trained.pipeline.fleet[f"partner-{partner}"].wait_ready(timeout_s=60)
    board = await readiness_board(trained, version, timeout_s=30)
    for partner in PARTNERS:
        live = board.live(partner)
        assert live, f"no live announcement from {partner}"
        assert all(m.model_versions == [version] for m in live), live
        log = trained.pipeline.fleet[f"partner-{partner}"].log_path.read_text()
        assert f"model {version} ready in" in log


async def test_the_bank_receives_no_partner_feature_name_value_or_bin_edge(
    trained: Trained,
) -> None:
    received = await read_messages(trained.broker.settings(), TRAINING_TO_BANK)
    assert received
    text = b"\n".join(received).decode()
    for columns in ds.REFERENCE_PARTNERS.values():
        for name in columns:
            assert f'"{name}"' not in text
    for message in map(json.loads, (v for v in received if v.startswith(b"{"))):
        assert message["kind"] in {"ready", "scores", "truncate", "done"}
        if message["kind"] == "ready":
            assert all(isinstance(b, int) for b in message["bins_per_feature"])
            assert set(message) == {
                "kind",
                "session_id",
                "partner",
                "bins_per_feature",
                "signature",
            }
        elif message["kind"] in {"scores", "truncate"}:
            assert all(B64.match(c) for c in message["ciphertexts"])
        else:
            assert set(message) == {"kind", "session_id", "partner", "signature"}
    # no raw partner value shows up as a number anywhere the bank reads
    bills = trained.table.select(["BILL_AMT1"])[:, 0]
    distinctive = [v for v in np.unique(bills) if abs(v) > 10_000][:50]
    for value in distinctive:
        assert re.search(rf"(?<![\w.]){value:.1f}(?![\w])", text) is None


async def test_partners_receive_no_label_gradient_or_bank_feature(trained: Trained) -> None:
    for partner in PARTNERS:
        received = await read_messages(trained.broker.settings(), training_topic(partner))
        assert received
        text = b"\n".join(received).decode()
        for name in [*ds.BANK_FEATURES, ds.LABEL]:
            assert f'"{name}"' not in text
        for customer in trained.table.ids[:200]:
            assert f'"{customer}"' not in text
        for message in map(json.loads, (v for v in received if v.startswith(b"{"))):
            assert message["kind"] in {"start", "round", "finish", "truncated"}
            if message["kind"] == "round":
                assert all(B64.match(c) and len(c) > 500 for c in message["gradients"])
            if message["kind"] == "truncated":
                assert all(B64.match(c) and len(c) > 500 for c in message["ciphertexts"])


async def test_the_partners_see_one_shuffled_list_of_rows(trained: Trained) -> None:
    """Held-out rows look like the others: not a block of the list, and their gradient
    ciphertexts are as long as any (encrypted zeros)."""
    test_ids = set(trained.test.ids)
    tokens = load_token_source(trained.pipeline.deployment.token_dir, "payments", allow_hmac=True)
    held_out = {tokens.token(i) for i in test_ids}
    received = await read_messages(trained.broker.settings(), training_topic("payments"))
    start = next(m for m in map(json.loads, received) if m.get("kind") == "start")
    positions = [i for i, t in enumerate(start["tokens"]) if t in held_out]
    assert len(positions) == len(test_ids)
    assert positions[-1] - positions[0] > 0.8 * len(start["tokens"])
    assert "eval_tokens" not in start

"""Cross-fitting the stacker's partner score (services/training/crossfit.py).

The trainer runs here against the real partner side (``TrainingWorker`` on a SQLite
feature store) with real 2048-bit Paillier, in process: the coordinator below hands each
message to the partner's worker instead of Kafka, through the JSON wire format.
"""

from __future__ import annotations

import asyncio
import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from aiokafka.errors import KafkaError
from sklearn.metrics import roc_auc_score

from schemas.training import TO_BANK, TO_PARTNER, ToPartner
from services.kernel.config import KafkaSettings
from services.kernel.crypto.packing import FragmentTables, PackingOverflowError
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.tokens import Tokenizer
from services.partner.store import FeatureStore
from services.partner.training import TrainingWorker
from services.training.coordinator import Coordinator
from services.training.crossfit import (
    decode_fold_scores,
    encode_fold_tables,
    fold_ids,
    fold_layout,
)
from services.training.gradients import (
    decode_field_plaintexts,
    encode_fields,
    gradient_packing,
    max_fields,
)
from services.training.parallel import CryptoPool
from services.training.trainer import BankRows, FederatedTrainer, Trained, TrainParams

PARTNERS = {"signal": ["a1", "a2"], "noise": ["n1"]}


class InProcessCoordinator(Coordinator):
    """The real ``Coordinator`` (sessions, matching replies), partners in process."""

    def __init__(self, session_id: str, workers: dict[str, TrainingWorker]) -> None:
        super().__init__(KafkaSettings(), session_id, list(workers), timeout_s=5.0)
        self.workers = workers
        self.sent: list[ToPartner] = []

    async def send(self, partner: str, message: ToPartner) -> None:
        payload = message.model_dump_json()
        self.bytes_sent[partner] += len(payload)
        received = TO_PARTNER.validate_json(payload)
        self.sent.append(received)
        reply = self.workers[partner].handle(received)
        if reply is not None:
            whole = reply.model_dump_json()
            self.bytes_received[partner] += len(whole)
            self._inbox.append(TO_BANK.validate_json(whole))

    async def _poll(self) -> None:
        await asyncio.sleep(0.01)  # every reply is already in the inbox


class FixedSplitTrainer(FederatedTrainer):
    """The fit/validation split is stratified on the label; holding it fixed lets a test
    change labels and see what else changes."""

    split: tuple[np.ndarray, np.ndarray]

    def _split(self, train: BankRows) -> tuple[np.ndarray, np.ndarray]:
        return self.split


@dataclass
class World:
    train: BankRows
    test: BankRows
    stores: dict[str, Path]
    token_keys: dict[str, bytes]
    split: tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Bank features, one informative partner and one partner of pure noise (16
    quantile bins of a uniform variable): a scorecard fitted on few rows with a weak L2
    penalty fits that noise, so in-sample scores carry the rows' own labels."""
    root = tmp_path_factory.mktemp("crossfit")
    rng = np.random.default_rng(7)
    n = 1100
    ids = [f"c{i:05d}" for i in range(n)]
    bank = rng.normal(size=(n, 2))
    values = {
        "a1": rng.normal(size=n),
        "a2": rng.integers(0, 5, size=n).astype(float),
        "n1": rng.random(n),
    }
    logit = -1.0 + 0.8 * bank[:, 0] + 1.0 * values["a1"] + 0.7 * (values["a2"] == 3)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    stores, token_keys = {}, {}
    for partner, columns in PARTNERS.items():
        path = root / f"{partner}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", *columns])
            for i in range(n):
                writer.writerow([ids[i], *(repr(float(values[c][i])) for c in columns)])
        token_keys[partner] = rng.bytes(32)
        store = FeatureStore(root / f"{partner}.sqlite")
        store.load_csv(
            path, id_column="id", features=columns, tokenizer=Tokenizer(token_keys[partner])
        )
        store.close()
        stores[partner] = root / f"{partner}.sqlite"
    n_train = 800
    train = BankRows(ids[:n_train], bank[:n_train], y[:n_train])
    test = BankRows(ids[n_train:], bank[n_train:], y[n_train:])
    order = np.random.default_rng(1).permutation(n_train)
    split = (np.sort(order[:640]), np.sort(order[640:]))
    return World(train, test, stores, token_keys, split)


def _train(
    world: World, key: PrivateKey, params: TrainParams, y: np.ndarray | None = None
) -> tuple[Trained, InProcessCoordinator]:
    workers = {
        k: TrainingWorker(k, FeatureStore.open_existing(world.stores[k]), max_bins=32)
        for k in PARTNERS
    }
    coordinator = InProcessCoordinator("train-crossfit-test", workers)
    tokenizers = {k: Tokenizer(world.token_keys[k]) for k in PARTNERS}
    trainer = FixedSplitTrainer(coordinator, key, dict(tokenizers), params, pool=CryptoPool(key))
    trainer.split = world.split
    train = world.train if y is None else BankRows(world.train.ids, world.train.x, y)
    try:
        trained = asyncio.run(trainer.fit(train, world.test))
    finally:
        for worker in workers.values():
            worker.store.close()
    return trained, coordinator


PARAMS = TrainParams(rounds=3, patience=3, l2=1.0, max_bins=12, cross_fit_folds=3)


@pytest.fixture(scope="module")
def cross_fitted(world: World, private_key: PrivateKey) -> tuple[Trained, InProcessCoordinator]:
    params = replace(PARAMS, cross_fit=True)
    return _train(world, private_key, params)


def _flip_fold(world: World, trained: Trained, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with every fit row of ``fold`` flipped, and a mask of those fit rows."""
    assert world.train.y is not None and trained.folds is not None
    fit_rows = world.split[0]
    mask = trained.folds == fold
    y = world.train.y.copy()
    y[fit_rows[mask]] = 1.0 - y[fit_rows[mask]]
    return y, mask


def test_a_rows_stacker_feature_does_not_depend_on_its_own_label(
    world: World, private_key: PrivateKey, cross_fitted: tuple[Trained, InProcessCoordinator]
) -> None:
    trained, _ = cross_fitted
    assert trained.folds is not None and trained.stack_scores is not None
    assert trained.fit_ids == [world.train.ids[i] for i in world.split[0]]
    np.testing.assert_array_equal(trained.folds, fold_ids(len(world.split[0]), 3, PARAMS.seed))
    y, mask = _flip_fold(world, trained, 0)
    params = replace(PARAMS, cross_fit=True)
    flipped, _ = _train(world, private_key, params, y)
    assert flipped.stack_scores is not None
    np.testing.assert_array_equal(flipped.folds, trained.folds)
    # Fold 0's feature comes from the chain that never saw fold 0's labels: unchanged,
    # to the bit, although every one of those labels changed ...
    np.testing.assert_array_equal(flipped.stack_scores[mask], trained.stack_scores[mask])
    # ... while the chains that did learn from them moved.
    assert np.abs(flipped.stack_scores[~mask] - trained.stack_scores[~mask]).max() > 1e-3


def test_in_sample_scores_would_fail_that_check(world: World, private_key: PrivateKey) -> None:
    params = replace(PARAMS, cross_fit=False)
    trained, coordinator = _train(world, private_key, params)
    assert trained.folds is None and trained.stack_scores is not None
    assert {m.session_id for m in coordinator.sent} == {"train-crossfit-test"}  # no 2nd session
    mask = fold_ids(len(world.split[0]), 3, PARAMS.seed) == 0
    assert world.train.y is not None
    y = world.train.y.copy()
    y[world.split[0][mask]] = 1.0 - y[world.split[0][mask]]
    flipped, _ = _train(world, private_key, params, y)
    assert flipped.stack_scores is not None
    assert np.abs(flipped.stack_scores[mask] - trained.stack_scores[mask]).max() > 1e-2


def test_out_of_fold_scores_lose_the_in_sample_fit_to_noise(
    cross_fitted: tuple[Trained, InProcessCoordinator], world: World
) -> None:
    """The noise partner's in-sample scores look predictive on the rows they were
    fitted to; out of fold they do not."""
    trained, _ = cross_fitted
    m = trained.metrics
    assert m["cross_fit_folds"] == 3.0
    assert m["fit_auc_partner_score"] > m["fit_auc_partner_score_cross_fit"] + 0.01
    for key in ("validation_auc_stacked", "validation_auc_stacked_in_sample", "test_auc_stacked"):
        assert 0.5 < m[key] <= 1.0
    assert world.train.y is not None and trained.stack_scores is not None
    y_fit = world.train.y[world.split[0]]
    assert float(roc_auc_score(y_fit, trained.stack_scores)) == pytest.approx(
        m["fit_auc_partner_score_cross_fit"]
    )
    assert all("cross_fit_val_auc" in h for h in trained.history[1:])


def test_the_cross_fit_session_scores_fit_and_validation_rows_only(
    cross_fitted: tuple[Trained, InProcessCoordinator], world: World
) -> None:
    trained, coordinator = cross_fitted
    starts = [m for m in coordinator.sent if m.kind == "start"]
    main = [m for m in starts if m.session_id == "train-crossfit-test"]
    second = [m for m in starts if m.session_id == "train-crossfit-test.xf"]
    assert len(main) == len(second) == len(PARTNERS)
    n_fit, n_val = len(world.split[0]), len(world.split[1])
    for a, b in zip(main, second, strict=True):
        assert a.partner == b.partner and b.tokens == a.tokens  # the same rows, the same bins
        assert len(b.eval_tokens) == n_val and b.eval_tokens == a.eval_tokens[:n_val]
        assert b.packing.slot_bits > a.packing.slot_bits
    assert n_fit == len(trained.fit_ids)
    finished = {m.session_id for m in coordinator.sent if m.kind == "finish"}
    assert finished == {"train-crossfit-test", "train-crossfit-test.xf"}
    # gradients go only to the main session: one ciphertext per fit row, every field in it
    gradients = [m for m in coordinator.sent if m.kind == "gradients"]
    assert {m.session_id for m in gradients} == {"train-crossfit-test"}
    assert all(len(m.ciphertexts) == n_fit for m in gradients)


def test_fold_ids_are_balanced_seeded_and_label_free() -> None:
    folds = fold_ids(1001, 4, seed=3)
    assert sorted(np.bincount(folds).tolist()) == [250, 250, 250, 251]
    np.testing.assert_array_equal(folds, fold_ids(1001, 4, seed=3))
    assert not np.array_equal(folds, fold_ids(1001, 4, seed=4))
    with pytest.raises(ValueError, match="folds"):
        fold_ids(10, 1, seed=0)


def test_the_fold_layout_on_the_reference_split() -> None:
    layout = fold_layout(2048, [12, 6], 3)
    assert (layout.sub_bits, layout.packing.slot_bits, layout.packing.slots) == (23, 70, 29)
    layout = fold_layout(2048, [12, 6], 5)
    assert (layout.sub_bits, layout.packing.slot_bits, layout.packing.slots) == (23, 116, 17)
    assert layout.packing.frac_bits == 14
    wide = fold_layout(2048, [200], 5)  # gives up fractional bits to fit
    assert wide.packing.score_bits <= 120 and wide.packing.frac_bits < 14
    with pytest.raises(PackingOverflowError):
        fold_layout(2048, [64], 12)


def test_fold_tables_decode_to_every_chains_aggregate_score(private_key: PrivateKey) -> None:
    """Through the partner's own FragmentTables: two partners' answers multiplied, one
    decryption, every fold chain's sum over both partners' features."""
    rng = np.random.default_rng(5)
    bins = {"p": [3, 4], "q": [5]}
    layout = fold_layout(2048, [len(b) for b in bins.values()], 4)
    directions = {
        k: [[rng.uniform(-8, 8, b).tolist() for b in bins[k]] for _ in range(4)] for k in bins
    }
    rows = {k: rng.integers(0, bins[k], size=(7, len(bins[k]))) for k in bins}
    pk = private_key.public
    product = 1
    for k in bins:
        entries = encode_fold_tables(layout, directions[k])
        tables = FragmentTables(
            pk, layout.packing, [private_key.encrypt_many(row) for row in entries]
        )
        product = product * tables.fragment(rows[k].tolist(), [False] * 7) % pk.nsquare
    scores = decode_fold_scores(layout, int(private_key.decrypt(product)), 7)
    expected = np.array(
        [
            [
                sum(directions[k][f][j][rows[k][i, j]] for k in bins for j in range(len(bins[k])))
                for f in range(4)
            ]
            for i in range(7)
        ]
    )
    np.testing.assert_allclose(scores, expected, atol=3 * 2.0**-14)
    with pytest.raises(PackingOverflowError):
        encode_fold_tables(layout, [[[9.0] * 3, [0.0] * 4]] * 4)
    with pytest.raises(PackingOverflowError):
        decode_fold_scores(layout, 1 << layout.packing.score_bits, 1)  # blacklist bit set


def test_gradient_fields_sum_independently(private_key: PrivateKey) -> None:
    """One ciphertext per row, several (g, h) fields: a bin sum decodes to every field's
    own sum, negative ones included, and a field that is zero on some rows sums over
    the others only."""
    spec = gradient_packing()
    assert max_fields(spec, 2048) >= 6
    rng = np.random.default_rng(2)
    rows, fields = 400, 4
    p = rng.random((fields, rows))
    y = (rng.random(rows) < 0.7).astype(float)
    keep = rng.random((fields, rows)) < 0.7
    g, h = np.where(keep, p - y, 0.0), np.where(keep, p * (1 - p), 0.0)
    ciphertexts = private_key.encrypt_many(encode_fields(spec, g, h))
    bins = rng.integers(0, 5, size=rows)
    sums = [
        private_key.public.add(c for c, b in zip(ciphertexts, bins, strict=True) if b == k)
        for k in range(5)
    ]
    plain = [int(private_key.decrypt(c)) for c in sums]
    decoded = decode_field_plaintexts(spec, int(private_key.public.n), plain, fields)
    for t in range(fields):
        for k in range(5):
            assert decoded[t][0][k] == pytest.approx(g[t][bins == k].sum(), abs=1e-5)
            assert decoded[t][1][k] == pytest.approx(h[t][bins == k].sum(), abs=1e-5)
    assert (np.concatenate([d[0] for d in decoded]) < 0).any()
    with pytest.raises(ValueError, match="same shape"):
        encode_fields(spec, g, h[:1])


def test_an_unknown_cross_fit_fold_count_is_refused(world: World, private_key: PrivateKey) -> None:
    params = replace(PARAMS, cross_fit=True, cross_fit_folds=1)
    with pytest.raises(ValueError, match="cross_fit_folds"):
        _train(world, private_key, params)


class _Client:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        if self.error is not None:
            raise self.error


def test_a_fetch_cancelled_inside_aiokafka_at_exit_does_not_fail_a_finished_training() -> None:
    """aiokafka's consumer.stop() can leak its own fetch task's CancelledError on an
    overloaded broker; after a finished training that must not become the run's
    error, and the producer is closed either way."""

    async def run(error: BaseException) -> tuple[_Client, _Client]:
        coordinator = Coordinator(KafkaSettings(), "s", ["p"], timeout_s=1.0)
        consumer, producer = _Client(error), _Client()
        coordinator._consumer, coordinator._producer = consumer, producer
        await coordinator.__aexit__(None, None, None)
        return consumer, producer

    for error in (asyncio.CancelledError(), KafkaError()):
        consumer, producer = asyncio.run(run(error))
        assert consumer.stopped and producer.stopped

    async def cancelled_itself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await run(asyncio.CancelledError())

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_itself())

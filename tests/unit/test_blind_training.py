"""Blind-direction training, end to end in one process: the bank's real trainer talks
to the partners' real training workers through an in-memory channel (the Kafka path
is tests/integration/test_training.py).

What it proves, on a synthetic data set where the partners' features matter:
- the model learns from the partners (test AUC well above the bank alone);
- the weights each partner stored, decrypted with the bank's key by the test (the
  harness sees every party), reproduce the aggregate score the bank tracked for every
  held-out row, to fixed-point precision: serving computes what training chose;
- what the bank decrypts from one partner alone is noise: only the product of every
  partner's score ciphertexts decodes;
- the partner sees one shuffled list, the held-out rows not a contiguous block.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sklearn.metrics import roc_auc_score

from schemas import TrainScores, TrainStart
from schemas.training import ToBank, ToPartner
from services.kernel.crypto.blind import decode_scores
from services.kernel.crypto.codec import b64_to_int
from services.kernel.crypto.packing import DEFAULT_FRAC_BITS, PackingOverflowError
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.signing import PartnerKeyRegistry, public_key_b64
from services.kernel.crypto.tokens import Tokenizer, TokenSource
from services.partner.agreement import PeerDirectory, announcement
from services.partner.store import FeatureStore
from services.partner.training import TrainingWorker
from services.training.coordinator import ReplyT, TrainingError
from services.training.trainer import BankRows, FederatedTrainer, TrainParams

ROWS = 1500
TEST_ROWS = 500
FEATURES = {"alpha": 3, "bravo": 2}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _keys(name: str) -> tuple[Ed25519PrivateKey, X25519PrivateKey]:
    seed = hashlib.sha256(name.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed), X25519PrivateKey.from_private_bytes(seed)


@dataclass
class Channel:
    """The training conversation without Kafka: every message to a partner is handled
    at once by its worker, and the replies wait for the bank to collect them."""

    session_id: str
    workers: Mapping[str, TrainingWorker]
    sent: list[tuple[str, ToPartner]] = field(default_factory=list)
    received: list[ToBank] = field(default_factory=list)
    inbox: list[ToBank] = field(default_factory=list)

    async def send(self, partner: str, message: ToPartner) -> None:
        self.sent.append((partner, message))
        reply = self.workers[partner].handle(message)
        if reply is not None:
            self.received.append(reply)
            self.inbox.append(reply)

    async def send_all(self, messages: Mapping[str, ToPartner]) -> None:
        for partner, message in messages.items():
            await self.send(partner, message)

    async def collect(self, kind: type[ReplyT], round_: int | None = None) -> dict[str, ReplyT]:
        replies = {}
        for message in list(self.inbox):
            if isinstance(message, kind) and getattr(message, "round", round_) == round_:
                replies[message.partner] = message
                self.inbox.remove(message)
        if set(replies) != set(self.workers):
            raise TrainingError(f"missing {kind.__name__} from {set(self.workers) - set(replies)}")
        return replies


@dataclass
class World:
    key: PrivateKey
    channel: Channel
    stores: dict[str, FeatureStore]
    values: dict[str, np.ndarray]
    test: BankRows
    trained: object


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, private_key: PrivateKey) -> World:
    root = tmp_path_factory.mktemp("blind")
    rng = np.random.default_rng(7)
    ids = [f"c{i:05d}" for i in range(ROWS)]
    bank_x = rng.normal(size=(ROWS, 2))
    partner_x = {k: rng.normal(size=(ROWS, j)) for k, j in FEATURES.items()}
    logit = 0.4 * bank_x[:, 0] + 1.2 * partner_x["alpha"][:, 0] - 0.9 * partner_x["bravo"][:, 1]
    logit += 0.6 * (partner_x["alpha"][:, 1] > 0.5)
    y = (rng.random(ROWS) < 1 / (1 + np.exp(-(logit - 1.0)))).astype(float)
    registry = PartnerKeyRegistry.parse(
        ",".join(f"{k}={public_key_b64(_keys(k)[0])}" for k in FEATURES)
    )
    tokenizers: dict[str, TokenSource] = {}
    stores, workers = {}, {}
    for name, count in FEATURES.items():
        tokenizers[name] = Tokenizer(hashlib.sha256(b"token|" + name.encode()).digest())
        path = root / f"{name}.csv"
        columns = [f"f{j}" for j in range(count)]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ID", *columns])
            for i, row in enumerate(partner_x[name].tolist()):
                writer.writerow([ids[i], *row])
        stores[name] = FeatureStore(root / f"{name}.sqlite")
        stores[name].load_csv(path, id_column="ID", features=columns, tokenizer=tokenizers[name])
        _, agreement = _keys(name)
        peers = PeerDirectory(name, agreement, registry)
        for other in FEATURES:
            if other != name:
                other_signing, other_agreement = _keys(other)
                peers.offer(announcement(other, other_agreement, other_signing, NOW))
        workers[name] = TrainingWorker(name, stores[name], 16, peers, min_participants=2)
    channel = Channel("train-unit", workers)
    fit = ROWS - TEST_ROWS
    train = BankRows(ids[:fit], bank_x[:fit], y[:fit])
    test = BankRows(ids[fit:], bank_x[fit:], y[fit:])
    params = TrainParams(rounds=4, patience=4, num_threads=1)
    trainer = FederatedTrainer(channel, private_key, tokenizers, params)
    trained = await trainer.fit(train, test)
    return World(private_key, channel, stores, partner_x, test, trained)


def _decrypted_weights(world: World, partner: str) -> list[list[float]]:
    scorecard = world.stores[partner].scorecard(world.channel.session_id)
    assert scorecard is not None
    n = int(world.key.public.n)
    out = []
    for row in scorecard.rows():
        plain = [int(world.key.decrypt(c)) for c in row]
        out.append([(m - n if m > n // 2 else m) / (1 << DEFAULT_FRAC_BITS) for m in plain])
    return out


async def test_the_model_learns_from_the_partners(world: World) -> None:
    metrics = world.trained.metrics  # type: ignore[attr-defined]
    assert metrics["rounds"] >= 1
    assert metrics["test_auc"] > metrics["test_auc_bank_only"] + 0.1


async def test_the_partners_stored_weights_reproduce_the_score_the_bank_tracked(
    world: World,
) -> None:
    trained = world.trained
    fit = ROWS - TEST_ROWS
    total = np.zeros(TEST_ROWS)
    for partner, store in world.stores.items():
        binning = store.binning(world.channel.session_id)
        assert binning is not None
        weights = _decrypted_weights(world, partner)
        bins = binning.transform(world.values[partner][fit:])
        total += [sum(weights[j][b] for j, b in enumerate(row)) for row in bins.tolist()]
    # The bank's own test scores come from its tracked aggregate; recover it from the
    # additive model the test reports (the stacker is kept or not, both use s).
    assert trained.test_scores is not None  # type: ignore[attr-defined]
    booster = trained.booster  # type: ignore[attr-defined]
    x = world.test.x
    raw = (
        booster.predict(np.column_stack([x, total]), raw_score=True) + total
        if trained.stacked  # type: ignore[attr-defined]
        else booster.predict(x, raw_score=True) + total
    )
    served = 1 / (1 + np.exp(-raw))
    features = sum(FEATURES.values())
    # Each weight is within one unit of 2^-14 of sum_r a_r D_r; a row sums `features` of them.
    tolerance = 0.25 * features * 2.0**-DEFAULT_FRAC_BITS + 1e-9
    assert np.max(np.abs(served - trained.test_scores)) < tolerance  # type: ignore[attr-defined]
    assert roc_auc_score(world.test.y, served) == pytest.approx(
        trained.metrics["test_auc"],  # type: ignore[attr-defined]
        abs=1e-3,
    )


async def test_one_partners_scores_alone_decrypt_to_noise(world: World) -> None:
    scores = [m for m in world.channel.received if isinstance(m, TrainScores) and m.round == 1]
    start = next(m for _, m in world.channel.sent if isinstance(m, TrainStart))
    assert {m.partner for m in scores} == set(FEATURES)
    features = sum(FEATURES.values())
    layout, blind = start.layout, start.blind
    nsquare = world.key.public.nsquare
    first = [b64_to_int(m.ciphertexts[0]) for m in scores]
    for alone in first:
        with pytest.raises(PackingOverflowError):
            decode_scores(layout, blind, int(world.key.decrypt(alone)), layout.slots, features)
    product = first[0] * first[1] % nsquare
    decoded = decode_scores(layout, blind, int(world.key.decrypt(product)), layout.slots, features)
    assert len(decoded) == layout.slots and all(abs(v) < features for v in decoded)


async def test_the_partner_sees_one_shuffled_list(world: World) -> None:
    start = next(m for p, m in world.channel.sent if isinstance(m, TrainStart) and p == "alpha")
    tokenizer = Tokenizer(hashlib.sha256(b"token|alpha").digest())
    held_out = {tokenizer.token(i) for i in world.test.ids}
    positions = [i for i, t in enumerate(start.tokens) if t in held_out]
    assert len(positions) == TEST_ROWS and len(start.tokens) == ROWS
    # Not the contiguous tail (or any block): spread over the whole list.
    assert positions[-1] - positions[0] > 0.9 * ROWS
    assert np.mean(positions) == pytest.approx(ROWS / 2, rel=0.1)

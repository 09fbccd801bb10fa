"""The joiner's logic with real keys and real partner fragments, minus Kafka: in-memory
dicts stand in for the faust tables and a list records what would be sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas import (
    BankBundle,
    DeadlineTick,
    Decision,
    FragmentRequest,
    PartnerBundle,
    PendingBatch,
    PendingCandidate,
    ReasonCode,
)
from services.bench.fixtures import BankData, Deployment, PartnerData, build_quick_model
from services.demo import dataset as ds
from services.kernel.crypto.codec import b64_to_bytes, int_to_b64
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.signing import PartnerKeyRegistry, load_signing_key, sign
from services.kernel.crypto.tokens import Tokenizer
from services.kernel.kafka.topics import DECISIONS, FRAGMENTS, PENDING, RELEASES
from services.kernel.model.scoring import BankScorer
from services.partner.serving import FragmentServer, ModelCache, build_model
from services.partner.store import FeatureStore
from services.prescreen.joiner import KIND_HEADER, TICK_KIND, Joiner, RejectedInputError
from services.training.policy_file import load_policy

SLOTS = 4
ROOT = Path(__file__).resolve().parents[2]


class World:
    """Bank bundle, partner servers and a joiner wired with in-memory state."""

    def __init__(
        self,
        root: Path,
        *,
        outcome: str = "suppress",
        quota: int | None = None,
        max_pd: float | None = None,
    ) -> None:
        table = ds.load().take(np.arange(80))
        self.table = table
        self.bank = BankData(
            table.ids, ds.BANK_FEATURES, table.select(ds.BANK_FEATURES), table.column(ds.LABEL)
        )
        partners = [
            PartnerData(name, cols, table.select(cols), ds.blacklist(table, name))
            for name, cols in ds.REFERENCE_PARTNERS.items()
        ]
        # Customer 0 is on the payments partner's blacklist for these tests.
        partners[1].blacklisted[:] = False
        partners[1].blacklisted[0] = True
        partners[0].blacklisted[:] = False
        policy = load_policy(ROOT / "deploy" / "policy.toml")
        policy = policy.model_copy(
            update={
                "deadline_outcome": outcome,
                "campaigns": [
                    c.model_copy(update={"quota": quota, "max_pd": max_pd or c.max_pd})
                    for c in policy.campaigns
                ],
            }
        )
        self.deployment = Deployment.at(root)
        bank, bundles, key = build_quick_model(
            self.deployment, self.bank, partners, policy, model_version="m1"
        )
        assert key is not None
        self.key: PrivateKey = key
        packing = bank.packing.model_copy(update={"slots": SLOTS})
        self.bundle: BankBundle = bank.model_copy(update={"packing": packing})
        self.partner_bundles: dict[str, PartnerBundle] = {
            k: b.model_copy(update={"packing": packing}) for k, b in bundles.items()
        }
        self.servers = {}
        for name, bundle in self.partner_bundles.items():
            store = FeatureStore(self.deployment.partner_dbs[name])
            cache = ModelCache(store, partner=name, allow_plaintext=False)
            cache.models["m1"] = build_model(bundle, store, allow_plaintext=False)
            signing = load_signing_key(self.deployment.signing_keys[name])
            self.servers[name] = FragmentServer(name, store, cache, signing)
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.batches: dict[str, Any] = {}
        self.decided: dict[str, Any] = {}
        self.quota: dict[str, Any] = {}
        scorer = BankScorer(self.bundle)
        self.joiner = Joiner(
            batches=self.batches,
            decided=self.decided,
            quota=self.quota,
            send=self._send,
            private_keys={self.key.key_id: self.key},
            registry=PartnerKeyRegistry.parse(self.deployment.registry_spec),
            bundle_for=lambda v: (self.bundle, scorer) if v == "m1" else None,
            partitions=2,
        )

    async def _send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def pending(
        self, batch_id: str, rows: list[int], campaign: str = "card-upgrade"
    ) -> PendingBatch:
        now = datetime.now(UTC)
        return PendingBatch(
            batch_id=batch_id,
            model_version="m1",
            created_at=now,
            deadline_at=now + timedelta(seconds=3),
            partners=list(self.partner_bundles),
            candidates=[
                PendingCandidate(
                    event_id=f"{batch_id}-{i}",
                    customer_id=self.bank.ids[i],
                    campaign_id=campaign,
                    occurred_at=now,
                    features=dict(
                        zip(self.bank.features, map(float, self.bank.values[i]), strict=True)
                    ),
                )
                for i in rows
            ],
        )

    def fragment(self, partner: str, pending: PendingBatch) -> bytes:
        token_key = (self.deployment.token_dir / f"{partner}.key").read_text().strip()
        tokenizer = Tokenizer(b64_to_bytes(token_key))
        server = self.servers[partner]
        request = FragmentRequest(
            batch_id=pending.batch_id,
            partner=partner,
            model_version="m1",
            created_at=pending.created_at,
            deadline_at=pending.deadline_at,
            tokens=[tokenizer.token(c.customer_id) for c in pending.candidates],
        )
        return server.compute(request, server.cache.models["m1"]).model_dump_json().encode()

    async def tick(self, batch_id: str, partition: int) -> None:
        tick = self.joiner.tick_for(batch_id)
        assert tick is not None
        await self.joiner.handle(FRAGMENTS, partition, tick, [(KIND_HEADER, TICK_KIND)])

    def decisions(self) -> list[Decision]:
        return [Decision.model_validate_json(v) for t, _, v in self.sent if t == DECISIONS]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


async def test_a_batch_is_decided_when_the_last_fragment_arrives(world: World) -> None:
    pending = world.pending("b1", [0, 1, 2, 3])
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    assert world.decisions() == []  # still waiting for repayments
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", pending))
    decisions = world.decisions()
    assert [d.event_id for d in decisions] == [c.event_id for c in pending.candidates]
    assert decisions[0].reasons == [ReasonCode.BLACKLISTED]  # customer 0, payments' list
    assert all(d.pd is not None and not d.degraded for d in decisions)
    released = [d.decision_id for d in decisions if d.outcome == "released"]
    assert released == [k.decode() for t, k, _ in world.sent if t == RELEASES]
    assert "b1" in world.decided and "b1" not in world.batches

    # redelivered inputs after the decision change nothing
    count = len(world.sent)
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    assert len(world.sent) == count


async def test_the_deadline_decides_with_the_partners_that_answered(world: World) -> None:
    pending = world.pending("b2", [0, 1])
    await world.joiner.handle(PENDING, 1, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 1, world.fragment("payments", pending))
    assert world.joiner.expired(pending.deadline_at.timestamp() - 1) == []
    assert world.joiner.expired(pending.deadline_at.timestamp() + 0.01) == ["b2"]
    await world.tick("b2", 1)
    decisions = world.decisions()
    assert [d.reasons for d in decisions] == [[ReasonCode.PARTNER_UNAVAILABLE]] * 2
    assert all(d.missing_partners == ["repayments"] for d in decisions)


async def test_fallback_scores_degraded_and_still_honours_the_blacklist(tmp_path: Path) -> None:
    world = World(tmp_path, outcome="fallback")
    pending = world.pending("b3", [0, 1, 2])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    await world.tick("b3", 0)
    decisions = world.decisions()
    assert decisions[0].reasons == [ReasonCode.BLACKLISTED, ReasonCode.SCORED_DEGRADED]
    assert all(d.degraded and d.pd is not None for d in decisions)
    assert all(ReasonCode.SCORED_DEGRADED in d.reasons for d in decisions)


async def test_quota_is_enforced_per_partition_share(tmp_path: Path) -> None:
    # Quota 2 over 2 partitions: this partition may release one. Every risk passes.
    world = World(tmp_path, quota=2, max_pd=1.0)
    pending = world.pending("b4", [1, 2, 3, 4], campaign="card-upgrade")
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    for partner in world.partner_bundles:
        await world.joiner.handle(FRAGMENTS, 0, world.fragment(partner, pending))
    outcomes = [d.reasons[0] for d in world.decisions()]
    assert outcomes == [ReasonCode.ELIGIBLE] + [ReasonCode.QUOTA_EXHAUSTED] * 3
    assert world.quota == {"card-upgrade@0": 1}


async def test_bad_fragments_are_rejected_with_reasons(world: World) -> None:
    pending = world.pending("b5", [1])
    good = world.fragment("payments", pending)
    from schemas import EncryptedFragment

    fragment = EncryptedFragment.model_validate_json(good)
    signing = load_signing_key(world.deployment.signing_keys["payments"])

    def resigned(**update: object) -> bytes:
        changed = fragment.model_copy(update=update)
        changed = changed.model_copy(update={"signature": sign(signing, changed.signing_bytes())})
        return changed.model_dump_json().encode()

    cases = {
        "invalid-ciphertext": resigned(ciphertext=int_to_b64(int(world.key.public.n))),
        "unknown-key": resigned(key_id="pk-unknown"),
        "plaintext-refused": resigned(mode="plaintext", ciphertext=None, plain_slots=[1]),
        "bad-signature": fragment.model_copy(update={"attempt": 2}).model_dump_json().encode(),
        "invalid-schema": b'{"batch_id": 1}',
    }
    for reason, value in cases.items():
        with pytest.raises(RejectedInputError) as caught:
            await world.joiner.handle(FRAGMENTS, 0, value)
        assert caught.value.reason == reason
    assert world.batches == {}


async def test_a_fragment_that_does_not_decode_counts_as_missing(world: World) -> None:
    pending = world.pending("b6", [1, 2])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", pending))
    from schemas import EncryptedFragment

    fragment = EncryptedFragment.model_validate_json(world.fragment("payments", pending))
    signing = load_signing_key(world.deployment.signing_keys["payments"])
    # A valid ciphertext of an impossible value (a partner bug or an attack):
    bogus = world.key.public.encrypt(1 << (SLOTS * world.bundle.packing.slot_bits + 5))
    changed = fragment.model_copy(update={"ciphertext": int_to_b64(bogus)})
    changed = changed.model_copy(update={"signature": sign(signing, changed.signing_bytes())})
    await world.joiner.handle(FRAGMENTS, 0, changed.model_dump_json().encode())
    decisions = world.decisions()
    assert len(decisions) == 2
    assert all(d.reasons == [ReasonCode.PARTNER_UNAVAILABLE] for d in decisions)


async def test_forged_deadline_ticks_are_refused(world: World) -> None:
    """Partners write to the fragment topic too: only the bank can end a batch early."""
    pending = world.pending("b7", [1])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    forged = DeadlineTick(batch_id="b7", fired_at=datetime.now(UTC), mac="AAAA")
    with pytest.raises(RejectedInputError) as caught:
        await world.joiner.handle(
            FRAGMENTS, 0, forged.model_dump_json().encode(), [(KIND_HEADER, TICK_KIND)]
        )
    assert caught.value.reason == "bad-tick"
    assert world.decisions() == [] and "b7" in world.batches


async def test_a_tick_for_orphan_fragments_drops_them(world: World) -> None:
    pending = world.pending("b8", [1])
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    assert world.joiner.expired(10**12) == ["b8"]  # long after the orphan timeout
    await world.tick("b8", 0)
    assert "b8" not in world.batches and world.decisions() == []

"""The joiner's logic with real keys and real partner fragments, minus Kafka: in-memory
dicts stand in for the faust tables and a list records what would be sent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Sequence
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
from services.intake.requests import fragment_requests
from services.kernel.crypto.codec import b64_to_bytes, b64_to_int, int_to_b64
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.signing import (
    BankKey,
    PartnerKeyRegistry,
    load_signing_key,
    new_signing_key,
    sign,
    signed,
)
from services.kernel.crypto.tokens import Tokenizer
from services.kernel.kafka.topics import DECISIONS, FRAGMENTS, PENDING, RELEASES
from services.kernel.model.scoring import BankScorer
from services.partner.agreement import PeerDirectory
from services.partner.serving import (
    FragmentServer,
    ModelCache,
    NotClaimed,
    RequestError,
    build_model,
)
from services.partner.store import FeatureStore
from services.prescreen.batch_state import BatchState
from services.prescreen.joiner import KIND_HEADER, TICK_KIND, Joiner, RejectedInputError
from services.prescreen.outputs import Output
from services.prescreen.quota import PartitionQuota, Pool, QuotaLedger
from services.stack import dataset as ds
from services.stack.fixtures import BankData, Deployment, PartnerData, build_quick_model
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
            peers = self.deployment.peer_directory(name)
            bank_key = BankKey(self.deployment.bank_public_key)
            self.servers[name] = FragmentServer(name, store, cache, signing, peers, bank_key)
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.partitions: list[int] = []  # where each record of ``sent`` went
        self.batches: dict[str, Any] = {}
        self.pending_records: dict[str, str] = {}
        self.decided: dict[str, Any] = {}
        self.headers: list[tuple[tuple[str, bytes], ...]] = []  # of each record of ``sent``
        scorer = BankScorer(self.bundle)
        self.scorer = scorer
        self.joiner = Joiner(
            batches=self.batches,
            pending_records=self.pending_records,
            decided=self.decided,
            publish=self._publish,
            private_keys={self.key.key_id: self.key},
            registry=PartnerKeyRegistry.parse(self.deployment.registry_spec),
            bundle_for=lambda v: (self.bundle, scorer) if v == "m1" else None,
            partitions=2,
        )

    async def _publish(self, records: Sequence[Output], partition: int) -> Awaitable[None]:
        self.sent.extend((r.topic, r.key, r.value) for r in records)
        self.partitions.extend([partition] * len(records))
        self.headers.extend(r.headers for r in records)
        return asyncio.sleep(0)

    def signed(self, request: FragmentRequest) -> FragmentRequest:
        """As the bank (intake) signs it."""
        return signed(request, load_signing_key(self.deployment.bank_signing_key))

    def tokenizer(self, partner: str) -> Tokenizer:
        token_key = (self.deployment.token_dir / f"{partner}.key").read_text().strip()
        return Tokenizer(b64_to_bytes(token_key))

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
            tokens={
                partner: [self.tokenizer(partner).token(self.bank.ids[i]) for i in rows]
                for partner in self.partner_bundles
            },
        )

    def request(
        self, partner: str, pending: PendingBatch, batch_id: str | None = None
    ) -> FragmentRequest:
        """Intake's signed request to one partner for the batch (attempt 1, every partner),
        under another batch id if given."""
        return fragment_requests(
            batch_id=batch_id or pending.batch_id,
            model_version="m1",
            created_at=pending.created_at,
            deadline_at=pending.deadline_at,
            tokens=pending.tokens,
            signing_key=load_signing_key(self.deployment.bank_signing_key),
        )[partner]

    def fragment(self, partner: str, pending: PendingBatch) -> bytes:
        """The partner's answer to intake's request."""
        return self.answer(self.request(partner, pending))

    def answer(self, request: FragmentRequest) -> bytes:
        server = self.servers[request.partner]
        return server.compute(request, server.cache.models["m1"]).model_dump_json().encode()

    def requests(self) -> list[FragmentRequest]:
        """Requests the joiner sent to partners (it should send none)."""
        return [
            FragmentRequest.model_validate_json(v)
            for t, _, v in self.sent
            if t.startswith("fed.requests.")
        ]

    async def tick(self, batch_id: str, partition: int, attempt: int = 1) -> None:
        tick = self.joiner.tick_for(batch_id, attempt)
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

    # redelivered inputs after the decision change nothing; a fragment the decision
    # used, arriving again, is a replay for the DLQ
    count = len(world.sent)
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    with pytest.raises(RejectedInputError) as caught:
        await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    assert caught.value.reason == "replayed-fragment"
    assert len(world.sent) == count


async def test_the_deadline_decides_with_the_partners_that_answered(world: World) -> None:
    pending = world.pending("b2", [0, 1])
    await world.joiner.handle(PENDING, 1, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 1, world.fragment("payments", pending))
    assert world.joiner.expired(pending.deadline_at.timestamp() - 1) == []
    assert world.joiner.expired(pending.deadline_at.timestamp() + 0.01) == [("b2", 1)]
    await world.tick("b2", 1)
    decisions = world.decisions()
    assert [d.reasons for d in decisions] == [[ReasonCode.PARTNER_UNAVAILABLE]] * 2
    assert all(d.missing_partners == ["repayments"] for d in decisions)
    assert world.requests() == []  # the bank never asks again
    assert set(world.partitions) == {1}  # the batch's own partition


async def test_a_worker_ticks_only_the_batches_of_partitions_it_owns(world: World) -> None:
    # With several workers a table also holds standby copies of other workers'
    # partitions: their ticks are their owner's to send.
    mine, theirs = world.pending("b-mine", [0]), world.pending("b-theirs", [1])
    await world.joiner.handle(PENDING, 1, mine.model_dump_json().encode())
    await world.joiner.handle(PENDING, 3, theirs.model_dump_json().encode())
    late = max(mine.deadline_at, theirs.deadline_at).timestamp() + 1
    assert world.joiner.expired(late, {0, 1}) == [("b-mine", 1)]
    assert sorted(world.joiner.expired(late)) == [("b-mine", 1), ("b-theirs", 1)]


async def test_a_missed_deadline_falls_back_without_anyones_flags(tmp_path: Path) -> None:
    """Fallback policy: repayments misses the deadline. Payments' fragment is masked with
    repayments, so it cannot be read alone, and the batch is asked of nobody again
    (payments' flags over a subset, set against a complete batch of another day, would
    tell which partner flagged a customer): degraded scores, no partner flag at all."""
    world = World(tmp_path, outcome="fallback")
    pending = world.pending("b3", [0, 1, 2])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    await world.tick("b3", 0)
    assert world.requests() == []
    decisions = world.decisions()
    assert all(ReasonCode.BLACKLISTED not in d.reasons for d in decisions)  # not even customer 0
    assert all(d.degraded and d.missing_partners == ["repayments"] for d in decisions)
    fallback = world.scorer.score_fallback(
        world.scorer.matrix([c.features for c in pending.candidates])
    )
    assert [d.pd for d in decisions] == pytest.approx(list(fallback))
    # The late fragment is dead-lettered as a digest: its ciphertext, together with
    # payments', must not outlive the batch.
    with pytest.raises(RejectedInputError) as caught:
        await world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", pending))
    assert caught.value.reason == "late-fragment" and not caught.value.keep_value


async def test_an_answer_to_a_later_attempt_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path, outcome="fallback")
    pending = world.pending("b9", [0, 1])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    request = FragmentRequest(
        batch_id="b9",
        partner="payments",
        model_version="m1",
        created_at=pending.created_at,
        deadline_at=pending.deadline_at,
        tokens=pending.tokens["payments"],
        attempt=2,
        participants=sorted(world.partner_bundles),
        flags_only=True,
    )
    with pytest.raises(RejectedInputError) as caught:
        await world.joiner.handle(FRAGMENTS, 0, world.answer(request))
    assert caught.value.reason == "bad-attempt" and not caught.value.keep_value
    assert world.decisions() == []


async def test_a_batch_nobody_answered_is_decided_at_the_first_deadline(tmp_path: Path) -> None:
    world = World(tmp_path, outcome="fallback")
    pending = world.pending("b10", [0])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.tick("b10", 0)
    assert world.requests() == []
    (decision,) = world.decisions()
    assert decision.degraded and decision.missing_partners == pending.partners


async def test_quota_is_enforced_per_partition_share(tmp_path: Path) -> None:
    # Quota 2 over 2 partitions, a worker that owns partition 0 only: it may release one
    # (the other's share is set aside for it). Every risk passes.
    world = World(tmp_path, quota=2, max_pd=1.0)
    world.joiner.ledger = QuotaLedger(2, owned=lambda: {0})
    pending = world.pending("b4", [1, 2, 3, 4], campaign="card-upgrade")
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    for partner in world.partner_bundles:
        await world.joiner.handle(FRAGMENTS, 0, world.fragment(partner, pending))
    outcomes = [d.reasons[0] for d in world.decisions()]
    assert outcomes == [ReasonCode.ELIGIBLE] + [ReasonCode.QUOTA_EXHAUSTED] * 3
    assert (await world.joiner.ledger.of(0)).totals == {"card-upgrade": 1}


async def test_a_worker_owning_every_partition_fills_the_whole_quota_from_one(
    tmp_path: Path,
) -> None:
    """The shares of a worker's partitions are pooled: a campaign whose candidates all
    fall on one partition still gets its whole quota (the demo's small runs stopped at
    about half of it when each partition kept to its share)."""
    world = World(tmp_path, quota=3, max_pd=1.0)  # one worker: both partitions
    pending = world.pending("b4", [1, 2, 3, 4], campaign="card-upgrade")
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    for partner in world.partner_bundles:
        await world.joiner.handle(FRAGMENTS, 0, world.fragment(partner, pending))
    outcomes = [d.reasons[0] for d in world.decisions()]
    assert outcomes == [ReasonCode.ELIGIBLE] * 3 + [ReasonCode.QUOTA_EXHAUSTED]


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
        "unknown-model-version": resigned(model_version="m-never-rolled-out"),
        # multiples of p are not in Z*_{n^2}; n^2 itself is out of range (the keys of
        # this dict are padded to stay distinct)
        "invalid-ciphertext ": resigned(ciphertext=int_to_b64(int(world.key.p) * 7)),
        "invalid-ciphertext  ": resigned(ciphertext=int_to_b64(int(world.key.public.nsquare))),
        "plaintext-refused": resigned(mode="plaintext", ciphertext=None, plain_slots=[1]),
        "bad-signature": fragment.model_copy(update={"attempt": 2}).model_dump_json().encode(),
        "invalid-schema": b'{"batch_id": 1}',
    }
    for reason, value in cases.items():
        with pytest.raises(RejectedInputError) as caught:
            await world.joiner.handle(FRAGMENTS, 0, value)
        assert caught.value.reason == reason.strip()
    assert world.batches == {}


async def test_oversized_input_is_rejected_before_parsing(world: World) -> None:
    world.joiner.max_message_bytes = 10_000
    pending = world.pending("b13", [1])
    padded = pending.model_dump_json().encode() + b" " * 10_000  # still valid JSON
    with pytest.raises(RejectedInputError) as caught:
        await world.joiner.handle(PENDING, 0, padded)
    assert caught.value.reason == "oversized"
    assert world.batches == {}


async def test_a_fragment_after_a_deadline_decision_is_late_not_replayed(world: World) -> None:
    pending = world.pending("b14", [1])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    await world.tick("b14", 0)
    assert len(world.decisions()) == 1
    for partner, reason in (("repayments", "late-fragment"), ("payments", "replayed-fragment")):
        with pytest.raises(RejectedInputError) as caught:
            await world.joiner.handle(FRAGMENTS, 0, world.fragment(partner, pending))
        assert caught.value.reason == reason
    assert len(world.decisions()) == 1


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
    assert world.joiner.expired(10**12) == [("b8", 1)]  # long after the orphan timeout
    await world.tick("b8", 0)
    assert "b8" not in world.batches and world.decisions() == []


async def test_a_partner_refuses_to_mask_for_participants_it_cannot_pair_with(
    world: World,
) -> None:
    pending = world.pending("b11", [1])
    server = world.servers["payments"]

    def request(participants: list[str]) -> FragmentRequest:
        return world.signed(
            FragmentRequest(
                batch_id="b11",
                partner="payments",
                model_version="m1",
                created_at=pending.created_at,
                deadline_at=pending.deadline_at,
                tokens=pending.tokens["payments"],
                participants=participants,
            )
        )

    for participants in (
        ["repayments"],  # lacks the partner itself
        ["payments", "mallory"],  # names a partner outside its registry
        ["payments", "payments"],
    ):
        with pytest.raises(RequestError) as caught:
            await server.answer(request(participants), 0.1)
        assert caught.value.reason == "bad-participants", participants
    assert server.min_participants == 2  # by default a partner will not answer alone
    with pytest.raises(RequestError) as caught:
        await server.answer(request(["payments"]), 0.1)
    assert caught.value.reason == "too-few-participants"
    # a registered partner whose agreement key never came
    server.peers = PeerDirectory(
        "payments",
        server.peers.own,
        PartnerKeyRegistry.parse(world.deployment.registry_spec),
    )
    complete = world.request("payments", pending, "b11")
    with pytest.raises(RequestError) as caught:
        await server.answer(complete, 0.05)
    assert caught.value.reason == "no-agreement-key"


async def test_a_partner_answers_only_the_banks_one_request_per_batch(world: World) -> None:
    """Signed by the bank's pinned key, a first attempt, digests that match: answered,
    and answered again identically when Kafka delivers the same record again. Anything
    else is refused: a copy of it written again (a replay), and a second, different
    request for the same batch above all (its answer, differenced with the first, would
    tell the bank what the masks hide)."""
    pending = world.pending("b12", [1, 2])
    server = world.servers["payments"]
    key = load_signing_key(world.deployment.bank_signing_key)

    def requests(tokens: dict[str, list[str]], batch: str = "b12") -> FragmentRequest:
        return fragment_requests(
            batch_id=batch,
            model_version="m1",
            created_at=pending.created_at,
            deadline_at=pending.deadline_at,
            tokens=tokens,
            signing_key=key,
        )["payments"]

    first = requests(pending.tokens)
    answered = await server.answer(first, 1.0, "0:17")
    again = await server.answer(first, 1.0, "0:17")  # the same record, redelivered
    volatile = {"ciphertext", "signature", "signed_at"}
    assert answered.model_dump(exclude=volatile) == again.model_dump(exclude=volatile)

    async def refused(request: FragmentRequest, source: str = "0:99") -> str:
        with pytest.raises(RequestError) as caught:
            await server.answer(request, 0.5, source)
        return caught.value.reason

    assert await refused(first, "0:18") == "replayed-request"  # a copy written again
    other = {**pending.tokens, "payments": list(reversed(pending.tokens["payments"]))}
    assert await refused(requests(other)) == "conflicting-request"
    forger = new_signing_key()
    assert await refused(signed(first.model_copy(update={"signature": ""}), forger)) == (
        "bad-signature"
    )
    assert await refused(first.model_copy(update={"batch_id": "b13"})) == "bad-signature"
    later = first.model_copy(update={"attempt": 2, "flags_only": True})
    assert await refused(signed(later, key)) == "re-request-refused"
    wrong = first.model_copy(
        update={"token_digests": {"payments": "0" * 64, "repayments": "0" * 64}}
    )
    assert await refused(signed(wrong, key)) == "bad-token-digests"


async def test_a_redelivered_request_gets_the_same_plaintext_in_a_new_ciphertext(
    world: World,
) -> None:
    """Partners answer at least once. Masks and blacklist tags are derived, not drawn,
    so two answers to one request differ as ciphertexts only: subtracting them gives
    the bank nothing."""
    from schemas import EncryptedFragment

    pending = world.pending("b12", [0, 1, 2])
    first, second = (
        EncryptedFragment.model_validate_json(world.fragment("payments", pending)) for _ in range(2)
    )
    assert first.ciphertext != second.ciphertext
    plain = [world.key.decrypt(b64_to_int(f.ciphertext or "")) for f in (first, second)]
    assert plain[0] == plain[1]


async def test_a_partner_reports_its_factor_pool_and_each_factor_computed_inline(
    world: World,
) -> None:
    """What an operator watches to see whether a partner's CPU keeps up: the factors
    ready for the newest version, and every fragment that had to compute its own."""
    from services.kernel.metrics import PARTNER_FACTORS_INLINE

    server = world.servers["payments"]
    pool = server.cache.models["m1"].factors
    assert pool is not None
    deadline = time.monotonic() + 60
    # A full pool leaves its thread idle, so the resize below is not raced by a chunk.
    while server.cache.factors_ready() < pool.target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert server.cache.factors_ready() == pool.target > 0
    pool.resize(0)
    assert server.cache.factors_ready() == 0
    inline = PARTNER_FACTORS_INLINE.labels(partner="payments")
    before = inline._value.get()
    world.fragment("payments", world.pending("b13", [0, 1]))
    assert inline._value.get() == before + 1


async def test_a_timer_tick_during_the_decision_leaves_nothing_cached(world: World) -> None:
    """The deadline timer runs while a decision awaits the broker; the batch it looks at
    must not stay in the joiner's parsed-record cache once decided (the soak found
    prescreen growing by one cached batch per batch decided late)."""
    pending = world.pending("b15", [1, 2])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    publish = world.joiner.publish

    async def publish_while_the_timer_runs(
        records: Sequence[Output], partition: int
    ) -> Awaitable[None]:
        world.joiner.tick_for("b15", 1)  # what expire() does between two awaits
        return await publish(records, partition)

    world.joiner.publish = publish_while_the_timer_runs
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", pending))
    assert len(world.decisions()) == 2
    assert "b15" not in world.joiner._pending and "b15" not in world.batches


async def test_a_decision_is_recorded_before_its_batch_is_forgotten(world: World) -> None:
    """A kill -9 between the two changelog writes that end a decision must leave the
    batch decided and still held, never in neither table: a restarted prescreen would
    take it for skipped and decide it again, perhaps differently."""
    order: list[str] = []

    class Recording(dict[str, Any]):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def __setitem__(self, key: str, value: Any) -> None:
            order.append(f"{self.name}[{key}] =")
            super().__setitem__(key, value)

        def __delitem__(self, key: str) -> None:
            order.append(f"del {self.name}[{key}]")
            super().__delitem__(key)

    world.joiner.batches = batches = Recording("batches")
    world.joiner.decided = decided = Recording("decided")
    pending = world.pending("b20", [1, 2])
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", pending))
    assert order.index("decided[b20] =") < order.index("del batches[b20]")

    # The crash state (both written, the deletion lost): the batch's next tick removes
    # it without a second decision.
    batches["b20"] = {**BatchState.new(0).to_table(), "d": 0.0}
    world.pending_records["b20"] = pending.model_dump_json()
    count = len(world.sent)
    await world.tick("b20", 0)
    assert "b20" not in batches and "b20" in decided
    assert "b20" not in world.pending_records
    assert len(world.sent) == count


async def test_of_two_replicas_reading_one_request_the_first_claim_answers(
    world: World,
) -> None:
    """Replicas of one partner read every request; the ledger of their shared store lets
    exactly one answer it. The other leaves it quietly (not a refusal); a draining
    replica claims nothing, so a sibling takes what it leaves."""
    pending = world.pending("b20", [1, 2])
    first = world.servers["payments"]
    sibling = FragmentServer(
        "payments",
        first.store,
        first.cache,
        first.signing_key,
        first.peers,
        first.bank_key,
        replica="replica-b",
    )
    request = world.request("payments", pending, "b20")
    assert (await first.answer(request, 1.0, "0:40")).batch_id == "b20"
    with pytest.raises(NotClaimed) as caught:
        await sibling.answer(request, 1.0, "0:40")
    assert caught.value.reason == "sibling"
    with pytest.raises(RequestError) as replay:  # a copy elsewhere is still a replay
        await sibling.answer(request, 1.0, "0:41")
    assert replay.value.reason == "replayed-request"

    later = world.pending("b21", [1])
    request = world.request("payments", later)
    first.claiming = False  # SIGTERM
    with pytest.raises(NotClaimed) as caught:
        await first.answer(request, 1.0, "1:7")
    assert caught.value.reason == "stopping"
    assert (await sibling.answer(request, 1.0, "1:7")).batch_id == "b21"


async def test_a_tick_or_fragment_during_the_acknowledgement_wait_decides_nothing_again(
    world: World,
) -> None:
    """prescreen runs several handlers at once: while one awaits the broker's
    acknowledgement of a batch's decisions, another handles the batch's deadline tick
    and a redelivered fragment. The batch is decided once, the fragment is a replay."""
    pending = world.pending("b16", [0, 1, 2])
    acknowledged = asyncio.Event()
    publish = world.joiner.publish

    async def slow_broker(records: Sequence[Output], partition: int) -> Awaitable[None]:
        async def acknowledged_later() -> None:
            await acknowledged.wait()
            await (await publish(records, partition))

        return acknowledged_later()

    world.joiner.publish = slow_broker
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    deciding = asyncio.create_task(
        world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", pending))
    )
    await asyncio.sleep(0.01)
    assert not deciding.done()
    assert world.joiner.expired(pending.deadline_at.timestamp() + 1) == []  # no tick to send
    tick = world.joiner.tick_for("b16", 1)
    assert tick is not None
    await world.joiner.handle(FRAGMENTS, 0, tick, [(KIND_HEADER, TICK_KIND)])
    with pytest.raises(RejectedInputError) as caught:
        await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    assert caught.value.reason == "replayed-fragment"
    assert world.decisions() == [] and "b16" not in world.decided
    acknowledged.set()
    await deciding
    decisions = world.decisions()
    assert [d.event_id for d in decisions] == [c.event_id for c in pending.candidates]
    assert all(d.pd is not None for d in decisions)  # both partners' answers, not the tick
    assert world.decided["b16"][2] == ["payments", "repayments"]
    assert "b16" not in world.batches and "b16" not in world.joiner._deciding


async def test_the_pending_record_is_written_once_not_with_every_fragment(world: World) -> None:
    """Every write of a batch's state goes to its changelog whole: the 13 KB pending
    record lives in its own table, written once, so a fragment's write carries only
    the fragments."""
    writes: list[tuple[str, str]] = []

    class Recording(dict[str, Any]):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def __setitem__(self, key: str, value: Any) -> None:
            writes.append((self.name, json.dumps(value)))
            super().__setitem__(key, value)

    world.joiner.batches = Recording("batches")
    world.joiner.pending_records = Recording("pending")
    pending = world.pending("b21", [0, 1, 2, 3])
    record = pending.model_dump_json()
    await world.joiner.handle(PENDING, 0, record.encode())
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", pending))
    assert len(world.decisions()) == 4
    assert [name for name, _ in writes if name == "pending"] == ["pending"]
    batch_writes = [text for name, text in writes if name == "batches"]
    assert len(batch_writes) == 3  # the deadline, then each fragment
    assert not any(pending.candidates[0].event_id in text for text in batch_writes)
    assert "b21" not in world.joiner.pending_records and "b21" not in world.joiner.batches


async def test_a_crash_that_kept_only_the_batch_state_gets_the_record_written_again(
    world: World,
) -> None:
    """The two writes of a pending record's arrival reach their changelogs apart: after
    a crash that kept the state (with its deadline) but lost the record, the record,
    delivered again (its offset was not committed), is written again and the batch is
    decided with it."""
    pending = world.pending("b22", [0, 1])
    world.batches["b22"] = {**BatchState.new(0).to_table(), "d": pending.deadline_at.timestamp()}
    await world.joiner.handle(PENDING, 0, pending.model_dump_json().encode())
    assert "b22" in world.pending_records
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("payments", pending))
    await world.joiner.handle(FRAGMENTS, 0, world.fragment("repayments", pending))
    assert [d.event_id for d in world.decisions()] == [c.event_id for c in pending.candidates]


async def test_a_batch_held_by_the_previous_version_is_still_decided(world: World) -> None:
    """Upgrading prescreen mid-stream: a batch whose state (restored from the changelog)
    still carries its pending record inside is decided with that record."""
    pending = world.pending("b23", [2, 3])
    world.batches["b23"] = {
        **BatchState.new(1).to_table(),
        "d": pending.deadline_at.timestamp(),
        "p": pending.model_dump_json(),
    }
    await world.joiner.handle(FRAGMENTS, 1, world.fragment("payments", pending))
    await world.joiner.handle(FRAGMENTS, 1, world.fragment("repayments", pending))
    decisions = world.decisions()
    assert [d.event_id for d in decisions] == [c.event_id for c in pending.candidates]
    assert all(d.pd is not None for d in decisions)
    assert "b23" not in world.batches and "b23" in world.decided


async def test_a_pending_record_left_by_a_crash_is_swept(world: World) -> None:
    """The deletions that end a decision land in two changelog topics: a crash may keep
    the pending record of a decided batch whose state is gone. The sweep removes it (and
    only for the partition whose event runs it)."""
    pending = world.pending("b24", [0, 1])
    await world.joiner.handle(PENDING, 2, pending.model_dump_json().encode())
    await world.joiner.handle(FRAGMENTS, 2, world.fragment("payments", pending))
    await world.joiner.handle(FRAGMENTS, 2, world.fragment("repayments", pending))
    assert "b24" in world.decided and "b24" not in world.pending_records
    world.pending_records["b24"] = pending.model_dump_json()  # the lost deletion
    world.joiner.sweep(1)
    assert "b24" in world.pending_records  # another partition's key: not this event's
    world.joiner.sweep(2)
    assert "b24" not in world.pending_records


def test_a_daily_quota_counts_per_day_in_the_campaigns_zone(world: World) -> None:
    """Each partition takes its share of the day's quota; the next day (in the
    campaign's time zone, not UTC) starts again, the total quota still counting."""
    campaign = world.bundle.policy.campaigns[0].model_copy(
        update={"quota": 3, "daily_quota": 4, "timezone": "Pacific/Auckland"}
    )
    # 2 partitions: partition 0's shares are 2 of the day's 4 and 2 of the total 3.
    evening_utc = datetime(2026, 12, 5, 10, 30, tzinfo=UTC)  # 23:30 in Auckland
    ids = (f"d{n}" for n in range(100))
    # Two workers, one partition each.
    zero, one = PartitionQuota(0), PartitionQuota(1)
    Pool.of(2, [zero], [one]), Pool.of(2, [one], [zero])
    assert zero.take(campaign, next(ids), evening_utc) is None
    assert zero.take(campaign, next(ids), evening_utc) is None
    assert zero.take(campaign, next(ids), evening_utc) == ReasonCode.QUOTA_EXHAUSTED
    roomy = campaign.model_copy(update={"quota": None})
    assert zero.take(roomy, next(ids), evening_utc) == ReasonCode.DAILY_QUOTA_EXHAUSTED
    next_day = evening_utc + timedelta(hours=1)  # 00:30 the next day in Auckland
    assert zero.take(roomy, next(ids), next_day) is None
    assert zero.days == {"card-upgrade": {"2026-12-05": 2, "2026-12-06": 1}}
    assert one.take(roomy, next(ids), evening_utc) is None  # the other's share is its own

"""The intake process.

For each candidate event, in order: parse (bad input → DLQ), de-duplicate by event id,
then consent → known campaign → frequency cap. Candidates that fail are decided here
(partners never see them: data minimisation). The rest are tokenised per partner and
batched: one request per partner per batch and one pending record for the joiner.
Offsets are committed only once every candidate up to them is in an emitted batch or
decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from schemas import (
    BankBundle,
    CandidateEvent,
    Decision,
    PendingBatch,
    PendingCandidate,
    ReasonCode,
)
from services.intake.ledger import Ledger
from services.intake.requests import fragment_requests
from services.intake.settings import IntakeSettings
from services.kernel.campaigns import CampaignBoard
from services.kernel.config import KafkaSettings
from services.kernel.crypto.signing import PartnerKeyRegistry, load_signing_key, public_key_b64
from services.kernel.crypto.tokens import TokenSource, load_token_source, token_or_decoy
from services.kernel.ids import decision_id_for, new_batch_id
from services.kernel.kafka.batches import Record, send_batched
from services.kernel.kafka.clients import (
    IDLE_FETCH_WAIT_MS,
    make_consumer,
    make_producer,
    partitions_of,
)
from services.kernel.kafka.dlq import DeadLetters, oversized
from services.kernel.kafka.lag import Sample, aiokafka_samples, watch_lag
from services.kernel.kafka.topics import (
    CAMPAIGN_CONFIG,
    CANDIDATES,
    DECISIONS,
    INTAKE_CUSTOMERS,
    MODEL_READY,
    PENDING,
    ROLLOUT_BANK,
    home_partition,
    requests_topic,
)
from services.kernel.kafka.window import read_window
from services.kernel.lifecycle import run_until_stopped
from services.kernel.metrics import DECISIONS as DECISION_COUNT
from services.kernel.metrics import MESSAGES_IN, MESSAGES_OUT, start_http
from services.kernel.model.rollout import PRESCREEN_PARTY, BundleWatcher, ReadinessBoard
from services.kernel.readiness import report_readiness

log = logging.getLogger(__name__)
SERVICE = "intake"


@dataclass
class OpenBatch:
    bundle: BankBundle
    started: float = field(default_factory=time.monotonic)
    candidates: list[PendingCandidate] = field(default_factory=list)
    tokens: dict[str, list[str]] = field(default_factory=dict)
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    customers: set[tuple[int, str]] = field(default_factory=set)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: IntakeService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.service.restore(assigned)


FORWARDED_HEADER = "fedscreen-forwarded"


def forwarded(record: object) -> bool:
    return any(k == FORWARDED_HEADER for k, _ in getattr(record, "headers", None) or [])


class IntakeService:
    def __init__(self, settings: IntakeSettings, kafka: KafkaSettings) -> None:
        self.settings = settings
        self.kafka = kafka
        # Partners answer only requests signed with the key they pinned for the bank.
        self.signing_key = load_signing_key(settings.signing_key_file)
        self.tokenizers: dict[str, TokenSource] = {}
        self.watcher = BundleWatcher(
            kafka,
            ROLLOUT_BANK,
            BankBundle,
            on_bundle=self._load_tokens,
            on_refused=self._refused_bundle,
        )
        self.refused: str | None = None
        """Why the newest bundle could not be adopted (no token map for a partner, ...)."""
        # Readiness counts only when signed: each partner replica's under its partner's
        # key, prescreen's under the key the bank gave it (by default the bank's own).
        prescreen_key = settings.prescreen_key or public_key_b64(self.signing_key)
        signers = PartnerKeyRegistry.parse(settings.partner_keys)
        self.board = ReadinessBoard(kafka, signers.with_key(PRESCREEN_PARTY, prescreen_key))
        # The campaigns marketing runs now (campaign.config.v1), over the bundle's.
        self.campaigns = CampaignBoard(kafka)
        self._active_version: str | None = None
        self.ledger = Ledger(settings.recent_events)
        self.open: OpenBatch | None = None
        self.positions: dict[TopicPartition, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.candidate_partitions = kafka.partitions  # the topic's own count, once started
        self.producer: AIOKafkaProducer | None = None
        self.dlq: DeadLetters | None = None
        # Set once the ledger of the assigned partitions is restored. aiokafka runs the
        # rebalance listener beside getmany(), which can already return records of the
        # new assignment: processed before the read-back, events batched just before a
        # crash were batched again (the kill -9 test decided one event two ways).
        self.restored = asyncio.Event()

    def _load_tokens(self, bundle: BankBundle) -> None:
        """Refuse a bundle naming a partner we hold no tokens for."""
        for card in bundle.partners:
            if card.partner not in self.tokenizers:
                self.tokenizers[card.partner] = load_token_source(
                    self.settings.token_keys_dir,
                    card.partner,
                    allow_hmac=self.settings.allow_hmac_tokens,
                )
        self.refused = None

    def _refused_bundle(self, _: int, __: bytes, why: str) -> None:
        self.refused = why

    def active(self) -> BankBundle | None:
        """The newest bank bundle that prescreen and every partner it names have loaded. A
        newer bundle waits until then, so a rollout never sends a batch that cannot be
        answered; the previous version keeps serving meanwhile."""
        newest_first = sorted(self.watcher.bundles.values(), key=lambda b: b.created_at)[::-1]
        for bundle in newest_first:
            if bundle.model_version == self._active_version:
                # Once active, a version stays so until a newer one is ready everywhere:
                # a replica that starts (and has not loaded it yet) or one that stops
                # must not send intake back to an older version, or stop it.
                return bundle
            parties = [PRESCREEN_PARTY, *(c.partner for c in bundle.partners)]
            if self.board.all_ready(parties, bundle.model_version):
                self._active_version = bundle.model_version
                return bundle
        return None

    def ready(self) -> bool:
        """A model is active and this instance owns candidate partitions, with their
        ledger restored."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why :meth:`ready` is false, for /readyz and the log; None when ready."""
        bundles = sorted(self.watcher.bundles.values(), key=lambda b: b.created_at)
        if not bundles:
            if self.refused is not None:
                return f"no usable model bundle on {ROLLOUT_BANK}: {self.refused}"
            return f"waiting for a model bundle on {ROLLOUT_BANK}"
        if self.active() is None:
            newest = bundles[-1]
            parties = [PRESCREEN_PARTY, *(c.partner for c in newest.partners)]
            missing = self.board.waiting_for(parties, newest.model_version)
            return (
                f"waiting for readiness of {', '.join(missing)} for model "
                f"{newest.model_version} on {MODEL_READY}"
            )
        if not self.campaigns.caught_up.is_set():
            return f"reading the campaign configuration on {CAMPAIGN_CONFIG}"
        if self.consumer is None or not self.consumer.assignment():
            return f"no partition of {CANDIDATES} assigned yet (group {self.settings.group_id})"
        if not self.restored.is_set():
            return "restoring the customer ledger of the assigned partitions"
        return None

    async def run(self) -> None:
        self.producer = make_producer(self.kafka)
        await self.producer.start()
        self.dlq = DeadLetters(self.producer, SERVICE, self.kafka.max_message_bytes)
        http = await start_http(
            self.settings.metrics_port, self.not_ready_reason, self.settings.metrics_host
        )
        try:
            await run_until_stopped(
                report_readiness(SERVICE, self.not_ready_reason),
                self.watcher.run(),
                self.board.run(),
                self.campaigns.run(),
                self.consume(),
                watch_lag(SERVICE, self._lag),
            )
        finally:
            if self.consumer is not None:
                # A clean stop hands over no half-filled batch: emit it and commit.
                await self.emit()
                await self.checkpoint()
                await self.consumer.stop()
            await self.producer.stop()
            if http is not None:
                await http.cleanup()

    async def _lag(self) -> list[Sample]:
        return [] if self.consumer is None else await aiokafka_samples(self.consumer)

    async def consume(self) -> None:
        # The group is joined first, while the partners and prescreen start: a join
        # takes seconds (the embedded broker holds it for half the rebalance timeout),
        # and nothing is fetched before the loop below. (A model still not active after
        # the consumer's max poll interval, 5 minutes, makes it leave the group; its
        # first fetch joins again.)
        consumer = make_consumer(self.kafka, group_id=self.settings.group_id)
        consumer.subscribe([CANDIDATES], listener=_Rebalance(self))
        self.consumer = consumer  # before start: the first assignment's restore uses it
        await consumer.start()
        self.candidate_partitions = len(await partitions_of(consumer, CANDIDATES))
        # No candidate is read before a model is active: a candidate we cannot batch
        # would otherwise have to be suppressed for no reason of its own.
        while self.active() is None:
            self.board.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.board.changed.wait(), 0.5)
        # Nor by the bundle's campaigns while a published configuration is being read.
        await self.campaigns.caught_up.wait()
        log.info("intake consuming %s", CANDIDATES)
        while True:
            timeout = 500.0
            if self.open is not None:
                age_ms = (time.monotonic() - self.open.started) * 1000
                timeout = max(1.0, self.settings.linger_ms - age_ms)
            batches = await consumer.getmany(
                timeout_ms=int(timeout), max_records=self.settings.max_poll_records
            )
            if batches and not self.restored.is_set():
                await self.restored.wait()
            owned = consumer.assignment()  # records of partitions revoked meanwhile are not ours
            bundle = self.active()  # once per poll: a rollout takes effect between polls
            assert bundle is not None
            for tp, records in batches.items():
                if tp not in owned:
                    continue
                for record in records:
                    await self.process(tp, record, bundle)
                    self.positions[tp] = record.offset + 1
                MESSAGES_IN.labels(service=SERVICE, topic=CANDIDATES).inc(len(records))
            if self.open is not None and (
                (time.monotonic() - self.open.started) * 1000 >= self.settings.linger_ms
            ):
                await self.emit()
            if batches or self.ledger.dirty:
                await self.checkpoint()

    async def process(self, tp: TopicPartition, record: object, bundle: BankBundle) -> None:
        assert self.dlq is not None
        value: bytes | None = getattr(record, "value", None)
        if (too_large := oversized(value, self.kafka.max_message_bytes)) is not None:
            await self.dlq.send(record, "oversized", too_large)  # type: ignore[arg-type]
            return
        try:
            event = CandidateEvent.model_validate_json(value or b"")
        except ValidationError as exc:
            await self.dlq.send(record, "invalid-schema", exc)  # type: ignore[arg-type]
            return
        home = home_partition(event.customer_id.encode(), self.candidate_partitions)
        if tp.partition != home and not forwarded(record):
            await self.forward(record, event, home)
            return
        if self.ledger.seen(tp.partition, event.customer_id, event.event_id):
            log.debug("duplicate event %s ignored", event.event_id)
            return
        policy = bundle.policy
        campaign, version = self.campaigns.resolve(event.campaign_id, policy)
        if not event.consent_marketing:
            await self.decide(event, ReasonCode.NO_CONSENT, version)
            return
        if campaign is None:
            await self.decide(event, ReasonCode.UNKNOWN_CAMPAIGN, version)
            return
        # Before the frequency cap: a candidate of a paused campaign uses up none of its
        # customer's screenings.
        if (closed := campaign.closed_reason(datetime.now(UTC))) is not None:
            await self.decide(event, closed, version)
            return
        at = event.occurred_at.timestamp()
        if not self.ledger.admit(tp.partition, event.customer_id, at, policy.frequency_cap):
            await self.decide(event, ReasonCode.FREQUENCY_CAP, version)
            return
        await self.add(tp, record, event, bundle)

    async def forward(self, record: object, event: CandidateEvent, home: int) -> None:
        """A customer's duplicate check and frequency cap live in one partition, the one
        the murmur2 partitioner gives its id. A producer with another partitioner
        (librdkafka's default) or another key put this event elsewhere: it is written to
        that partition, where it is judged, before this record's offset is committed
        (checkpoint flushes first); written twice after a crash, it is a duplicate there.
        It is marked as forwarded and never moved again: two instances that briefly
        disagree on the partition count (the topic just grew) cannot bounce it."""
        assert self.producer is not None
        headers = list(getattr(record, "headers", None) or [])
        headers.append((FORWARDED_HEADER, b"1"))
        await self.producer.send(
            CANDIDATES,
            key=event.customer_id.encode(),
            value=getattr(record, "value", None),
            partition=home,
            headers=headers,
        )
        MESSAGES_OUT.labels(service=SERVICE, topic=CANDIDATES).inc()

    async def add(
        self, tp: TopicPartition, record: object, event: CandidateEvent, bundle: BankBundle
    ) -> None:
        if self.open is not None and self.open.bundle.model_version != bundle.model_version:
            await self.emit()  # a rollout closes the batch: one model version per batch
        if self.open is None:
            self.open = OpenBatch(bundle, tokens={c.partner: [] for c in bundle.partners})
        batch = self.open
        batch.first_offsets.setdefault(tp, getattr(record, "offset", 0))
        batch.customers.add((tp.partition, event.customer_id))
        batch.candidates.append(
            PendingCandidate.model_construct(
                event_id=event.event_id,
                customer_id=event.customer_id,
                campaign_id=event.campaign_id,
                occurred_at=event.occurred_at,
                features=event.features,
                source_partition=tp.partition,
            )
        )
        for partner, tokens in batch.tokens.items():
            tokens.append(token_or_decoy(self.tokenizers[partner], event.customer_id))
        if len(batch.candidates) >= min(bundle.packing.slots, self.settings.max_batch):
            await self.emit()

    async def emit(self) -> None:
        batch, self.open = self.open, None
        if batch is None or not batch.candidates:
            return
        assert self.producer is not None
        batch_id = new_batch_id()
        created = datetime.now(UTC)
        deadline = created + timedelta(milliseconds=self.settings.deadline_ms)
        version = batch.bundle.model_version
        key = batch_id.encode()
        pending = PendingBatch.model_construct(
            batch_id=batch_id,
            model_version=version,
            created_at=created,
            deadline_at=deadline,
            partners=list(batch.tokens),
            candidates=batch.candidates,
            tokens=batch.tokens,
        )
        await self.producer.send(PENDING, key=key, value=pending.model_dump_json().encode())
        requests = fragment_requests(
            batch_id=batch_id,
            model_version=version,
            created_at=created,
            deadline_at=deadline,
            tokens=batch.tokens,
            signing_key=self.signing_key,
        )
        for partner, request in requests.items():
            await self.producer.send(
                requests_topic(partner), key=key, value=request.model_dump_json().encode()
            )

    async def decide(self, event: CandidateEvent, reason: ReasonCode, version: int) -> None:
        assert self.producer is not None
        decision = Decision(
            decision_id=decision_id_for(event.event_id),
            event_id=event.event_id,
            customer_id=event.customer_id,
            campaign_id=event.campaign_id,
            outcome="suppressed",
            reasons=[reason],
            occurred_at=event.occurred_at,
            decided_at=datetime.now(UTC),
            decided_by="intake",
            campaign_config_version=version,
        )
        DECISION_COUNT.labels(outcome="suppressed", reason=reason.value).inc()
        await self.producer.send(
            DECISIONS, key=event.event_id.encode(), value=decision.model_dump_json().encode()
        )

    async def checkpoint(self) -> None:
        """Wait for every output, then persist customer state, then commit what is safe.

        The order matters under kill -9: a customer state that reached the changelog
        before its batch's pending record would make the restarted instance take the
        redelivered candidates for duplicates, and drop them undecided."""
        assert self.producer is not None and self.consumer is not None
        await self.producer.flush()
        held = self.open.customers if self.open is not None else set()
        changes = [
            Record(INTAKE_CUSTOMERS, partition, customer_id.encode(), state)
            for partition, customer_id, state in self.ledger.take_dirty(held)
        ]
        # About one changelog record per candidate: one record batch per partition
        # instead of a producer.send each.
        await asyncio.gather(*await send_batched(self.producer, changes))
        offsets = {}
        floors = self.open.first_offsets if self.open is not None else {}
        for tp, position in self.positions.items():
            offsets[tp] = min(position, floors.get(tp, position))
        if offsets:
            await self.consumer.commit(offsets)

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        self.restored.clear()
        if self.consumer is not None and self.producer is not None:
            await self.emit()
            await self.checkpoint()
        for tp in revoked:
            self.ledger.drop(tp.partition)
            self.positions.pop(tp, None)

    async def restore(self, assigned: list[TopicPartition]) -> None:
        """Rebuild the ledger for newly owned partitions from the changelog."""
        partitions = [tp.partition for tp in assigned if tp.topic == CANDIDATES]
        if not partitions:
            self.restored.set()
            return
        reader = make_consumer(self.kafka, group_id=None, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
        await reader.start()
        try:
            try:  # before the first assign(): see partitions_of
                pending = await partitions_of(reader, PENDING, timeout_s=30.0)
            except TimeoutError:
                log.warning("no %s topic: no batches to read back", PENDING)
                pending = []
            tps = [TopicPartition(INTAKE_CUSTOMERS, p) for p in partitions]
            reader.assign(tps)
            ends = await reader.end_offsets(tps)
            await reader.seek_to_beginning(*tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            restored = 0
            while remaining:
                batches = await reader.getmany(*remaining, timeout_ms=500)
                for tp, records in batches.items():
                    for record in records:
                        self.ledger.restore(tp.partition, record.key.decode(), record.value)
                        restored += 1
                for tp in list(remaining):
                    if await reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
            log.info("restored %d customer states for partitions %s", restored, partitions)
            owned = [tp for tp in assigned if tp.topic == CANDIDATES]
            await self._recover_batched(reader, owned, pending)
        finally:
            await reader.stop()
        self.restored.set()

    async def _recover_batched(
        self, reader: AIOKafkaConsumer, owned: list[TopicPartition], pending_partitions: list[int]
    ) -> None:
        """Mark as seen the redelivered events that a previous owner already batched.

        A crash between flushing a batch's pending record and writing its customers'
        state (the safe order: outputs first) leaves those events uncommitted but
        batched. Read back, they would be batched again and decided a second time,
        perhaps differently. So read the pending records written since the earliest
        uncommitted event and remember every event of our partitions they carry."""
        assert self.consumer is not None
        since: int | None = None
        for tp in owned:
            committed = await self.consumer.committed(tp)
            if committed is None:
                continue  # never committed: nothing was batched by anyone before
            reader.assign([tp])
            reader.seek(tp, committed)
            records = (await reader.getmany(tp, timeout_ms=3000, max_records=1)).get(tp, [])
            if records:
                since = min(since or records[0].timestamp, records[0].timestamp)
        if since is None:
            log.info("no committed offsets yet: no batches to read back")
            return
        records = await read_window(self.kafka, PENDING, pending_partitions, since / 1000)
        mine = {tp.partition for tp in owned}
        marked = 0
        for record in records:
            try:
                batch = PendingBatch.model_validate_json(record.value)
            except ValidationError:
                continue  # prescreen dead-letters it; nothing of ours to learn
            for candidate in batch.candidates:
                partition = candidate.source_partition
                if partition in mine and partition is not None:
                    marked += self.ledger.batched(
                        partition,
                        candidate.customer_id,
                        candidate.event_id,
                        candidate.occurred_at.timestamp(),
                    )
        log.info(
            "read back %d pending records since %s: %d redelivered events were batched "
            "before the restart, not again",
            len(records),
            datetime.fromtimestamp(since / 1000, UTC).isoformat(),
            marked,
        )

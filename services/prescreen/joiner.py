"""Join a batch's pending record with its partners' fragments and decide it.

State lives in faust tables keyed by batch id (``batches``, as batch_state.py reads
it, ``pending``, ``decided``), quota counts in the release log (quota.py); this class
holds the logic and is given the tables and a send function, so it runs the same
inside the faust agent and in unit tests. A batch is decided exactly once: when every
participant of its current attempt answered, or when that attempt's deadline tick
arrives. What the fragments say is screening.py's part; what is decided, policy.py's.

Fragments are masked pairwise (secure aggregation): only the product of *all* the
participants' fragments decrypts to something meaningful. When a partner misses the
deadline, the batch is decided without any partner's answer (suppressed, or scored on
the bank-only fallback model with no blacklist flags): asking the others again would
give the bank their flags over a subset, which compared with a complete batch of
another day tells which partner flagged a customer (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from pydantic import ValidationError

from schemas import (
    BankBundle,
    CampaignPolicy,
    DeadlineTick,
    Decision,
    EncryptedFragment,
    PendingBatch,
    PolicyConfig,
    ReasonCode,
    Release,
)
from services.kernel.crypto.codec import b64_to_int, bytes_to_b64
from services.kernel.crypto.paillier import CiphertextError, PrivateKey
from services.kernel.crypto.signing import PartnerKeyRegistry, SignatureError
from services.kernel.ids import decision_id_for
from services.kernel.kafka.topics import DECISIONS, FRAGMENTS, PENDING, RELEASES
from services.kernel.metrics import DECISIONS as DECISION_COUNT
from services.kernel.metrics import (
    PARTNER_LATENCY,
)
from services.kernel.model.scoring import BankScorer
from services.prescreen.batch_state import BatchState
from services.prescreen.outputs import Output
from services.prescreen.policy import Screening, Verdict, decide
from services.prescreen.quota import PartitionQuota, QuotaLedger
from services.prescreen.screening import Screener

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Output], int], Awaitable[Awaitable[None]]]
"""Queue a decided batch's records for its partition, in order behind every batch
queued before; returns, once queued, what to await for the broker's acknowledgement
(the joiner records a batch decided only after that)."""
DeadLetter = Callable[[str, str], Awaitable[None]]
Campaigns = Callable[[str, PolicyConfig], tuple[CampaignPolicy | None, int]]
"""A campaign's rules and the configuration version they come from (CampaignBoard)."""


class RejectedInputError(ValueError):
    """An input the joiner will not use; ``reason`` is the DLQ reason."""

    def __init__(self, reason: str, message: str, *, keep_value: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.keep_value = keep_value
        """False for a partner's genuine ciphertext: the DLQ keeps its digest only, so no
        later reader of the DLQ can combine it with the other partners' answers."""


class Joiner:
    def __init__(
        self,
        *,
        batches: MutableMapping[str, Any],
        pending_records: MutableMapping[str, str],
        decided: MutableMapping[str, Any],
        publish: Publish,
        private_keys: dict[str, PrivateKey],
        registry: PartnerKeyRegistry,
        bundle_for: Callable[[str], tuple[BankBundle, BankScorer] | None],
        partitions: int,
        allow_plaintext: bool = False,
        orphan_fragment_s: float = 60.0,
        decided_retention_s: float = 3600.0,
        max_message_bytes: int = 1_000_000,
        campaigns: Campaigns | None = None,
        ledger: QuotaLedger | None = None,
    ) -> None:
        self.batches = batches
        # The pending record's JSON, written once per batch: kept out of ``batches``,
        # whose every write (one per fragment) goes to its changelog whole. Inside it,
        # each batch's 13 KB record was written three times (46 % of the broker's bytes).
        self.pending_records = pending_records
        self.decided = decided
        self.ledger = ledger or QuotaLedger(partitions)
        self.publish = publish
        self.private_keys = private_keys
        self.screener = Screener(private_keys)
        self.registry = registry
        self.bundle_for = bundle_for
        self.partitions = partitions
        self.allow_plaintext = allow_plaintext
        self.orphan_fragment_s = orphan_fragment_s
        self.decided_retention_s = decided_retention_s
        self.max_message_bytes = max_message_bytes
        self.campaigns: Campaigns = campaigns or (lambda cid, policy: (policy.campaign(cid), 0))
        self._events_since_sweep = 0
        # For batches no private key can sign ticks for (plaintext benchmark mode, or a
        # model this instance does not hold): the instance that owns a partition both
        # sends and consumes its ticks, so a per-process secret suffices.
        self._fallback_tick_secret = secrets.token_bytes(32)
        # Parsed pending records by batch id: the table keeps the JSON (durable), this
        # keeps each fragment's arrival from parsing it again. Rebuilt lazily after a restart.
        self._pending: dict[str, PendingBatch] = {}
        # Batches whose outputs are on their way to the broker, with the partners whose
        # answers are in the decision: the agent runs several handlers at once, so while
        # one awaits the acknowledgements another may see the batch's tick or a late
        # fragment, and must take the batch as decided.
        self._deciding: dict[str, list[str]] = {}

    # -- inputs -------------------------------------------------------------
    async def handle(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Raises :class:`RejectedInputError` for input that belongs in the DLQ."""
        if value is not None and len(value) > self.max_message_bytes:
            # Parsing it would cost memory and CPU for nothing: no well-formed pending
            # record, fragment or tick comes near the limit.
            raise RejectedInputError(
                "oversized", f"{len(value)} bytes, over the {self.max_message_bytes}-byte limit"
            )
        if topic == PENDING:
            await self.on_pending(partition, self._parse(PendingBatch, value))
        elif topic == FRAGMENTS and (KIND_HEADER, TICK_KIND) in headers:
            await self.on_deadline(self._parse(DeadlineTick, value))
        elif topic == FRAGMENTS:
            await self.on_fragment(partition, self._parse(EncryptedFragment, value))
        else:  # pragma: no cover - the agent subscribes to exactly these topics
            raise RejectedInputError("unknown-topic", topic)
        self._events_since_sweep += 1
        if self._events_since_sweep >= 500:
            self._events_since_sweep = 0
            self.sweep(partition)

    @staticmethod
    def _parse(model: type[Any], value: bytes | None) -> Any:
        try:
            return model.model_validate_json(value or b"")
        except ValidationError as exc:
            raise RejectedInputError("invalid-schema", str(exc)) from exc

    async def on_pending(self, partition: int, pending: PendingBatch) -> None:
        if pending.batch_id in self.decided:
            return  # redelivered after its decision
        state = self.state_of(pending.batch_id) or BatchState.new(partition)
        if self._has_pending(pending.batch_id, state):
            return  # duplicate pending record
        # Both written again when a crash kept one changelog write and lost the other
        # (the record is then delivered again: its offset was not committed).
        self.pending_records[pending.batch_id] = pending.model_dump_json()
        state.deadline = pending.deadline_at.timestamp()
        self.batches[pending.batch_id] = state.to_table()
        self._pending[pending.batch_id] = pending
        await self._maybe_decide(pending.batch_id, state)

    async def on_fragment(self, partition: int, fragment: EncryptedFragment) -> None:
        self._check_signature(fragment)
        if (used := self._answers_used(fragment.batch_id)) is not None:
            # Nothing can change a decided batch. Whether the partner's answer was part
            # of the decision tells a replay (or a redelivery after a restart) from an
            # answer that came too late; both are kept in the DLQ for the record.
            if fragment.partner in used:
                raise RejectedInputError(
                    "replayed-fragment",
                    f"{fragment.partner}'s fragment for batch {fragment.batch_id} was already "
                    "used in its decision (a replay, or a redelivery after a restart)",
                    keep_value=False,
                )
            raise RejectedInputError(
                "late-fragment",
                f"{fragment.partner}'s fragment for batch {fragment.batch_id} arrived after "
                "the batch was decided without it",
                keep_value=False,
            )
        self._check_fragment(fragment)
        state = self.state_of(fragment.batch_id) or BatchState.new(partition)
        if state.has_answer(fragment.partner, fragment.attempt):
            return  # duplicate delivery
        state.fragments.setdefault(str(fragment.attempt), {})[fragment.partner] = (
            fragment.model_dump_json()
        )
        if fragment.attempt == 1 and self._has_pending(fragment.batch_id, state):
            requested = self._pending_of(fragment.batch_id, state).created_at.timestamp()
            PARTNER_LATENCY.labels(partner=fragment.partner).observe(time.time() - requested)
        self.batches[fragment.batch_id] = state.to_table()
        await self._maybe_decide(fragment.batch_id, state)

    def _answers_used(self, batch_id: str) -> list[str] | None:
        """The partners whose answers a decided (or being decided) batch used; None
        while the batch is undecided."""
        if (deciding := self._deciding.get(batch_id)) is not None:
            return deciding
        decided = self.decided.get(batch_id)
        if decided is None:
            return None
        return list(decided[2]) if len(decided) > 2 else []

    async def on_deadline(self, tick: DeadlineTick) -> None:
        state = self.state_of(tick.batch_id)
        if state is None or tick.batch_id in self._deciding:
            return
        if tick.batch_id in self.decided:
            # Left over from a crash between the writes that end a decision.
            self._forget(tick.batch_id)
            return
        secret = self._tick_secret(tick.batch_id, state)
        expected = tick_mac(secret, tick.batch_id, tick.attempt, tick.fired_at)
        if not hmac.compare_digest(tick.mac, expected):
            raise RejectedInputError("bad-tick", f"deadline tick for {tick.batch_id} not ours")
        if tick.attempt != 1:
            return  # no batch has a later attempt any more
        if not self._has_pending(tick.batch_id, state):
            log.warning(
                "dropping fragments of batch %s: its pending record never came",
                tick.batch_id,
                extra={"batch_id": tick.batch_id},
            )
            del self.batches[tick.batch_id]
            return
        await self._decide(tick.batch_id, state)

    def _check_signature(self, fragment: EncryptedFragment) -> None:
        try:
            self.registry.verify(fragment)
        except SignatureError as exc:
            raise RejectedInputError("bad-signature", str(exc)) from exc

    def _check_fragment(self, fragment: EncryptedFragment) -> None:
        """Everything but the signature (checked first, by the caller)."""
        if fragment.attempt != 1 or fragment.flags_only:
            raise RejectedInputError(
                "bad-attempt",
                f"{fragment.partner}'s fragment for batch {fragment.batch_id} answers attempt "
                f"{fragment.attempt}{' (flags only)' if fragment.flags_only else ''}: "
                "this bank never asks again",
                keep_value=False,
            )
        if self.bundle_for(fragment.model_version) is None:
            raise RejectedInputError(
                "unknown-model-version",
                f"no model {fragment.model_version} is loaded",
                keep_value=False,
            )
        if fragment.mode == "plaintext":
            if not self.allow_plaintext:
                raise RejectedInputError(
                    "plaintext-refused", "plaintext fragments are benchmark-only"
                )
            return
        key = self.private_keys.get(fragment.key_id)
        if key is None:
            raise RejectedInputError(
                "unknown-key", f"no private key {fragment.key_id}", keep_value=False
            )
        try:
            key.public.validate(b64_to_int(fragment.ciphertext or ""))
        except (CiphertextError, ValueError) as exc:
            raise RejectedInputError("invalid-ciphertext", str(exc), keep_value=False) from exc

    def state_of(self, batch_id: str) -> BatchState | None:
        value = self.batches.get(batch_id)
        return None if value is None else BatchState.from_table(value)

    def _has_pending(self, batch_id: str, state: BatchState) -> bool:
        """The batch's pending record arrived (and both its writes are in the tables)."""
        if state.legacy_pending is not None:
            return True  # a batch held by a version that kept the record in its state
        return state.deadline is not None and batch_id in self.pending_records

    def _pending_of(self, batch_id: str, state: BatchState) -> PendingBatch:
        pending = self._pending.get(batch_id)
        if pending is None:
            text = state.legacy_pending or self.pending_records[batch_id]
            pending = PendingBatch.model_validate_json(text)
            self._pending[batch_id] = pending
        return pending

    def _forget(self, batch_id: str) -> None:
        """Drop a decided batch's state. The pending record goes first: a crash between
        the two deletions most likely leaves the batch's state, whose next tick (it is
        decided) comes back here; a record left alone is swept (``sweep``)."""
        if batch_id in self.pending_records:
            del self.pending_records[batch_id]
        if batch_id in self.batches:
            del self.batches[batch_id]
        self._pending.pop(batch_id, None)

    @staticmethod
    def _participants(pending: PendingBatch, state: BatchState) -> list[str]:
        return list(state.participants or pending.partners)

    @staticmethod
    def _fragments(state: BatchState) -> dict[str, EncryptedFragment]:
        """The current attempt's fragments."""
        return {n: EncryptedFragment.model_validate_json(t) for n, t in state.current.items()}

    # -- deciding -------------------------------------------------------------
    async def _maybe_decide(self, batch_id: str, state: BatchState) -> None:
        if not self._has_pending(batch_id, state) or batch_id in self._deciding:
            return
        pending = self._pending_of(batch_id, state)
        if set(self._participants(pending, state)) <= set(state.current):
            await self._decide(batch_id, state, pending=pending)

    async def _decide(
        self,
        batch_id: str,
        state: BatchState,
        pending: PendingBatch | None = None,
    ) -> None:
        pending = pending or self._pending_of(batch_id, state)
        self._pending.pop(batch_id, None)
        fragments = self._fragments(state)
        participants = self._participants(pending, state)
        attempt = state.attempt
        now = datetime.now(UTC)
        loaded = self.bundle_for(pending.model_version)
        missing: list[str] = []
        if loaded is None:
            log.error(
                "batch %s: model %s not available",
                batch_id,
                pending.model_version,
                extra={"batch_id": batch_id, "model_version": pending.model_version},
            )
            screenings = [Screening(pd=None, blacklisted=False)] * len(pending.candidates)
            bundle = None
        else:
            bundle, scorer = loaded
            screenings, missing = self.screener.screen(
                pending, fragments, participants, attempt, bundle, scorer
            )
        # The outputs must be on the broker before the tables say "decided": the table
        # changelog is flushed in the background, so otherwise a crash could leave the
        # batch recorded as decided with its decisions lost, and the reprocessed inputs
        # would then be ignored as replays.
        self._deciding[batch_id] = sorted(fragments)
        try:
            await self._emit(pending, screenings, missing, bundle, now, state.partition)
        finally:
            self._deciding.pop(batch_id, None)
        log.info(
            "batch %s decided",
            batch_id,
            extra={
                "batch_id": batch_id,
                "model_version": pending.model_version,
                "candidates": len(pending.candidates),
                "attempt": attempt,
                "missing_partners": missing,
            },
        )
        # Who had answered: a later copy of one of these answers is a replay. Written
        # before the batch is deleted: a crash between the two changelog writes then
        # leaves a decided batch that is still held (its next tick removes it), never
        # one that is in neither table and would look skipped after the restart.
        self.decided[batch_id] = [now.timestamp(), state.partition, sorted(fragments)]
        # Also drops the parsed record again: the deadline timer may have parsed it back
        # into the cache while _emit awaited the broker (tick_for).
        self._forget(batch_id)

    async def _emit(
        self,
        pending: PendingBatch,
        screenings: list[Screening],
        missing: list[str],
        bundle: BankBundle | None,
        now: datetime,
        partition: int,
    ) -> None:
        while True:
            quota = await self.ledger.of(partition)
            async with quota.lock:
                if quota.pool is not None and quota.pool.stale:
                    continue  # forgotten while this handler waited for the lock
                try:
                    records = self._outputs(pending, screenings, missing, bundle, now, quota)
                    acks = await self.publish(records, partition)
                except BaseException:
                    self.ledger.forget()  # counted, perhaps, but not queued
                    raise
                break
        await self.ledger.acknowledged(partition, acks)

    def _outputs(
        self,
        pending: PendingBatch,
        screenings: list[Screening],
        missing: list[str],
        bundle: BankBundle | None,
        now: datetime,
        quota: PartitionQuota,
    ) -> list[Output]:
        """The batch's decisions and releases, its releases counted; the last release
        carries the partition's counts."""
        records: list[Output] = []
        last_release = -1
        for candidate, screening in zip(pending.candidates, screenings, strict=True):
            version = 0
            decision_id = decision_id_for(candidate.event_id)
            if bundle is None:
                verdict = Verdict("suppressed", (ReasonCode.MODEL_UNAVAILABLE,))
            else:
                campaign, version = self.campaigns(candidate.campaign_id, bundle.policy)
                verdict = decide(
                    campaign, screening, partial(quota.take, decision_id=decision_id, now=now), now
                )
            reasons = verdict.reasons
            decision = Decision.model_construct(
                decision_id=decision_id,
                event_id=candidate.event_id,
                customer_id=candidate.customer_id,
                campaign_id=candidate.campaign_id,
                outcome=verdict.outcome,
                reasons=list(reasons),
                pd=screening.pd,
                score_band=verdict.score_band,
                batch_id=pending.batch_id,
                model_version=pending.model_version,
                degraded=screening.degraded,
                missing_partners=missing if screening.partner_unavailable else [],
                occurred_at=candidate.occurred_at,
                decided_at=now,
                decided_by="prescreen",
                campaign_config_version=version,
            )
            DECISION_COUNT.labels(outcome=verdict.outcome, reason=reasons[0].value).inc()
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "decision %s: %s",
                    decision_id,
                    verdict.outcome,
                    extra={
                        "batch_id": pending.batch_id,
                        "decision_id": decision_id,
                        "event_id": candidate.event_id,
                        "reason": reasons[0].value,
                    },
                )
            records.append(
                Output(DECISIONS, candidate.event_id.encode(), decision.model_dump_json().encode())
            )
            if verdict.outcome == "released":
                assert verdict.score_band is not None and verdict.expires_at is not None
                release = Release.model_construct(
                    decision_id=decision_id,
                    campaign_id=candidate.campaign_id,
                    candidate_ref=candidate.event_id,
                    score_band=verdict.score_band,
                    released_at=now,
                    expires_at=verdict.expires_at,
                )
                last_release = len(records)
                records.append(
                    Output(RELEASES, decision_id.encode(), release.model_dump_json().encode())
                )
        if last_release >= 0:
            records[last_release] = records[last_release]._replace(headers=(quota.header(),))
        return records

    # -- deadlines ---------------------------------------------------------------
    def _tick_secret(self, batch_id: str, state: BatchState) -> bytes:
        """What a batch's ticks are authenticated with: derived from its model's private
        key (or, for fragments whose pending record never came, the key they name), so
        every prescreen instance agrees; else this process's own secret."""
        if self._has_pending(batch_id, state):
            loaded = self.bundle_for(self._pending_of(batch_id, state).model_version)
            key_id = loaded[0].key_id if loaded is not None else None
        else:
            texts = (text for by in state.fragments.values() for text in by.values())
            key_id = next((json.loads(text)["key_id"] for text in texts), None)
        key = self.private_keys.get(key_id) if key_id is not None else None
        if key is None:
            return self._fallback_tick_secret
        return hashlib.sha256(
            b"fedscreen-deadline-tick|" + int(key.p).to_bytes(512, "big")
        ).digest()

    def tick_for(self, batch_id: str, attempt: int = 1) -> bytes | None:
        """A signed deadline tick for this attempt of the batch (None if the batch is gone
        or has moved on to another attempt since :meth:`expired` listed it)."""
        state = self.state_of(batch_id)
        if state is None or state.attempt != attempt:
            return None
        fired = datetime.now(UTC)
        mac = tick_mac(self._tick_secret(batch_id, state), batch_id, attempt, fired)
        tick = DeadlineTick(batch_id=batch_id, attempt=attempt, fired_at=fired, mac=mac)
        return tick.model_dump_json().encode()

    # -- housekeeping -----------------------------------------------------------
    def expired(
        self, now: float, partitions: Collection[int] | None = None
    ) -> list[tuple[str, int]]:
        """(batch id, attempt) of every attempt whose deadline passed (or of orphan
        fragments that aged out), of the given partitions only if any are given."""
        due = []
        for batch_id, value in list(self.batches.items()):
            if batch_id in self._deciding:
                continue
            attempt = BatchState.due(value, now, self.orphan_fragment_s, partitions)
            if attempt is not None:
                due.append((batch_id, attempt))
        return due

    def sweep(self, partition: int) -> None:
        """Forget decided batch ids of this partition past retention (only keys of the
        current event's partition: a table write lands in that partition's changelog)."""
        cutoff = time.time() - self.decided_retention_s
        for batch_id, (decided_at, part, *_) in list(self.decided.items()):
            if part == partition and decided_at < cutoff:
                del self.decided[batch_id]
        # A decided batch's pending record whose deletion a crash lost (the two tables'
        # changelogs are separate topics, so the order of their writes is not certain).
        for batch_id in list(self.pending_records):
            decided = self.decided.get(batch_id)
            if decided is not None and decided[1] == partition and batch_id not in self.batches:
                del self.pending_records[batch_id]


KIND_HEADER = "fedscreen-kind"
TICK_KIND = b"deadline-tick"


def tick_mac(secret: bytes, batch_id: str, attempt: int, fired_at: datetime) -> str:
    message = f"{batch_id}|{attempt}|{fired_at.isoformat()}".encode()
    return bytes_to_b64(hmac.new(secret, message, hashlib.sha256).digest())

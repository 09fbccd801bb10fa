"""The bank's side of ``fedscreen align``: one PSI session per partner, concurrently.

The bank hashes its ids once, then per partner blinds them with that partner's bank
secret (``<secret_dir>/<partner>.scalar``), offers them on ``fed.align.<partner>.v1``,
waits for the answer on ``fed.align.bank.v1``, returns the partner's set raised to its
secret and writes ``<out_dir>/<partner>.csv`` (``customer_id,token``, shared customers
only). A partner that fails or times out does not stop the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

from aiokafka import TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.alignment import TO_BANK, PsiAnswer, PsiError, PsiOffer, PsiResult, ToBank
from services.alignment.files import write_token_map
from services.alignment.transport import AlignmentError, Channel, Received
from services.kernel.config import KafkaSettings
from services.kernel.crypto import psi
from services.kernel.crypto.signing import PartnerKeyRegistry
from services.kernel.kafka.clients import IDLE_FETCH_WAIT_MS, make_consumer, make_producer
from services.kernel.kafka.topics import ALIGN_TO_BANK, align_topic

log = logging.getLogger(__name__)

Progress = Callable[[str, str, float], None]
"""(partner, stage, fraction done) -> None."""


@dataclass(frozen=True)
class PartnerOutcome:
    partner: str
    session_id: str
    shared: int
    bank_size: int
    partner_size: int
    path: Path
    seconds: float
    bytes_sent: int
    bytes_received: int
    new_secret: bool
    """The bank's secret for this partner was just created: tokens differ from any
    earlier run's."""


@dataclass(frozen=True)
class AlignJob:
    ids: Sequence[str]
    partners: Sequence[str]
    secret_dir: Path
    out_dir: Path
    signing_key: Ed25519PrivateKey
    """The bank's key: partners act only on offers and results it signed."""
    registry: PartnerKeyRegistry
    """The partners' keys: an answer counts only from the partner it names."""
    timeout_s: float = 600.0


class BankEndpoint:
    """The producer, a reader of ``fed.align.bank.v1`` from its current end, and a task
    that hands each answer to the session waiting for it."""

    def __init__(
        self, kafka: KafkaSettings, signing_key: Ed25519PrivateKey, registry: PartnerKeyRegistry
    ) -> None:
        self.kafka = kafka
        self.signing_key = signing_key
        self.registry = registry
        self._waiting: dict[str, asyncio.Future[Received[ToBank]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.channel: Channel[ToBank] | None = None

    async def __aenter__(self) -> BankEndpoint:
        producer = make_producer(self.kafka)
        consumer = make_consumer(self.kafka, group_id=None, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
        try:
            await producer.start()
            await consumer.start()
            partitions = consumer.partitions_for_topic(ALIGN_TO_BANK) or set()
            if not partitions:
                raise AlignmentError(
                    f"topic {ALIGN_TO_BANK} does not exist (create it: fedscreen topics)"
                )
            # No group, from the end: answers can only follow offers sent after this.
            tps = [TopicPartition(ALIGN_TO_BANK, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            await producer.stop()
            raise
        self.channel = Channel(
            self.kafka,
            producer,
            consumer,
            TO_BANK,
            "align-bank",
            signing_key=self.signing_key,
            verify=self.registry.verify,
        )
        self._task = asyncio.create_task(self._dispatch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.channel is not None:
            await self.channel.consumer.stop()
            await self.channel.producer.stop()

    def expect(self, session_id: str) -> asyncio.Future[Received[ToBank]]:
        if self._task is None or self._task.done():
            raise AlignmentError(f"the reader of {ALIGN_TO_BANK} has stopped")
        future: asyncio.Future[Received[ToBank]] = asyncio.get_running_loop().create_future()
        self._waiting[session_id] = future
        return future

    async def _dispatch(self) -> None:
        assert self.channel is not None
        try:
            while True:
                for received in await self.channel.receive():
                    future = self._waiting.get(received.message.session_id)
                    if future is not None and not future.done():
                        future.set_result(received)
                    # Anything else belongs to another run's session (or repeats an
                    # answer already taken): not ours to judge.
        except Exception as exc:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(exc)
            raise


async def align(
    job: AlignJob, kafka: KafkaSettings, progress: Progress | None = None
) -> tuple[list[PartnerOutcome], dict[str, str]]:
    """Run every partner's session; returns the outcomes and the failures by partner."""
    report = progress or (lambda partner, stage, fraction: None)
    hashed = dict(zip(job.ids, await asyncio.to_thread(psi.hash_ids, job.ids), strict=True))
    unknown = sorted(set(job.partners) - job.registry.partners())
    if unknown:
        raise AlignmentError(f"no registered signing key for partner(s) {', '.join(unknown)}")
    async with BankEndpoint(kafka, job.signing_key, job.registry) as endpoint:
        results = await asyncio.gather(
            *(_session(endpoint, job, partner, hashed, report) for partner in job.partners),
            return_exceptions=True,
        )
    outcomes: list[PartnerOutcome] = []
    failures: dict[str, str] = {}
    for partner, result in zip(job.partners, results, strict=True):
        if isinstance(result, PartnerOutcome):
            outcomes.append(result)
        elif isinstance(result, AlignmentError | psi.PsiProtocolError | OSError):
            failures[partner] = str(result) or type(result).__name__
        else:
            raise result
    return outcomes, failures


async def _session(
    endpoint: BankEndpoint,
    job: AlignJob,
    partner: str,
    hashed: dict[str, bytes],
    report: Progress,
) -> PartnerOutcome:
    assert endpoint.channel is not None
    channel = endpoint.channel
    started = time.monotonic()
    session_id = f"align-{uuid.uuid4().hex}"
    topic = align_topic(partner)
    secret, created = psi.load_or_create_secret(job.secret_dir / f"{partner}.scalar")

    report(partner, "blinding the bank's ids", 0.05)
    session = await asyncio.to_thread(psi.BankSession, partner, secret, job.ids, hashed)
    offer = PsiOffer(
        session_id=session_id,
        partner=partner,
        expires_at=datetime.now(UTC) + timedelta(seconds=job.timeout_s),
        points=psi.encode_points(session.offer),
    )
    answer_future = endpoint.expect(session_id)
    sent = await channel.send(topic, session_id, offer)
    report(partner, f"waiting for {partner} ({len(session.offer)} offered)", 0.3)

    try:
        received = await asyncio.wait_for(answer_future, job.timeout_s)
    except TimeoutError as exc:
        raise AlignmentError(
            f"no answer within {job.timeout_s:.0f}s "
            f"(is `fedscreen partner align` running on the partner's side?)"
        ) from exc
    answer = received.message
    if isinstance(answer, PsiError):
        raise AlignmentError(f"the partner aborted the session: {answer.error}")
    if not isinstance(answer, PsiAnswer) or answer.partner != partner:
        raise AlignmentError(f"unexpected {answer.kind} from {answer.partner}")

    report(partner, f"matching {len(answer.own)} of {partner}'s points", 0.6)
    try:
        reblinded = await asyncio.to_thread(psi.decode_points, answer.reblinded, "reblinded")
        own = await asyncio.to_thread(psi.decode_points, answer.own, "own")
        doubly, intersection = await asyncio.to_thread(session.finish, reblinded, own)
    except psi.PsiProtocolError as exc:
        await channel.dlq.send(received.record, "invalid-point", exc)
        await channel.send(
            topic, session_id, PsiError(session_id=session_id, partner=partner, error=str(exc))
        )
        raise AlignmentError(str(exc)) from exc

    result = PsiResult(
        session_id=session_id, partner=partner, doubly_blinded=psi.encode_points(doubly)
    )
    sent += await channel.send(topic, session_id, result)
    path = job.out_dir / f"{partner}.csv"
    await asyncio.to_thread(write_token_map, path, intersection.tokens)
    report(partner, f"{len(intersection.tokens)} shared customers -> {path}", 1.0)
    return PartnerOutcome(
        partner=partner,
        session_id=session_id,
        shared=len(intersection.tokens),
        bank_size=intersection.own_size,
        partner_size=intersection.other_size,
        path=path,
        seconds=time.monotonic() - started,
        bytes_sent=sent,
        bytes_received=received.size,
        new_secret=created,
    )

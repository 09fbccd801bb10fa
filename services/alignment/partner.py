"""The partner's side of alignment: answer one PSI session, then exit.

``fedscreen partner align`` runs this in the partner's domain. It reads the bank's
offers on ``fed.align.<partner>.v1`` in a consumer group of its own and commits once a
session is settled, so a re-run never answers the same offer twice; offers whose
``expires_at`` passed (the bank stopped waiting) are skipped.

The partner applies its long-lived PSI secret only to an offer the bank signed (its key
pinned out of band), of a session it has not answered before, that expires within
:data:`MAX_OFFER_LIFETIME` and asks for at most ``max_points`` points: anyone else who
can write the topic would otherwise get the secret applied to ids of its choosing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.alignment import TO_PARTNER, PsiAnswer, PsiError, PsiOffer, PsiResult, ToPartner
from services.alignment.transport import AlignmentError, Channel, Received
from services.kernel.config import KafkaSettings
from services.kernel.crypto import psi
from services.kernel.crypto.signing import BankKey
from services.kernel.kafka.clients import IDLE_FETCH_WAIT_MS, make_consumer, make_producer
from services.kernel.kafka.topics import ALIGN_TO_BANK, align_topic

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
"""(stage, fraction done) -> None."""

MAX_OFFER_LIFETIME = timedelta(days=1)
DEFAULT_MAX_POINTS = 10_000_000


@dataclass(frozen=True)
class OfferPolicy:
    """What a partner accepts to apply its secret to."""

    bank_key: BankKey
    signing_key: Ed25519PrivateKey
    max_points: int = DEFAULT_MAX_POINTS
    answered_log: Path | None = None
    """Session ids answered before, one per line (kept next to the secret): a replayed
    offer of one of them is refused."""

    def answered(self) -> set[str]:
        if self.answered_log is None or not self.answered_log.is_file():
            return set()
        return set(self.answered_log.read_text().split())

    def remember(self, session_id: str) -> None:
        if self.answered_log is not None:
            with self.answered_log.open("a") as handle:
                handle.write(session_id + "\n")

    def refusal(self, offer: PsiOffer, now: datetime) -> str | None:
        """Why this (signed) offer is not answered, or None."""
        if len(offer.points) > self.max_points:
            return f"{len(offer.points)} points, more than the {self.max_points} accepted"
        if offer.expires_at > now + MAX_OFFER_LIFETIME:
            return f"expires at {offer.expires_at.isoformat()}, more than a day ahead"
        if offer.session_id in self.answered():
            return f"session {offer.session_id} was answered before"
        return None


@dataclass(frozen=True)
class PartnerAlignment:
    session_id: str
    intersection: psi.Intersection


def group_id(partner: str) -> str:
    return f"fedscreen-partner-{partner}-align"


async def answer_one(
    kafka: KafkaSettings,
    partner: str,
    ids: Sequence[str],
    secret: bytes,
    policy: OfferPolicy,
    *,
    timeout_s: float,
    progress: Progress | None = None,
) -> PartnerAlignment:
    """Wait up to ``timeout_s`` for an offer, answer it, and wait for its result until
    the offer expires. Raises AlignmentError (or TimeoutError) otherwise."""
    report = progress or (lambda stage, fraction: None)
    report("blinding the partner's ids", 0.05)
    session = await asyncio.to_thread(psi.PartnerSession, partner, secret, ids)
    producer = make_producer(kafka)
    # Manually assigned, yet with a group id: offsets are committed to the group (so a
    # re-run resumes after the last settled session) without waiting for a group join.
    consumer = make_consumer(
        kafka, group_id=group_id(partner), fetch_max_wait_ms=IDLE_FETCH_WAIT_MS
    )
    try:
        await producer.start()
        await consumer.start()
        topic = align_topic(partner)
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise AlignmentError(f"topic {topic} does not exist (create it: fedscreen topics)")
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        channel: Channel[ToPartner] = Channel(
            kafka,
            producer,
            consumer,
            TO_PARTNER,
            f"align-partner-{partner}",
            signing_key=policy.signing_key,
            verify=policy.bank_key.verify,
        )
        report("waiting for the bank's offer", 0.1)
        received = await asyncio.wait_for(_next_offer(channel, partner, policy), timeout_s)
        offer = received.message
        # Commit exactly past the offer, and only once its session is settled: other
        # offers read meanwhile stay for the next run, and a partner killed mid-session
        # answers the same offer again on restart, identically (sorted sets, kept secrets).
        settled = {TopicPartition(topic, received.record.partition): received.record.offset + 1}
        try:
            result = await _answer(channel, session, offer, report)
        except psi.PsiProtocolError as exc:
            await channel.send(
                ALIGN_TO_BANK,
                offer.session_id,
                PsiError(session_id=offer.session_id, partner=partner, error=str(exc)),
            )
            await consumer.commit(settled)
            raise AlignmentError(f"session {offer.session_id}: {exc}") from exc
        except AlignmentError:
            await consumer.commit(settled)
            raise
        await consumer.commit(settled)
        policy.remember(offer.session_id)
        return PartnerAlignment(offer.session_id, result)
    finally:
        await consumer.stop()
        await producer.stop()


async def _next_offer(
    channel: Channel[ToPartner], partner: str, policy: OfferPolicy
) -> Received[PsiOffer]:
    while True:
        for received in await channel.receive(timeout_ms=500):
            message = received.message
            if not isinstance(message, PsiOffer):
                continue  # results and errors of sessions settled before this run
            now = datetime.now(UTC)
            if message.partner != partner:
                await channel.dlq.send(received.record, "wrong-partner", message.partner)
            elif message.expires_at <= now:
                log.info("skipping expired offer %s", message.session_id)
            elif (why := policy.refusal(message, now)) is not None:
                log.warning("refusing offer %s: %s", message.session_id, why)
                await channel.dlq.send(received.record, "offer-refused", why)
            else:
                return Received(message, received.record, received.size)


async def _answer(
    channel: Channel[ToPartner],
    session: psi.PartnerSession,
    offer: PsiOffer,
    report: Progress,
) -> psi.Intersection:
    report(f"re-blinding {len(offer.points)} offered points", 0.3)
    offered = await asyncio.to_thread(psi.decode_points, offer.points, "offer")
    reblinded = await asyncio.to_thread(session.answer, offered)
    answer = PsiAnswer(
        session_id=offer.session_id,
        partner=session.partner,
        reblinded=psi.encode_points(reblinded),
        own=psi.encode_points(session.own),
    )
    await channel.send(ALIGN_TO_BANK, offer.session_id, answer)
    report("waiting for the bank's result", 0.6)
    remaining = (offer.expires_at - datetime.now(UTC)).total_seconds()
    try:
        result = await asyncio.wait_for(_result(channel, offer.session_id), max(remaining, 1.0))
    except TimeoutError as exc:
        raise AlignmentError(
            f"session {offer.session_id}: no result before the offer expired"
        ) from exc
    if isinstance(result, PsiError):
        raise AlignmentError(f"the bank aborted session {offer.session_id}: {result.error}")
    doubly = await asyncio.to_thread(psi.decode_points, result.doubly_blinded, "result")
    intersection = await asyncio.to_thread(session.finish, doubly)
    report(f"{len(intersection.tokens)} shared customers", 1.0)
    return intersection


async def _result(channel: Channel[ToPartner], session_id: str) -> PsiResult | PsiError:
    while True:
        for received in await channel.receive():
            message = received.message
            if message.session_id == session_id and isinstance(message, PsiResult | PsiError):
                return message

"""A Kafka principal with write access to every topic (an operator, a leaked credential)
tries to speak for the bank to a partner: a fragment request for customers of its
choosing, a model bundle under a Paillier key of its own (the partner would then
encrypt every fragment for it), a training session under its own key, a PSI offer of
ids of its choosing, and copies of the bank's own messages written again.

It signs with a key of its own, since it does not hold the bank's. :func:`attempt`
writes each forgery to the partner's topics and then reads what the partner did: a
forgery is *accepted* if the partner acted on it (a fragment for the forged batch, a
readiness announcement for the forged model, a training reply for the forged session),
and *dead-lettered* if it landed in the topic's DLQ. The tests run the same forgeries
with the bank's own key first (the weakened configuration: a leaked bank key), where
the partner accepts them, to show they are otherwise well formed.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import (
    DlqEnvelope,
    EncryptedFragment,
    FragmentRequest,
    ModelReady,
    PackingSpec,
    PartnerBundle,
    TrainStart,
)
from schemas.common import SignedMessage
from schemas.training import TO_BANK
from services.audit.transcript import read_messages, read_topic
from services.kernel.config import KafkaSettings
from services.kernel.crypto.blind import blind_training, score_layout
from services.kernel.crypto.masking import token_list_digest
from services.kernel.crypto.paillier import generate_keypair
from services.kernel.crypto.signing import signed
from services.kernel.kafka.chunks import send_large
from services.kernel.kafka.clients import make_producer
from services.kernel.kafka.topics import (
    FRAGMENTS,
    MODEL_READY,
    TRAINING_TO_BANK,
    dlq_topic,
    requests_topic,
    rollout_topic,
    training_topic,
)
from services.prescreen.joiner import KIND_HEADER

REFUSALS = {"bad-signature", "replayed-request", "conflicting-request", "replayed"}


@dataclass(frozen=True)
class Forgery:
    name: str
    topic: str
    key: str
    message: SignedMessage
    marker: str
    """What the partner's reaction would carry: a batch id, a model version, a session id."""


@dataclass(frozen=True)
class Outcome:
    name: str
    accepted: bool
    dead_lettered: bool


def forgeries(
    partner: str,
    tokens: list[str],
    signer: Ed25519PrivateKey,
    packing: PackingSpec,
    binning_id: str,
    participants: list[str],
    *,
    replay: FragmentRequest | None = None,
) -> list[Forgery]:
    """The forged messages, signed by ``signer``. ``tokens`` are real customers' tokens
    (a principal that can read the request topic has seen them); ``replay`` is one of
    the bank's own requests, to be written again with other tokens (re-signed by the
    signer, since changing it breaks the bank's signature)."""
    tag = secrets.token_hex(4)
    now = datetime.now(UTC)
    out = []
    digests = {p: token_list_digest(tokens) for p in participants}
    request = FragmentRequest(
        batch_id=f"forged-{tag}",
        partner=partner,
        model_version=binning_id,
        created_at=now,
        deadline_at=now + timedelta(seconds=30),
        tokens=tokens,
        participants=participants,
        token_digests=digests,
    )
    out.append(
        Forgery(
            "forged request",
            requests_topic(partner),
            request.batch_id,
            signed(request, signer),
            request.batch_id,
        )
    )
    if replay is not None:
        altered = replay.model_copy(
            update={
                "tokens": tokens[: len(replay.tokens)],
                "deadline_at": now + timedelta(seconds=30),
                "token_digests": {
                    **replay.token_digests,
                    partner: token_list_digest(tokens[: len(replay.tokens)]),
                },
            }
        )
        out.append(
            Forgery(
                "replayed request, other tokens",
                requests_topic(partner),
                replay.batch_id,
                signed(altered, signer),
                replay.batch_id,
            )
        )
        # The bank's own message, written again as it was: its signature is genuine.
        out.append(
            Forgery(
                "replayed request, identical",
                requests_topic(partner),
                replay.batch_id,
                replay,
                replay.batch_id,
            )
        )
    key = generate_keypair(2048)
    bundle = PartnerBundle(
        model_version=f"forged-model-{tag}",
        created_at=now,
        partner=partner,
        binning_id=binning_id,
        key_id=key.key_id,
        public_key_n=key.public.to_b64(),
        packing=packing,
    )
    out.append(
        Forgery(
            "bundle under the forger's Paillier key",
            rollout_topic(partner),
            partner,
            signed(bundle, signer),
            bundle.model_version,
        )
    )
    blind = blind_training(3)
    start = TrainStart(
        session_id=f"train-forged-{tag}",
        partner=partner,
        participants=participants,
        key_id=key.key_id,
        public_key_n=key.public.to_b64(),
        blind=blind,
        layout=score_layout(key.public.bits, blind, 64 * len(participants)),
        max_bins=16,
        tokens=tokens,
    )
    out.append(
        Forgery(
            "training session under the forger's key",
            training_topic(partner),
            start.session_id,
            signed(start, signer),
            start.session_id,
        )
    )
    return out


async def attempt(
    kafka: KafkaSettings, partner: str, attempts: list[Forgery], settle_s: float = 4.0
) -> list[Outcome]:
    """Write the forgeries, give the partner ``settle_s`` to act, and read what it did."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        for forgery in attempts:
            await send_large(
                producer,
                forgery.topic,
                forgery.key.encode(),
                forgery.message.model_dump_json().encode(),
                limit=kafka.max_message_bytes - 4096,
            )
        await producer.flush()
    finally:
        await producer.stop()
    await asyncio.sleep(settle_s)
    acted: set[str] = set()
    for record in await read_topic(kafka, FRAGMENTS):
        if any(key == KIND_HEADER for key, _ in record.headers):
            continue  # prescreen's deadline ticks
        fragment = EncryptedFragment.model_validate_json(record.value)
        if fragment.partner == partner:
            acted.add(fragment.batch_id)
    for record in await read_topic(kafka, MODEL_READY):
        ready = ModelReady.model_validate_json(record.value)
        if ready.party == partner:
            acted.update(ready.model_versions)
    for value in await read_messages(kafka, TRAINING_TO_BANK):
        reply = TO_BANK.validate_json(value)
        if reply.partner == partner:
            acted.add(reply.session_id)
    dead: set[bytes] = set()
    for topic in {f.topic for f in attempts}:
        for record in await read_topic(kafka, dlq_topic(topic)):
            letter = DlqEnvelope.model_validate_json(record.value)
            if letter.reason in REFUSALS:
                dead.add(record.key)
    return [
        Outcome(f.name, f.marker in acted and not _earlier(f), f.key.encode() in dead)
        for f in attempts
    ]


def _earlier(forgery: Forgery) -> bool:
    """A replayed request names a batch the partner answered before the replay: its
    answer then proves nothing about the replay, so acceptance is judged by the DLQ."""
    return forgery.name.startswith("replayed")

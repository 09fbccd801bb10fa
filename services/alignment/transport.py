"""Alignment messages over Kafka: chunked sends, reassembled and validated receives.

Both sides use the same pattern: whole messages go out signed with the sender's
Ed25519 key through ``send_large`` keyed by session id (so a session's chunks and
messages stay ordered on one partition), and incoming records are reassembled, parsed
against the direction's message union, checked against the key of the party they
must come from, and dead-lettered when they cannot be parsed or do not verify.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import TypeAdapter, ValidationError

from schemas.common import SignedMessage
from services.kernel.config import KafkaSettings
from services.kernel.crypto.signing import SignatureError, signed
from services.kernel.kafka.chunks import ChunkError, Reassembler, send_large
from services.kernel.kafka.dlq import DeadLetters, RecordLike

log = logging.getLogger(__name__)

M = TypeVar("M", bound=SignedMessage)


class AlignmentError(RuntimeError):
    """A session could not complete; the message names the party and the reason."""


@dataclass(frozen=True)
class Received(Generic[M]):
    message: M
    record: RecordLike
    """The last record of the message (the only one, unless it was chunked)."""
    size: int


class Channel(Generic[M]):
    def __init__(
        self,
        kafka: KafkaSettings,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        adapter: TypeAdapter[M],
        service: str,
        *,
        signing_key: Ed25519PrivateKey,
        verify: Callable[[M], None],
    ) -> None:
        """``verify`` raises SignatureError unless the message is from whom it must be."""
        self.signing_key = signing_key
        self.verify = verify
        self.kafka = kafka
        self.producer = producer
        self.consumer = consumer
        self.adapter = adapter
        self.dlq = DeadLetters(producer, service)
        self._reassembler = Reassembler()

    async def send(self, topic: str, session_id: str, message: SignedMessage) -> int:
        """Sign, send and flush; returns the message's size in bytes."""
        payload = signed(message, self.signing_key).model_dump_json().encode()
        await send_large(
            self.producer,
            topic,
            session_id.encode(),
            payload,
            limit=self.kafka.max_message_bytes - 4096,
        )
        await self.producer.flush()
        return len(payload)

    async def receive(self, timeout_ms: int = 200) -> list[Received[M]]:
        """Whole, schema-valid messages from one poll; anything else is dead-lettered."""
        received: list[Received[M]] = []
        batches = await self.consumer.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            for record in records:
                try:
                    whole = self._reassembler.feed(record.partition, record.value, record.headers)
                    if whole is None:
                        continue
                    message = self.adapter.validate_json(whole)
                except (ChunkError, ValidationError) as exc:
                    await self.dlq.send(record, "invalid-schema", exc)
                    continue
                try:
                    self.verify(message)
                except SignatureError as exc:
                    await self.dlq.send(record, "bad-signature", exc)
                    continue
                received.append(Received(message, record, len(whole)))
        return received

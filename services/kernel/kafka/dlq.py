"""Dead-letter queues: a consumer that cannot process a message sends it to
``<topic>.dlq`` with the reason and the original bytes, then keeps going."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from aiokafka import AIOKafkaProducer

from schemas import DlqEnvelope
from services.kernel.kafka.topics import dlq_topic
from services.kernel.metrics import DLQ_MESSAGES

log = logging.getLogger(__name__)


class RecordLike(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def oversized(value: bytes | None, limit: int) -> str | None:
    """Why ``value`` is too large to process, or None. Producers chunk anything larger
    than the limit (services/kernel/kafka/chunks.py), so one record over it is suspect."""
    if value is not None and len(value) > limit:
        return f"{len(value)} bytes, over the {limit}-byte message limit"
    return None


class DeadLetters:
    def __init__(
        self, producer: AIOKafkaProducer, consumer: str, max_bytes: int = 1_000_000
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.max_bytes = max_bytes

    def envelope(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        reason: str,
        error: str,
        attempts: int = 1,
    ) -> DlqEnvelope:
        return DlqEnvelope(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key_b64=_b64(key),
            value_b64=_b64(value),
            headers={k: base64.b64encode(v).decode("ascii") for k, v in headers or ()},
            reason=reason,
            error=error[:2000],
            consumer=self.consumer,
            failed_at=datetime.now(UTC),
            attempts=attempts,
        )

    async def send(
        self, record: RecordLike, reason: str, error: str | Exception, *, attempts: int = 1
    ) -> None:
        await self.send_raw(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=record.headers,
            reason=reason,
            error=str(error),
            attempts=attempts,
        )

    async def send_raw(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        reason: str,
        error: str,
        attempts: int = 1,
        keep_value: bool = True,
    ) -> None:
        """``keep_value=False`` keeps only the value's size and digest: for a partner's
        genuine ciphertext that must not outlive the batch it belonged to."""
        envelope = self.envelope(
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            headers=headers,
            reason=reason,
            error=error,
            attempts=attempts,
        )
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            topic,
            partition,
            offset,
            reason,
            error[:200],
            extra={"topic": topic, "partition": partition, "offset": offset, "reason": reason},
        )
        DLQ_MESSAGES.labels(topic=topic, reason=reason).inc()
        body = envelope.model_dump_json().encode()
        if value is not None and (not keep_value or len(body) > self.max_bytes):
            # Base64 makes it a third larger than what the broker accepted (or it must not
            # be kept): a digest and where the original is are enough to find it again.
            envelope = envelope.model_copy(
                update={
                    "value_b64": None,
                    "value_size": len(value),
                    "value_sha256": hashlib.sha256(value).hexdigest(),
                }
            )
            body = envelope.model_dump_json().encode()
        # Wait for the broker's acknowledgement: the consumer commits past the original
        # message right after this, so a dead letter that silently failed would be lost.
        await self.producer.send_and_wait(dlq_topic(topic), value=body, key=key)

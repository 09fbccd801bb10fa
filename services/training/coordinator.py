"""The bank's side of the training conversation: send to each partner's training
topic, collect every partner's reply for a step, fail loudly on errors or timeouts.

Every message the bank sends is signed with its key; every reply must verify under the
key registered for the partner it names (a Kafka principal that can write the reply
topic cannot speak for a partner). Replies are matched by kind and round; a reply
that does not match the current collection waits in the inbox for the one it belongs
to."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from schemas import TrainError, TrainReady, TrainScores
from schemas.training import TO_BANK, ToBank, ToPartner, TrainDone, TrainTruncate
from services.kernel.config import KafkaSettings
from services.kernel.crypto.signing import PartnerKeyRegistry, SignatureError, signed
from services.kernel.kafka.chunks import ChunkError, Reassembler, send_large
from services.kernel.kafka.clients import IDLE_FETCH_WAIT_MS, make_consumer, make_producer
from services.kernel.kafka.topics import TRAINING_TO_BANK, training_topic

log = logging.getLogger(__name__)

ReplyT = TypeVar("ReplyT", TrainReady, TrainScores, TrainTruncate, TrainDone)


async def _stop_quietly(client: AIOKafkaConsumer | AIOKafkaProducer, what: str) -> None:
    """Close a client after the conversation is over. On an overloaded broker,
    aiokafka's consumer can let the cancellation of its own in-flight fetch escape
    from ``stop()`` (seen once: a finished training run lost at exit); that must not
    discard a finished training. A cancellation of this task itself still propagates."""
    try:
        await client.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("closing the training %s was interrupted by a cancelled fetch", what)
    except KafkaError as exc:
        log.warning("closing the training %s failed: %s", what, exc)


class TrainingError(RuntimeError):
    pass


class Channel(Protocol):
    """The bank's side of a training conversation, as the trainer uses it."""

    session_id: str

    async def send(self, partner: str, message: ToPartner) -> None: ...

    async def send_all(self, messages: Mapping[str, ToPartner]) -> None: ...

    async def collect(self, kind: type[ReplyT], round_: int | None = None) -> dict[str, ReplyT]: ...


class Coordinator:
    def __init__(
        self,
        kafka: KafkaSettings,
        session_id: str,
        partners: list[str],
        timeout_s: float,
        *,
        signing_key: Ed25519PrivateKey,
        registry: PartnerKeyRegistry,
    ) -> None:
        unknown = sorted(set(partners) - registry.partners())
        if unknown:
            raise TrainingError(f"no registered signing key for partner(s) {', '.join(unknown)}")
        self.signing_key = signing_key
        self.registry = registry
        self.forged = 0
        self.kafka = kafka
        self.session_id = session_id
        self.partners = partners
        self.timeout_s = timeout_s
        self.bytes_sent: dict[str, int] = dict.fromkeys(partners, 0)
        self.bytes_received: dict[str, int] = dict.fromkeys(partners, 0)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reassembler = Reassembler()
        self._inbox: list[ToBank] = []

    async def __aenter__(self) -> Coordinator:
        self._producer = make_producer(self.kafka)
        await self._producer.start()
        # Replies are read with no consumer group from the current end of the topic,
        # so nothing sent after this point can be missed.
        consumer = make_consumer(self.kafka, group_id=None, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
        await consumer.start()
        partitions = consumer.partitions_for_topic(TRAINING_TO_BANK) or set()
        if not partitions:
            await consumer.stop()
            raise TrainingError(f"topic {TRAINING_TO_BANK} does not exist")
        tps = [TopicPartition(TRAINING_TO_BANK, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        self._consumer = consumer
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._consumer is not None:
                await _stop_quietly(self._consumer, "reply consumer")
        finally:
            if self._producer is not None:
                await _stop_quietly(self._producer, "producer")

    async def send(self, partner: str, message: ToPartner) -> None:
        assert self._producer is not None
        payload = signed(message, self.signing_key).model_dump_json().encode()
        self.bytes_sent[partner] += len(payload)
        await send_large(
            self._producer,
            training_topic(partner),
            message.session_id.encode(),
            payload,
            limit=self.kafka.max_message_bytes - 4096,
        )
        await self._producer.flush()

    async def send_all(self, messages: Mapping[str, ToPartner]) -> None:
        for partner, message in messages.items():
            await self.send(partner, message)

    async def collect(self, kind: type[ReplyT], round_: int | None = None) -> dict[str, ReplyT]:
        """One reply of ``kind`` from every partner (for ``round_`` where it has one)."""
        replies: dict[str, ReplyT] = {}
        try:
            async with asyncio.timeout(self.timeout_s):
                while len(replies) < len(self.partners):
                    pending: list[ToBank] = []
                    for message in self._take_inbox():
                        if isinstance(message, TrainError):
                            raise TrainingError(f"partner {message.partner}: {message.error}")
                        if isinstance(message, kind) and (
                            round_ is None or getattr(message, "round", None) == round_
                        ):
                            replies[message.partner] = message
                        else:
                            pending.append(message)  # a later step's: keep it for then
                    self._inbox = pending + self._inbox
                    if len(replies) < len(self.partners):
                        await self._poll()
        except TimeoutError as exc:
            waiting = sorted(set(self.partners) - set(replies))
            raise TrainingError(
                f"no {kind.__name__} from {', '.join(waiting)} within {self.timeout_s:.0f}s"
            ) from exc
        return replies

    def _take_inbox(self) -> list[ToBank]:
        inbox, self._inbox = self._inbox, []
        return inbox

    async def _poll(self) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                try:
                    whole = self._reassembler.feed(record.partition, record.value, record.headers)
                    if whole is None:
                        continue
                    message = TO_BANK.validate_json(whole)
                except (ChunkError, ValidationError) as exc:
                    log.error("unreadable training reply: %s", exc)
                    continue
                if message.session_id != self.session_id or message.partner not in self.partners:
                    continue
                try:
                    self.registry.verify(message)
                except SignatureError as exc:
                    # Someone else writing the reply topic: never let it speak for a
                    # partner (not even to abort the session with a forged TrainError).
                    self.forged += 1
                    log.error("ignoring a training reply: %s", exc)
                    continue
                self.bytes_received[message.partner] += len(whole)
                self._inbox.append(message)

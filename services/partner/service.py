"""The partner process: fragment serving, the training worker, model rollouts and the
agreement keys of secure aggregation."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from schemas import FragmentRequest, PartnerBundle, TrainError
from schemas.training import TO_PARTNER
from services.kernel.config import KafkaSettings
from services.kernel.crypto.signing import (
    BankKey,
    PartnerKeyRegistry,
    SignatureError,
    load_signing_key,
    signed,
)
from services.kernel.kafka.chunks import ChunkError, Reassembler, send_large
from services.kernel.kafka.clients import (
    IDLE_FETCH_WAIT_MS,
    make_consumer,
    make_producer,
    partitions_of,
)
from services.kernel.kafka.dlq import DeadLetters, oversized
from services.kernel.kafka.lag import aiokafka_samples, watch_lag
from services.kernel.kafka.topics import (
    FRAGMENTS,
    TRAINING_TO_BANK,
    requests_topic,
    rollout_topic,
    training_topic,
)
from services.kernel.lifecycle import run_until_stopped
from services.kernel.metrics import (
    MESSAGES_IN,
    MESSAGES_OUT,
    PARTNER_FACTORS_READY,
    PARTNER_REFUSALS,
    PARTNER_SIBLING_CLAIMS,
    start_http,
)
from services.kernel.model.rollout import (
    BundleWatcher,
    ReadinessAnnouncer,
    instance_id,
    withdraw,
)
from services.kernel.readiness import report_readiness
from services.partner.agreement import PeerDirectory, load_agreement_key, publish_agreement_key
from services.partner.serving import FragmentServer, ModelCache, NotClaimed, RequestError
from services.partner.settings import PartnerSettings
from services.partner.store import StoreUnavailableError, open_store
from services.partner.training import ReplayedMessageError, TrainingProtocolError, TrainingWorker

log = logging.getLogger(__name__)


class PartnerService:
    def __init__(self, settings: PartnerSettings, kafka: KafkaSettings) -> None:
        self.settings = settings
        self.kafka = kafka
        self.name = settings.name
        self.store = open_store(settings.store())
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        """This process's name in the request ledger's claims: unique per start, so a
        restarted replica never takes a claim of its previous life for its own."""
        self.cache = ModelCache(
            self.store,
            partner=self.name,
            allow_plaintext=settings.allow_plaintext,
            factor_pool=settings.factor_pool,
        )
        PARTNER_FACTORS_READY.labels(partner=self.name).set_function(self.cache.factors_ready)
        self.signing_key = load_signing_key(settings.signing_key_file)
        self.bank_key = BankKey.configured(settings.bank_key, settings.bank_key_file)
        self.agreement_key = load_agreement_key(settings.agreement_key_file)
        self.peers = PeerDirectory(
            self.name, self.agreement_key, PartnerKeyRegistry.parse(settings.peer_signing_keys)
        )
        if not self.peers.registered:
            log.warning(
                "PARTNER_PEER_SIGNING_KEYS names no other partner: %s can answer only "
                "batches it is alone in",
                self.name,
            )
        self.server = FragmentServer(
            self.name,
            self.store,
            self.cache,
            self.signing_key,
            self.peers,
            self.bank_key,
            min_participants=settings.min_participants,
            ledger_s=settings.request_ledger_days * 86400.0,
            replica=self.replica,
        )
        self.trainer = TrainingWorker(
            self.name,
            self.store,
            settings.max_bins,
            self.peers,
            min_participants=settings.min_participants,
        )
        self.watcher = BundleWatcher(
            kafka,
            rollout_topic(self.name),
            PartnerBundle,
            on_bundle=self.cache.offer,
            on_refused=self._refused_bundle,
            check=self._check_bundle,
        )
        self._dlq: DeadLetters | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.service_name = f"partner-{self.name}"
        self.requests: AIOKafkaConsumer | None = None
        self.reading = False
        """Every partition of the requests topic is assigned and positioned."""
        self._answering: asyncio.Future[None] | None = None
        self.refused: str | None = None
        """Why the newest bundle was refused (not signed by the bank, ...)."""

    def _check_bundle(self, bundle: PartnerBundle) -> None:
        """Only a bundle the bank signed, a republished version included: its Paillier
        key is the one this partner will encrypt under, so anyone else's would read every
        fragment (SignatureError is a ValueError: the watcher dead-letters the bundle)."""
        try:
            self.bank_key.verify(bundle)
        except SignatureError:
            PARTNER_REFUSALS.labels(reason="bad-signature").inc()
            raise

    def _refused_bundle(self, partition: int, value: bytes, why: str) -> None:
        """Dead-letter a bundle this partner will not load (the watcher's callback runs
        on the event loop, inside the topic reader)."""
        self.refused = why
        if self._dlq is None:
            return
        reason = "bad-signature" if "not signed by the bank" in why else "unusable-bundle"
        task = asyncio.get_running_loop().create_task(
            self._dlq.send_raw(
                topic=rollout_topic(self.name),
                partition=partition,
                offset=-1,
                key=self.name.encode(),
                value=value,
                reason=reason,
                error=why,
            )
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def ready(self) -> bool:
        """A model is loaded and this replica reads every request partition."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why :meth:`ready` is false, for /readyz and the log; None when ready."""
        if not self.cache.models:
            topic = rollout_topic(self.name)
            if building := self.cache.building():
                return f"loading model {', '.join(building)}"
            if self.cache.failed:
                version, why = next(reversed(self.cache.failed.items()))
                return f"cannot load model {version}: {why}"
            if self.refused is not None:
                return f"no usable model bundle on {topic}: {self.refused}"
            return f"waiting for a model bundle on {topic}"
        if not self.reading:
            return f"not reading {requests_topic(self.name)} yet"
        return None

    async def run(self) -> None:
        # Before any Kafka call: the store is open, so a start that stalls later is Kafka's.
        log.info(
            "partner %s starting as replica %s of store %s",
            self.name,
            self.replica,
            self.store.location,
        )
        producer = make_producer(self.kafka)
        await producer.start()
        dlq = DeadLetters(producer, self.service_name, self.kafka.max_message_bytes)
        self._dlq = dlq
        # Published on every start (newest wins), before any request can need it.
        await publish_agreement_key(producer, self.name, self.agreement_key, self.signing_key)

        # This replica's own announcement, signed like its fragments: intake rolls a
        # version out only once every live replica of every party serves it.
        announcer = ReadinessAnnouncer(
            producer, self.name, instance_id(self.settings.instance_id), self.signing_key
        )

        async def ready(_: str) -> None:
            await announcer.announce(self.cache.models)

        self.cache.on_ready = ready
        # No consumer group for requests: every replica reads every partition, so a
        # replica that stops or starts triggers no rebalance (the broker holds a join for
        # seconds, and every batch waiting meanwhile would miss its deadline). The
        # request ledger's claims decide which replica answers (FragmentServer.check_ledger).
        requests = make_consumer(self.kafka, group_id=None)
        training = make_consumer(
            self.kafka,
            training_topic(self.name),
            group_id=f"fedscreen-partner-{self.name}-training",
            # A new partner does not replay sessions that ended before it existed (and
            # would overwrite their binnings); a restarted one resumes where it was.
            auto_offset_reset="latest",
            fetch_max_wait_ms=IDLE_FETCH_WAIT_MS,
        )
        await requests.start()
        await training.start()
        self.requests = requests
        http = await start_http(
            self.settings.metrics_port, self.not_ready_reason, self.settings.metrics_host
        )
        # Before any task runs: positions are fixed before this replica can announce a
        # model ready, so no request written after the announcement is missed.
        await self._read_from_end(requests)
        log.info("partner %s serving %s", self.name, requests_topic(self.name))
        try:
            await run_until_stopped(
                report_readiness(self.service_name, self.not_ready_reason),
                self.watcher.run(),
                self.peers.follow(self.kafka),
                self.serve(requests, producer, dlq),
                self.train(training, producer, dlq),
                watch_lag(self.service_name, lambda: aiokafka_samples(requests)),
                announcer.refresh(),
            )
        finally:
            await withdraw(announcer)
            await requests.stop()
            await training.stop()
            await producer.stop()
            if http is not None:
                await http.cleanup()
            self.store.close()

    async def _read_from_end(self, consumer: AIOKafkaConsumer) -> None:
        """Assign every partition of the requests topic and fix the positions at its
        end: requests written before this replica was ready are its siblings' (a request
        is worth answering for a deadline's few seconds only)."""
        topic = requests_topic(self.name)
        try:
            numbers = await partitions_of(consumer, topic, timeout_s=120.0)
        except TimeoutError:
            raise RuntimeError(f"{topic} does not exist (fedscreen topics --partner ...)") from None
        partitions = [TopicPartition(topic, p) for p in numbers]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        self.reading = True

    async def serve(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, dlq: DeadLetters
    ) -> None:
        topic = requests_topic(self.name)
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=64)
                for records in batches.values():
                    for record in records:
                        MESSAGES_IN.labels(service=self.service_name, topic=topic).inc()
                        # Shielded: a stop must not cut a claimed request short.
                        self._answering = asyncio.ensure_future(self._answer(record, producer, dlq))
                        await asyncio.shield(self._answering)
                if batches:
                    await producer.flush()
        except asyncio.CancelledError:
            await self.drain(producer)
            raise

    async def drain(self, producer: AIOKafkaProducer) -> None:
        """On SIGTERM: claim nothing more (siblings read the same requests and claim what
        this replica leaves), finish the request in hand if it was claimed, and flush its
        fragment. A kill -9 between a claim and the send costs that batch this partner's
        answer: the bank decides it at its deadline without it."""
        self.server.claiming = False
        if self._answering is not None and not self._answering.done():
            log.info("stopping: finishing the request in hand")
            try:
                await self._answering
            except Exception:  # stopping anyway: say why that request went unanswered
                log.exception("the request in hand failed")
        await producer.flush()
        log.info("partner replica %s drained", self.replica)

    async def _answer(self, record: object, producer: AIOKafkaProducer, dlq: DeadLetters) -> None:
        value = getattr(record, "value", None)
        if (too_large := oversized(value, self.kafka.max_message_bytes)) is not None:
            await dlq.send(record, "oversized", too_large)  # type: ignore[arg-type]
            return
        try:
            request = FragmentRequest.model_validate_json(value or b"")
        except ValidationError as exc:
            await dlq.send(record, "invalid-schema", exc)  # type: ignore[arg-type]
            return
        margin = self.settings.deadline_margin_ms / 1000.0
        remaining = (request.deadline_at - datetime.now(UTC)).total_seconds() - margin
        if remaining <= 0:
            # The joiner decides this batch without us (or is about to); answering is
            # wasted work, and an answer arriving after the decision helps nobody.
            log.info(
                "skipping batch %s: deadline passed",
                request.batch_id,
                extra={"batch_id": request.batch_id},
            )
            return
        try:
            source = f"{getattr(record, 'partition', '')}:{getattr(record, 'offset', '')}"
            fragment = await self.server.answer(
                request, min(remaining, self.settings.bundle_wait_s), source
            )
        except NotClaimed as exc:
            if exc.reason == "sibling":
                PARTNER_SIBLING_CLAIMS.labels(partner=self.name).inc()
            log.debug("%s", exc, extra={"batch_id": request.batch_id})
            return
        except StoreUnavailableError as exc:
            # Not the request's fault: no DLQ record. Unclaimed, it is a sibling's (on
            # another connection); claimed, the bank decides it at its deadline.
            log.error("batch %s not answered: %s", request.batch_id, exc)
            return
        except RequestError as exc:
            PARTNER_REFUSALS.labels(reason=exc.reason).inc()
            await dlq.send(record, exc.reason, exc)  # type: ignore[arg-type]
            return
        if (request.deadline_at - datetime.now(UTC)).total_seconds() < margin:
            # Too close to the deadline to count: never send an answer the bank may
            # receive after it decided without it.
            log.info(
                "dropping fragment for batch %s: finished inside the deadline margin",
                request.batch_id,
                extra={"batch_id": request.batch_id},
            )
            return
        await producer.send(
            FRAGMENTS, key=request.batch_id.encode(), value=fragment.model_dump_json().encode()
        )
        MESSAGES_OUT.labels(service=self.service_name, topic=FRAGMENTS).inc()

    async def train(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, dlq: DeadLetters
    ) -> None:
        reassembler = Reassembler()
        limit = self.kafka.max_message_bytes - 4096
        # A new group starts at the end of the topic: fix that position now and say so,
        # so that a session the bank starts after this line is never missed.
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        for partition in consumer.assignment():
            await consumer.position(partition)
        log.info(
            "partner %s taking training sessions from %s", self.name, training_topic(self.name)
        )
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    try:
                        whole = reassembler.feed(record.partition, record.value, record.headers)
                        if whole is None:
                            continue
                        message = TO_PARTNER.validate_json(whole)
                    except (ChunkError, ValidationError) as exc:
                        await dlq.send(record, "invalid-schema", exc)
                        continue
                    try:
                        self.bank_key.verify(message)
                    except SignatureError as exc:
                        # Not the bank: no answer at all (an answer would be the forger's
                        # oracle), and nothing done with it.
                        PARTNER_REFUSALS.labels(reason="bad-signature").inc()
                        await dlq.send(record, "bad-signature", exc)
                        continue
                    try:
                        reply = await asyncio.to_thread(self.trainer.handle, message)
                    except ReplayedMessageError as exc:
                        # A copy of a message already acted on: answering it with an error
                        # would let whoever replays it abort the bank's session.
                        PARTNER_REFUSALS.labels(reason="replayed").inc()
                        await dlq.send(record, "replayed", exc)
                        continue
                    except (TrainingProtocolError, ValueError) as exc:
                        log.error("training message rejected: %s", exc)
                        reply = TrainError(
                            session_id=message.session_id, partner=self.name, error=str(exc)
                        )
                    if reply is not None:
                        await send_large(
                            producer,
                            TRAINING_TO_BANK,
                            reply.session_id.encode(),
                            signed(reply, self.signing_key).model_dump_json().encode(),
                            limit=limit,
                        )
                        await producer.flush()
            if batches:
                await consumer.commit()

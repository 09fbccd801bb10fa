"""Where faust-streaming 0.15 falls short of at-least-once, or of our latency, and how
prescreen works around it. Each patch is applied once per process, before the app
starts, and says which faust behaviour it replaces and why.

The kill -9 test (tests/integration/test_fault_tolerance.py) found every delivery
and commit problem patched here: each left pending records that nobody decided.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

_IN_FLIGHT = "_fedscreen_in_flight"


def apply(fetch_max_wait_ms: int) -> None:
    set_fetch_wait(fetch_max_wait_ms)
    commit_only_what_was_processed()
    flush_completely()
    deliver_records_read_again()
    fetch_again_what_suspended_flow_swallowed()


def _patched(owner: Any, name: str) -> bool:
    return bool(getattr(getattr(owner, name), "__fedscreen__", False))


def _mark(function: Any) -> Any:
    function.__fedscreen__ = True
    return function


def set_fetch_wait(wait_ms: int) -> None:
    """faust builds its worker consumer with fetch_max_wait_ms=1500 fixed. On the
    embedded broker that delays every batch by up to that long, so wrap the factory
    and set aiokafka's attribute before the consumer starts (it is read in
    AIOKafkaConsumer.start)."""
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    if _patched(thread, "_create_worker_consumer"):
        return
    original = thread._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    setattr(thread, "_create_worker_consumer", _mark(create))  # noqa: B010  (a method, patched)


def commit_only_what_was_processed() -> None:
    """Two faust behaviours commit offsets of records no agent processed:

    - a jump in offsets is taken for compaction or transaction markers, and the range
      is committed as if acknowledged (``Consumer._add_gap``). Our input topics are
      neither compacted nor transactional: a jump there means records were not read.
    - a record a stream skips because a rebalance began (flow control off, or an older
      consumer generation) is acknowledged, and its offset becomes committable.

    So gaps are ignored, and a skipped record is marked done without making its offset
    committable: after the rebalance it is read again from the committed offset."""
    from faust.transport import consumer as module

    consumer = module.Consumer
    if _patched(consumer, "ack"):
        return
    original_ack = consumer.ack

    async def ignore_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        return None

    def ack(self: Any, message: Any) -> bool:
        app = self.app
        if app.flow_control.is_active() and message.generation_id == app.consumer_generation_id:
            return bool(original_ack(self, message))
        with getattr(module, "ack_lock"):  # noqa: B009  (faust-internal, not exported)
            if not message.acked:
                message.acked = True
                self._unacked_messages.discard(message)
                getattr(module, "notify")(self._waiting_for_ack)  # noqa: B009
        return False

    setattr(consumer, "_add_gap", ignore_gap)  # noqa: B010  (methods, patched)
    setattr(consumer, "ack", _mark(ack))  # noqa: B010


def flush_completely() -> None:
    """Before it commits offsets, faust flushes its producer so that the table
    changelog holds every change made by the records being committed. But
    ``ProducerBuffer.flush`` returns as soon as one message takes longer than 0.1 s
    to hand to the client, with the rest still buffered: on a busy machine the
    offsets were committed ahead of the changelog, and a kill -9 then lost the
    state of batches whose inputs would never be read again.

    So flush waits until the buffer is empty and no message is still being handed
    over (the one taken off the queue is no longer counted in its size)."""
    from faust.transport.producer import ProducerBuffer

    if _patched(ProducerBuffer, "flush"):
        return
    original_send = ProducerBuffer._send_pending

    async def send_pending(self: Any, fut: Any) -> None:
        setattr(self, _IN_FLIGHT, getattr(self, _IN_FLIGHT, 0) + 1)
        try:
            await original_send(self, fut)
        finally:
            setattr(self, _IN_FLIGHT, getattr(self, _IN_FLIGHT) - 1)

    async def flush(self: Any) -> None:
        while True:
            buffered = self.size
            if buffered and self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            if not buffered and (not getattr(self, _IN_FLIGHT, 0) or self.state != "running"):
                return
            self.message_sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)

    setattr(ProducerBuffer, "_send_pending", send_pending)  # noqa: B010  (methods, patched)
    setattr(ProducerBuffer, "flush", _mark(flush))  # noqa: B010


class _NothingDropped(dict[Any, Any]):
    """faust's "last offset read" per partition, as its fetch loop sees it: never
    known, so the loop delivers every record it fetches. Everyone else (seeks, the
    lag gauge) reads and writes the real values."""

    def __getitem__(self, key: Any) -> None:
        return None


def deliver_records_read_again() -> None:
    """faust's fetch loop drops a record whose offset is below the last one it read
    from that partition. But while flow is suspended (a rebalance, table recovery) the
    loop still counts as read every record it fetches, without handing it to a
    stream. When faust then seeks back to the committed offset, the records fetched
    again were dropped as already read: never processed, their offsets never
    committable, their batches undecided until the next restart.

    So the loop's check is given nothing to compare with. A record the stream then
    sees twice is harmless: the joiner ignores a pending record or fragment it
    already holds (a fragment of a decided batch goes to the DLQ as a replay)."""
    from faust.transport import consumer as module

    consumer = module.Consumer
    if _patched(consumer, "_drain_messages"):
        return
    original = consumer._drain_messages

    async def drain(self: Any, fetcher: Any) -> None:
        if not isinstance(self._read_offset, _NothingDropped):
            self._read_offset = _NothingDropped(self._read_offset)
        await original(self, fetcher)

    setattr(consumer, "_drain_messages", _mark(drain))  # noqa: B010  (a method, patched)


def fetch_again_what_suspended_flow_swallowed() -> None:
    """While flow is suspended, faust's fetch loop takes records off the client without
    handing them to a stream. After table recovery faust resumes fetching, seeks the
    stream partitions to their committed offsets and only then resumes flow: records
    fetched in between were swallowed, and with nothing to seek back, this instance
    never saw them (a restarted prescreen began up to a few seconds of records after
    its committed offsets).

    (Records a stream received meanwhile were skipped the same way: the app's flow
    control was suspended too.) So as flow resumes, the stream partitions are put
    back to their committed offsets: nothing had been processed since faust's own
    seek, and a record delivered meanwhile is seen once more at worst."""
    from faust.transport import consumer as module

    consumer = module.Consumer
    if _patched(consumer, "resume_flow"):
        return
    original = consumer.resume_flow

    def resume_flow(self: Any) -> None:
        changelogs = self.app.tables.changelog_topics
        # The agents' input topics only: not the changelogs, which table recovery has
        # positioned, nor faust's leader topic (acks off). None: nothing committed
        # (faust also maps a committed 0 to None); the app then reads from the
        # earliest offset, so 0 is where it begins.
        offsets = {
            tp: self._committed_offset.get(tp) or 0
            for tp in self.assignment()
            if tp.topic not in changelogs and self.app.topics.acks_enabled_for(tp.topic)
        }
        original(self)
        if offsets:
            # On the client's own thread (aiokafka's fetcher is not thread-safe: a seek
            # from here once broke a fetch in progress). Records delivered before it
            # lands are delivered again after it, which the joiner ignores.
            self._fedscreen_reseek = asyncio.ensure_future(self._thread.seek_wait(offsets))

    setattr(consumer, "resume_flow", _mark(resume_flow))  # noqa: B010  (a method, patched)

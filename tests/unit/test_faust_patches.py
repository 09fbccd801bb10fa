"""Prescreen's faust patches: a flush hands every buffered message to the client, even
when each takes longer than faust's 0.1 s patience (a busy machine); the fetch loop
drops no record it fetches again after a seek."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport import consumer as consumer_module
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from services.prescreen import faust_patches


class SlowChannel:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.published: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.seconds)
        self.published.append(fut.n)


def future(channel: SlowChannel, n: int) -> Any:
    return SimpleNamespace(n=n, message=SimpleNamespace(channel=channel))


async def started_buffer() -> ProducerBuffer:
    faust_patches.flush_completely()
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


async def test_flush_returns_only_once_every_slow_message_was_handed_over() -> None:
    buffer = await started_buffer()
    channel = SlowChannel(seconds=0.25)
    try:
        for n in range(4):
            buffer.put(future(channel, n))
        await buffer.flush()
        # The commit that follows a flush may only cover changes the client holds.
        assert channel.published == [0, 1, 2, 3]
        assert buffer.size == 0
    finally:
        await buffer.stop()


async def test_flush_of_an_empty_buffer_returns_at_once() -> None:
    buffer = await started_buffer()
    try:
        # At once: it waits for nothing, so its first step already returns (no clock to
        # race on a busy machine).
        flushing = buffer.flush()
        with pytest.raises(StopIteration):
            flushing.send(None)
    finally:
        await buffer.stop()


async def test_patches_apply_once() -> None:
    faust_patches.flush_completely()
    first = ProducerBuffer.flush
    faust_patches.flush_completely()
    assert ProducerBuffer.flush is first


def test_the_fetch_loop_is_given_no_last_offset_to_drop_records_by() -> None:
    offsets = faust_patches._NothingDropped({"tp": 121})
    assert offsets["tp"] is None  # how faust's fetch loop reads it: nothing is dropped
    assert offsets.get("tp") == 121  # how seeks and the lag gauge read it
    offsets.update({"tp": 104})  # a seek back to the committed offset
    assert offsets.get("tp") == 104


def test_faust_still_drops_records_the_way_the_patch_expects() -> None:
    # If a faust upgrade reads the offsets another way, the patch stops working
    # without a sound: fail here instead, and look at the patch again.
    source = inspect.getsource(consumer_module.Consumer)
    assert "get_read_offset = self._read_offset.__getitem__" in source
    assert "if r_offset is None or offset >= r_offset:" in source


class SeekRecorder:
    def __init__(self) -> None:
        self.seeks: list[tuple[TP, int]] = []

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.extend(partitions.items())


async def test_resuming_flow_fetches_the_stream_partitions_again_from_their_commits() -> None:
    faust_patches.fetch_again_what_suspended_flow_swallowed()
    pending, fragments, changelog, leader = (
        TP("prescreen.pending.v1", 1),
        TP("fed.fragments.v1", 1),
        TP("fedscreen-prescreen-batches-changelog", 1),
        TP("fedscreen-prescreen-__assignor-__leader", 0),
    )
    thread = SeekRecorder()
    consumer = SimpleNamespace(
        app=SimpleNamespace(
            tables=SimpleNamespace(changelog_topics={changelog.topic}),
            topics=SimpleNamespace(acks_enabled_for=lambda t: t != leader.topic),
        ),
        assignment=lambda: {pending, fragments, changelog, leader},
        _committed_offset={pending: 76, changelog: 5},  # fragments: nothing committed
        _thread=thread,
        flow_active=False,
        can_resume_flow=asyncio.Event(),
        suspend_flow=asyncio.Event(),
    )
    consumer.suspend_flow.set()
    consumer_module.Consumer.resume_flow(consumer)  # type: ignore[arg-type]
    await consumer._fedscreen_reseek  # on the client's thread, after flow resumed
    # Records the fetch loop swallowed while flow was suspended are read again (from
    # the start where nothing was committed); a changelog is left where table
    # recovery put it, and faust's leader topic alone.
    assert sorted(thread.seeks) == [(fragments, 0), (pending, 76)]
    assert consumer.flow_active and not consumer.suspend_flow.is_set()

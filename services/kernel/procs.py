"""Running services as real OS processes (demo, benchmark, integration tests).

Each service gets its own process, log file and metrics port; readiness is the
service's own /readyz answer, so callers never race a consumer-group join.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from services.kernel.kafka.broker import free_port, stop_process_group


@dataclass
class ServiceProcess:
    name: str
    args: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    ready_path: str = "/readyz"
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group (stopped and killed as one, and spared the
                # terminal's Ctrl-C), in the caller's session: Linux's autogroup
                # scheduler weighs sessions against each other, so a service in a
                # session of its own would give its lowest-priority threads (the
                # partners' factor pools) a fair share against the other services.
                process_group=0,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_alive(self, timeout_s: float = 60.0) -> None:
        """Until the process answers /healthz (up, though perhaps without a model yet)."""
        await self.wait_ready(timeout_s, path="/healthz")

    async def wait_ready(self, timeout_s: float = 60.0, path: str | None = None) -> None:
        url = f"http://127.0.0.1:{self.metrics_port}{path or self.ready_path}"
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise RuntimeError(
                        f"{self.name} exited early; see {self.log_path}:\n{self.tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(
            f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_path}:\n{self.tail()}"
        )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.process is None:
            return None
        return stop_process_group(self.process, timeout_s)

    def kill(self) -> None:
        """kill -9: no chance to flush, commit or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


class Fleet:
    """A set of service processes started together and stopped in reverse order."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceProcess] = {}

    def add(self, service: ServiceProcess) -> ServiceProcess:
        self.services[service.name] = service
        return service

    async def start(self, timeout_s: float = 90.0) -> None:
        """Start every service not yet started; wait until all are ready."""
        for service in self.services.values():
            if service.process is None:
                service.start()
        await asyncio.gather(*(s.wait_ready(timeout_s) for s in self.services.values()))

    def stop(self) -> dict[str, int | None]:
        return {name: s.stop() for name, s in reversed(list(self.services.items()))}

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

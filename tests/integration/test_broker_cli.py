"""`fedscreen broker` as a user runs it: signals stop it, and stock librdkafka clients work.

The command fronts Tansu with the relay of ``services/kernel/kafka/compat.py``, so an old
librdkafka (Debian 12's kcat, 2.0.2) can complete its ApiVersions handshake. CI has no
kcat: there the handshake bytes are checked against old librdkafka's parsing rules and
confluent-kafka (a newer librdkafka) produces and consumes; where a ``kcat`` is on PATH
it does the same.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kernel.kafka.compat import frame, read_tagged_fields, read_uvarint
from services.kernel.kafka.topics import CANDIDATES
from tests.unit.test_kafka_compat import parse_like_old_librdkafka

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for children"),
]

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
EXIT_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class CliBroker:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "broker", "--port", str(port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = b""
        while not line.startswith(b"KAFKA_BOOTSTRAP_SERVERS="):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.close()
                pytest.fail(f"fedscreen broker did not start: {self.stderr()}")
            ready, _, _ = select.select([self.process.stdout], [], [], remaining)
            if ready:
                line = self.process.stdout.readline()
        assert line.decode().strip() == f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}"
        tansu = [pid for pid in children(self.process.pid) if "tansu" in self.exe(pid)]
        assert len(tansu) == 1, "one tansu child"
        self.tansu_pid = tansu[0]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def exe(pid: int) -> str:
        try:
            return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return ""

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        if hasattr(self, "tansu_pid") and alive(self.tansu_pid):
            os.kill(self.tansu_pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signal_to_fedscreen_broker_takes_tansu_down_with_it(signum: signal.Signals) -> None:
    broker = CliBroker(free_port())
    try:
        assert alive(broker.tansu_pid) and listening(broker.port)
        broker.process.send_signal(signum)
        returncode = broker.process.wait(EXIT_TIMEOUT_S)
        if signum == signal.SIGKILL:
            # nothing runs in the parent: the kernel's parent-death signal stops tansu
            deadline = time.monotonic() + EXIT_TIMEOUT_S
            while alive(broker.tansu_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            assert returncode == 0
            assert "broker stopped" in broker.stderr()
        assert not alive(broker.tansu_pid), "tansu outlived fedscreen broker"
        assert not listening(broker.port)
    finally:
        broker.close()


@pytest.fixture(scope="module")
def cli_broker() -> Iterator[CliBroker]:
    broker = CliBroker(free_port())
    try:
        yield broker
    finally:
        broker.close()


def api_versions_v3(port: int) -> bytes:
    """What a client reads back for librdkafka's opening request (ApiVersions v3)."""
    client_id = b"kcat"
    header = struct.pack(">hhih", 18, 3, 7, len(client_id)) + client_id + b"\x00"
    body = b"\x0blibrdkafka" + b"\x062.0.2" + b"\x00"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(frame(header + body))
        stream = sock.makefile("rb")
        (size,) = struct.unpack(">i", stream.read(4))
        return stream.read(size)


def test_the_handshake_parses_under_old_librdkafka_rules(cli_broker: CliBroker) -> None:
    response = api_versions_v3(cli_broker.port)
    assert response[:4] == struct.pack(">i", 7)
    assert parse_like_old_librdkafka(response) > 10
    # no top-level tagged fields left: Tansu's were all at their defaults
    pos = 6
    entries, pos = read_uvarint(response, pos)
    for _ in range(entries - 1):
        _, pos = read_tagged_fields(response, pos + 6)
    assert response[pos + 4 :] == b"\x00"


def test_confluent_kafka_produces_and_consumes(cli_broker: CliBroker) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    marker = uuid.uuid4().hex
    sent = {f"{marker}-{i}".encode(): f'{{"n": {i}}}'.encode() for i in range(5)}
    producer = confluent_kafka.Producer({"bootstrap.servers": cli_broker.bootstrap})
    for key, value in sent.items():
        producer.produce(CANDIDATES, key=key, value=value)
    assert producer.flush(30) == 0
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": cli_broker.bootstrap,
            "group.id": f"compat-{marker}",
            "auto.offset.reset": "earliest",
            # the embedded broker holds a join for half the session timeout (45 s default)
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([CANDIDATES])
    received: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 60
    try:
        while not sent.items() <= received.items() and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                received[message.key()] = message.value()
    finally:
        consumer.close()
    assert sent.items() <= received.items()


def test_kcat_produces_and_consumes(cli_broker: CliBroker) -> None:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.skip("no kcat on PATH (Debian: apt-get install kcat); the handshake test stands in")
    marker = uuid.uuid4().hex
    lines = [f'{marker}-{i}:{{"n": {i}}}' for i in range(3)]
    broker = ["-b", cli_broker.bootstrap]
    listed = subprocess.run(
        [kcat, *broker, "-L", "-t", CANDIDATES], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert f'topic "{CANDIDATES}"' in listed.stdout
    produced = subprocess.run(
        [kcat, *broker, "-P", "-t", CANDIDATES, "-K:"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(
        [
            kcat,
            *broker,
            "-X",
            "session.timeout.ms=6000",
            "-G",
            f"kcat-{marker}",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k:%s\n",
            CANDIDATES,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert consumed.returncode == 0, consumed.stderr
    assert set(lines) <= set(consumed.stdout.splitlines())

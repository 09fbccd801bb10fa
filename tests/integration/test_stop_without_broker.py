"""A signalled service stops even when the broker it would flush to is gone: an operator's
SIGTERM is never ignored (it exits as a kill -9 would, which loses nothing)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

# A service whose clean stop waits on an unreachable broker for ever, with a short grace.
STUCK_SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    from services.kernel import lifecycle

    lifecycle.STOP_GRACE_S = 1.0
    lifecycle.configure_logging("INFO")

    async def serve() -> None:
        print("started", flush=True)  # a task runs only once the handlers are installed
        await asyncio.Event().wait()

    async def main() -> None:
        await lifecycle.run_until_stopped(serve())
        print("flushing", flush=True)
        await asyncio.Event().wait()  # the producer's flush, with no broker to answer

    asyncio.run(main())
    """
)


def test_sigterm_ends_a_service_whose_flush_cannot_finish() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_SERVICE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "started\n"
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode == 1
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read() == "flushing\n"  # it did try to stop cleanly first
    errors = [json.loads(line) for line in process.stderr.read().splitlines()]
    assert any("did not stop within 1s" in e["message"] for e in errors), errors

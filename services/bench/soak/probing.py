"""What the broker says during a soak: records written (end offsets of every topic),
dead-lettered records (end offsets of every ``*.dlq`` topic) and each consumer group's
lag (end offset minus committed offset), into a window."""

from __future__ import annotations

from services.bench.probes import KafkaProbe
from services.bench.soak.sampling import Window
from services.kernel.config import KafkaSettings
from services.kernel.kafka.topics import FRAGMENTS, PENDING


def soak_probe(settings: KafkaSettings) -> KafkaProbe:
    """The probe of the groups that commit offsets. Partners commit none: every replica
    reads every request partition without a group (their lag is their own
    fedscreen_consumer_lag gauge)."""
    groups = {
        "fedscreen-intake": ["bank.candidates.v1"],
        "fedscreen-prescreen": [PENDING, FRAGMENTS],
    }
    return KafkaProbe(settings, groups)


async def probe_window(window: Window, probe: KafkaProbe) -> None:
    """Read the broker into ``window`` (or why it could not be read)."""
    sample = await probe.read()
    window.records, window.dlq, window.lag = sample.records, sample.dlq, sample.lag
    window.probe_error = sample.error

"""Create topics explicitly: the embedded broker does not auto-create them, and
co-partitioned topics must agree on their partition count."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from services.kernel.config import KafkaSettings
from services.kernel.kafka.topics import TopicSpec


class TopicLayoutError(RuntimeError):
    """An existing topic has a partition count that breaks co-partitioning."""


async def ensure_topics(settings: KafkaSettings, specs: Sequence[TopicSpec]) -> list[str]:
    """Create missing topics; check existing ones. Returns the names created."""
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs(), request_timeout_ms=20_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        spec.name,
                        settings.partitions,
                        settings.replication_factor,
                        topic_configs=dict(spec.config),
                    )
                    for spec in missing
                ]
            )
        present = [spec.name for spec in specs if spec.name in existing]
        if present:
            for described in await admin.describe_topics(present):
                count = len(described["partitions"])
                if count != settings.partitions:
                    raise TopicLayoutError(
                        f"topic {described['topic']} has {count} partitions, "
                        f"expected {settings.partitions}"
                    )
        return [spec.name for spec in missing]
    finally:
        await admin.close()


async def _port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def wait_for_broker(settings: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Until the cluster answers a metadata request."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: Exception | None = None
    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    # Probe the socket first so the client does not log a connection error per retry.
    while not await _port_open(host, int(port)):
        if asyncio.get_running_loop().time() >= deadline:
            raise TimeoutError(f"nothing listens on {settings.bootstrap_servers}")
        await asyncio.sleep(0.05)
    while asyncio.get_running_loop().time() < deadline:
        admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs(), request_timeout_ms=2_000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.1)
        finally:
            await admin.close()
    raise TimeoutError(f"Kafka at {settings.bootstrap_servers} did not answer: {last}")

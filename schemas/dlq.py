"""``<topic>.dlq``: what a consumer could not process, with the reason and the original bytes."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime, Field

from schemas.common import WireModel


class DlqEnvelope(WireModel):
    SCHEMA_ID: ClassVar[str] = "dlq.v1"

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None = Field(description="Original key, standard base64.")
    value_b64: str | None = Field(description="Original value, standard base64.")
    headers: dict[str, str] = Field(default_factory=dict, description="Original headers, base64.")
    reason: str = Field(description="Machine-readable reason, e.g. 'invalid-schema'.")
    error: str = Field(description="Human-readable detail, truncated.")
    consumer: str = Field(description="Service that gave up on the message.")
    failed_at: AwareDatetime
    attempts: int = 1
    value_size: int | None = Field(
        default=None,
        description="Set, with value_sha256, instead of value_b64 when the value was too "
        "large to copy into the DLQ; the original stays at source_topic/partition/offset "
        "until the topic's retention removes it.",
    )
    value_sha256: str | None = Field(default=None, description="Hex SHA-256 of the value.")

"""Identifiers that must be the same every time they are derived."""

from __future__ import annotations

import uuid

_DECISIONS = uuid.UUID("5d0c43d3-31a4-4c36-9a3e-5c1f0e7b9a11")


def decision_id_for(event_id: str) -> str:
    """One candidate event has one decision id, however often it is (re)processed, so
    every consumer can de-duplicate by it and webhook-id stays stable across retries."""
    return f"d-{uuid.uuid5(_DECISIONS, event_id)}"


def new_batch_id() -> str:
    return f"b-{uuid.uuid4().hex}"

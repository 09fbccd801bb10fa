"""A batch being joined, as prescreen's ``batches`` table holds it.

The table's changelog keeps each batch as a JSON object with short keys (``f``, ``a``,
``parts``, ``d``, ``part``, ``seen``, and ``p`` from versions that kept the pending
record inside it): a restarted worker reads back what an earlier version wrote, so
the keys stay; the code reads and writes them here only.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class BatchState:
    partition: int
    """The input partition the batch's records (and its decisions) belong to."""
    seen: float
    """When its first record arrived (orphan fragments age out from here)."""
    deadline: float | None = None
    """Set once its pending record arrived (the record itself is in ``pending``)."""
    fragments: dict[str, dict[str, str]] = field(default_factory=dict)
    """Fragment JSON by attempt ("1") and partner."""
    attempt: int = 1
    participants: list[str] | None = None
    """The attempt's participants (None: every partner of the batch)."""
    legacy_pending: str | None = None
    """The pending record's JSON, in a state written by a version that kept it here."""

    @classmethod
    def new(cls, partition: int) -> BatchState:
        return cls(partition=partition, seen=time.time())

    @classmethod
    def from_table(cls, value: dict[str, Any]) -> BatchState:
        return cls(
            partition=int(value["part"]),
            seen=float(value.get("seen", time.time())),
            deadline=value.get("d"),
            fragments={a: dict(by) for a, by in (value.get("f") or {}).items()},
            attempt=int(value.get("a", 1)),
            participants=value.get("parts"),
            legacy_pending=value.get("p"),
        )

    def to_table(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "f": self.fragments,
            "a": self.attempt,
            "parts": self.participants,
            "d": self.deadline,
            "part": self.partition,
            "seen": self.seen,
        }
        if self.legacy_pending is not None:
            value["p"] = self.legacy_pending
        return value

    @staticmethod
    def due(
        value: dict[str, Any],
        now: float,
        orphan_after_s: float,
        partitions: Collection[int] | None,
    ) -> int | None:
        """The attempt whose deadline passed (or whose orphan fragments aged out) of a
        batch as the table holds it, if it is of ``partitions``; else None. Read
        without parsing: the timer asks it of every batch held, 20 times a second."""
        if partitions is not None and value.get("part") not in partitions:
            return None
        deadline = value.get("d")
        if deadline is not None:
            return int(value.get("a", 1)) if now >= deadline else None
        if now - value.get("seen", now) >= orphan_after_s:
            return int(value.get("a", 1))
        return None

    @property
    def current(self) -> dict[str, str]:
        """The current attempt's fragment JSON by partner."""
        return self.fragments.get(str(self.attempt), {})

    def has_answer(self, partner: str, attempt: int = 1) -> bool:
        return partner in self.fragments.get(str(attempt), {})

"""Per-customer intake state: recent event ids (duplicates are decided once) and
recent screenings (the frequency cap).

The state lives in memory for the partitions this instance owns and is written to a
compacted changelog topic keyed by customer id. That topic has the candidates
topic's partition count and key, so a customer's state sits in the same partition
number as the customer's events; an instance that takes over a partition restores
exactly that partition of the changelog.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from schemas import FrequencyCap


@dataclass
class CustomerState:
    events: list[str] = field(default_factory=list)
    screenings: list[float] = field(default_factory=list)  # event times, unix seconds

    def to_bytes(self) -> bytes:
        return json.dumps({"e": self.events, "s": self.screenings}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerState:
        raw = json.loads(data)
        return cls(events=list(raw["e"]), screenings=[float(t) for t in raw["s"]])


class Ledger:
    def __init__(self, recent_events: int) -> None:
        self.recent_events = recent_events
        self.customers: dict[int, dict[str, CustomerState]] = {}
        self.dirty: dict[tuple[int, str], CustomerState] = {}

    def restore(self, partition: int, customer_id: str, data: bytes | None) -> None:
        states = self.customers.setdefault(partition, {})
        if data is None:
            states.pop(customer_id, None)
        else:
            states[customer_id] = CustomerState.from_bytes(data)

    def drop(self, partition: int) -> None:
        self.customers.pop(partition, None)
        for key in [k for k in self.dirty if k[0] == partition]:
            del self.dirty[key]

    def _state(self, partition: int, customer_id: str) -> CustomerState:
        return self.customers.setdefault(partition, {}).setdefault(customer_id, CustomerState())

    def seen(self, partition: int, customer_id: str, event_id: str) -> bool:
        """True if this event was already processed; otherwise remember it."""
        state = self._state(partition, customer_id)
        if event_id in state.events:
            return True
        state.events.append(event_id)
        del state.events[: -self.recent_events]
        self.dirty[(partition, customer_id)] = state
        return False

    def admit(self, partition: int, customer_id: str, at: float, cap: FrequencyCap) -> bool:
        """Record a screening unless the customer already had ``cap.max_screenings`` in
        the window ending at ``at`` (event time, so replays decide the same way)."""
        state = self._state(partition, customer_id)
        window_start = at - cap.window_hours * 3600.0
        recent = [t for t in state.screenings if t > window_start]
        if len(recent) >= cap.max_screenings:
            state.screenings = recent
            return False
        recent.append(at)
        state.screenings = recent
        self.dirty[(partition, customer_id)] = state
        return True

    def batched(self, partition: int, customer_id: str, event_id: str, at: float) -> bool:
        """Learn from a batch read back after a crash that this event was admitted: it is
        seen and its screening counts against the cap (the state that said so was lost
        with the crash). False if the state already knew."""
        if self.seen(partition, customer_id, event_id):
            return False
        self._state(partition, customer_id).screenings.append(at)
        return True

    def take_dirty(self, hold: set[tuple[int, str]] | None = None) -> list[tuple[int, str, bytes]]:
        """(partition, customer id, state bytes) for every state changed since the last call,
        except the ``hold`` ones: customers whose events sit in a batch not yet emitted.
        Persisting those would mark the events seen while a crash could still lose the
        batch, and the replayed events would then be dropped as duplicates."""
        hold = hold or set()
        changes = []
        for key in [k for k in self.dirty if k not in hold]:
            changes.append((key[0], key[1], self.dirty.pop(key).to_bytes()))
        return changes

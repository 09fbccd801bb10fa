"""Which records a restarted prescreen sends again: pending records of batches it
neither holds nor decided, and their partners' fragments, never deadline ticks."""

from __future__ import annotations

from services.kernel.kafka.topics import FRAGMENTS, PENDING
from services.prescreen.joiner import KIND_HEADER, TICK_KIND
from services.prescreen.recovery import Record, fragments_of, skipped_batches


def test_only_batches_the_joiner_does_not_know_are_sent_again() -> None:
    pending = [Record(PENDING, 0, f"b-{i}".encode(), b"{}") for i in range(4)]
    known = {"b-0", "b-2"}  # decided, or held with its pending record
    missing = skipped_batches(pending, lambda b: b in known)
    assert sorted(missing) == ["b-1", "b-3"]
    assert missing["b-1"].partition == 0


def test_fragments_of_missing_batches_without_ticks() -> None:
    fragments = [
        Record(FRAGMENTS, 1, b"b-1", b'{"partner": "payments"}'),
        Record(FRAGMENTS, 1, b"b-1", b"{}", ((KIND_HEADER, TICK_KIND),)),
        Record(FRAGMENTS, 1, b"b-9", b'{"partner": "payments"}'),
    ]
    chosen = fragments_of(fragments, {"b-1"})
    assert chosen == [fragments[0]]

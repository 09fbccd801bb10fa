"""Which records a restarted prescreen sends again: pending records of batches it
neither holds nor decided, and their partners' fragments, never deadline ticks."""

from __future__ import annotations

from services.kernel.kafka.topics import FRAGMENTS, PENDING
from services.kernel.kafka.window import Record
from services.prescreen.joiner import KIND_HEADER, TICK_KIND
from services.prescreen.recovery import fragments_of, processed_through, skipped_batches


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


def test_the_sweep_waits_until_the_joiner_processed_what_was_on_the_broker() -> None:
    ends = {0: 10, 1: 5, 2: 7}
    committed = {0: 3, 1: 5, 2: 7}  # partitions 1 and 2 held nothing new at the start
    last: dict[int, int] = {0: 8}
    assert not processed_through(ends, last.get, committed)  # offset 9 only fetched so far
    last[0] = 9
    assert processed_through(ends, last.get, committed)
    # A partition that had records past its committed offset is not done before the
    # joiner handled one of them: fetched (faust's lag 0) is not processed.
    assert not processed_through({0: 10, 3: 4}, last.get, {0: 3})

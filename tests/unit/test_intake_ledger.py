"""Intake's per-customer state: duplicates and the frequency cap, and their changelog."""

from __future__ import annotations

from schemas import FrequencyCap
from services.intake.ledger import CustomerState, Ledger

CAP = FrequencyCap(max_screenings=2, window_hours=24)


def test_an_event_id_is_seen_once() -> None:
    ledger = Ledger(recent_events=3)
    assert not ledger.seen(0, "c1", "e1")
    assert ledger.seen(0, "c1", "e1")
    assert not ledger.seen(0, "c2", "e1")  # event ids are per customer


def test_only_the_most_recent_event_ids_are_kept() -> None:
    ledger = Ledger(recent_events=2)
    for event in ("e1", "e2", "e3"):
        ledger.seen(0, "c1", event)
    assert not ledger.seen(0, "c1", "e1")  # forgotten: outside the dedup window
    assert ledger.seen(0, "c1", "e3")


def test_frequency_cap_counts_screenings_in_the_window_by_event_time() -> None:
    ledger = Ledger(recent_events=8)
    t0 = 1_000_000.0
    assert ledger.admit(0, "c1", t0, CAP)
    assert ledger.admit(0, "c1", t0 + 3600, CAP)
    assert not ledger.admit(0, "c1", t0 + 7200, CAP)  # third inside 24 h
    assert ledger.admit(0, "c1", t0 + 25 * 3600, CAP)  # the first has aged out
    assert ledger.admit(0, "c2", t0, CAP)


def test_changes_round_trip_through_the_changelog_format() -> None:
    ledger = Ledger(recent_events=8)
    ledger.seen(2, "c1", "e1")
    ledger.admit(2, "c1", 100.0, CAP)
    changes = ledger.take_dirty()
    assert [(p, c) for p, c, _ in changes] == [(2, "c1")]
    assert ledger.take_dirty() == []

    restored = Ledger(recent_events=8)
    restored.restore(2, "c1", changes[0][2])
    assert restored.seen(2, "c1", "e1")
    assert not restored.admit(2, "c1", 101.0, FrequencyCap(max_screenings=1, window_hours=1))
    restored.restore(2, "c1", None)  # tombstone
    assert not restored.seen(2, "c1", "e1")


def test_losing_a_partition_forgets_its_customers() -> None:
    ledger = Ledger(recent_events=8)
    ledger.seen(1, "c1", "e1")
    ledger.drop(1)
    assert ledger.take_dirty() == []
    assert not ledger.seen(1, "c1", "e1")
    assert CustomerState.from_bytes(CustomerState(["a"], [1.0]).to_bytes()).events == ["a"]


def test_customers_in_an_unemitted_batch_are_not_persisted_yet() -> None:
    """Persisting them would mark their events seen while a crash could still lose the
    batch; the replay would then drop them as duplicates and they would never be decided."""
    ledger = Ledger(recent_events=8)
    ledger.seen(0, "batched", "e1")
    ledger.seen(0, "decided", "e2")
    first = ledger.take_dirty(hold={(0, "batched")})
    assert [c for _, c, _ in first] == ["decided"]
    later = ledger.take_dirty()  # the batch was emitted: now it is persisted
    assert [c for _, c, _ in later] == ["batched"]


def test_a_batch_read_back_after_a_crash_counts_against_the_cap() -> None:
    # The crash lost the state that admitted e1 and e2; their batch survived.
    ledger = Ledger(recent_events=8)
    t0 = 1_000_000.0
    assert ledger.batched(0, "c1", "e1", t0)
    assert ledger.batched(0, "c1", "e2", t0 + 60)
    assert not ledger.batched(0, "c1", "e2", t0 + 60)  # read back twice: counted once
    assert ledger.seen(0, "c1", "e1")  # the redelivered event is not batched again
    assert not ledger.admit(0, "c1", t0 + 120, CAP)  # a third screening would pass the cap
    assert [change[1] for change in ledger.take_dirty()] == ["c1"]

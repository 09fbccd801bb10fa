"""When candidates go undecided in an integration test, say where they stopped: the
failure message is all a CI run keeps, so it must carry the evidence, not just a count."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path

from schemas import PendingBatch
from services.kernel.config import KafkaSettings
from services.kernel.kafka.topics import (
    CANDIDATES,
    DECISIONS,
    FRAGMENTS,
    PENDING,
    dlq_topic,
    requests_topic,
)
from tests.integration.harness import read_all, read_records

NOISE = ("is overlapping", "producer buffer full")


async def explain_undecided(
    settings: KafkaSettings,
    missing: Collection[str],
    partners: Iterable[str],
    log_dir: Path,
    *,
    sample: int = 3,
) -> str:
    """A few lines per stage: which batches hold the missing events, what of each batch
    reached the broker, and every log line that names one of them."""
    missing = set(missing)
    lines: list[str] = []
    batch_of: dict[str, str] = {}
    copies: Counter[str] = Counter()
    for value in await read_all(settings, PENDING, idle_s=0.5):
        batch = PendingBatch.model_validate_json(value)
        copies[batch.batch_id] += 1
        for candidate in batch.candidates:
            if candidate.event_id in missing:
                batch_of[candidate.event_id] = batch.batch_id
    unbatched = sorted(missing - set(batch_of))
    batches = sorted(set(batch_of.values()))
    lines.append(
        f"{len(missing)} undecided: {len(unbatched)} in no pending batch "
        f"(e.g. {unbatched[:sample]}), the rest in {len(batches)} batches "
        f"(e.g. {batches[:sample]})"
    )
    if unbatched:
        on_input = {
            json.loads(v).get("event_id") for v in await read_all(settings, CANDIDATES, idle_s=0.5)
        }
        lines.append(f"  of those, on {CANDIDATES}: {len(on_input & set(unbatched))}")
    wanted = set(batches)
    if wanted:
        per_batch = Counter(copies[b] for b in wanted)
        lines.append(f"  batches by number of pending copies: {dict(per_batch)}")
        for partner in partners:
            asked = _batch_ids(await read_all(settings, requests_topic(partner), idle_s=0.5))
            lines.append(f"  requests to {partner}: {len(asked & wanted)}/{len(wanted)}")
        fragments = [json.loads(v) for v in await read_all(settings, FRAGMENTS, idle_s=0.5)]
        kinds = Counter(
            ("tick" if "mac" in f else f"fragment:{f.get('partner')}@{f.get('attempt')}")
            for f in fragments
            if f.get("batch_id") in wanted
        )
        lines.append(f"  on {FRAGMENTS}: {dict(kinds)}")
        decided_batches = _batch_ids(await read_all(settings, DECISIONS, idle_s=0.5))
        lines.append(f"  batches with some decision: {len(decided_batches & wanted)}")
        for topic in (PENDING, FRAGMENTS):
            dead = await read_all(settings, dlq_topic(topic), idle_s=0.5)
            reasons = Counter(
                json.loads(v).get("reason") for v in dead if any(b in v.decode() for b in wanted)
            )
            lines.append(f"  in {dlq_topic(topic)}: {dict(reasons)}")
    names = wanted | set(list(missing)[:sample])
    for log in sorted(log_dir.glob("*.log")):
        hits = [
            line[:300]
            for line in log.read_text(errors="replace").splitlines()
            if any(n in line for n in names)
        ]
        noteworthy = [
            line[:300]
            for line in log.read_text(errors="replace").splitlines()
            if ('"WARNING"' in line or '"ERROR"' in line or "Traceback" in line)
            and not any(n in line for n in NOISE)
        ]
        if hits or noteworthy:
            lines.append(f"  {log.name}: {len(hits)} lines name them; warnings/errors:")
            lines.extend(f"    {line}" for line in (hits[:sample] + noteworthy[-8:]))
    return "\n".join(lines)


def _batch_ids(values: Iterable[bytes]) -> set[str]:
    ids = set()
    for value in values:
        try:
            batch_id = json.loads(value).get("batch_id")
        except ValueError:
            continue
        if isinstance(batch_id, str):
            ids.add(batch_id)
    return ids


async def explain_copies(settings: KafkaSettings, event_id: str, batch_ids: Collection[str]) -> str:
    """Where the pending records of the batches that decided one event sit: enough to
    tell an event batched twice by intake (two batches) from a batch decided twice."""
    lines = []
    for record in await read_records(settings, PENDING):
        batch = PendingBatch.model_validate_json(record.value or b"")
        if batch.batch_id in batch_ids:
            sources = [c.source_partition for c in batch.candidates if c.event_id == event_id]
            lines.append(
                f"  {batch.batch_id}: pending partition {record.partition} offset "
                f"{record.offset} at {record.timestamp} ms, "
                f"created {batch.created_at:%H:%M:%S.%f}, "
                f"{len(batch.candidates)} candidates, the event from partition {sources}"
            )
    on_input = [
        f"  {CANDIDATES} partition {r.partition} offset {r.offset} at {r.timestamp} ms"
        for r in await read_records(settings, CANDIDATES)
        if json.loads(r.value or b"{}").get("event_id") == event_id
    ]
    return "\n".join(lines + on_input)

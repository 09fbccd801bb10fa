"""Campaign quotas counted exactly once, with the release log as the ledger.

Each input partition counts the releases of its own batches. A worker releases from
the partitions it owns while their counts, plus every other partition's share of the
quota (or its count, if higher), stay under the quota (``Pool.room``): one worker
owning every partition applies the quota exactly, several workers can never release
more than it together (each keeps within the shares of the partitions it owns, less
what others have overdrawn), and a campaign whose candidates fall unevenly on one
worker's partitions still fills its quota. The count travels with the releases: the
last release record of a decided batch carries the partition's counts after that
batch (header ``fedscreen-quota``, schemas.QuotaCounts), so a count reaches the broker
in the same record batch as the releases it counts, and a crash can lose both or
neither. A restarted (or newly assigned) partition starts from the count of its last
such record (quota_log.py), never from a table whose changelog is written apart from
the releases: a kill -9 between the two writes used to count a batch's releases twice.

A batch whose releases reached the broker but whose "decided" mark did not is decided
again after the restart: its candidates released the first time are in ``counted``
(read back from the log) and are released again without being counted again, so the
second decision matches the first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from schemas import CampaignPolicy, QuotaCounts, ReasonCode
from services.prescreen.policy import quota_share

DAYS_KEPT = 2
"""Days kept per campaign: today and yesterday in the campaign's zone (a zone ahead
of another may still be on the previous day)."""


@dataclass(slots=True)
class PartitionQuota:
    """One input partition's releases by campaign (ever) and by campaign and day."""

    partition: int
    totals: dict[str, int] = field(default_factory=dict)
    days: dict[str, dict[str, int]] = field(default_factory=dict)
    counted: frozenset[str] = frozenset()
    """Decision ids whose release is on the broker and in ``totals`` already."""
    pool: Pool | None = None
    """This worker's partitions, whose shares this one pools (set by Pool.of)."""
    _days_now: datetime | None = None
    _days_at: dict[str, str] = field(default_factory=dict)
    """Days by zone at ``_days_now``."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held from counting a batch's releases until its records are queued: the count
    in a record's header must cover every release queued before it."""

    @classmethod
    def from_counts(cls, counts: QuotaCounts, counted: Iterable[str] = ()) -> PartitionQuota:
        return cls(
            counts.partition,
            dict(counts.totals),
            {c: dict(by_day) for c, by_day in counts.days.items()},
            frozenset(counted),
        )

    def take(self, campaign: CampaignPolicy, decision_id: str, now: datetime) -> ReasonCode | None:
        """Count one release against the campaign's total and daily quotas, or say
        which is spent. Counted by campaign id, so a changed quota applies to what was
        already released."""
        if decision_id in self.counted:
            return None  # released before a restart, and counted then
        pool = self.pool
        assert pool is not None, "a partition counts within its worker's pool"
        cid = campaign.campaign_id
        if campaign.quota is not None and not pool.room(
            campaign.quota, lambda q: q.totals.get(cid, 0)
        ):
            return ReasonCode.QUOTA_EXHAUSTED
        day = self._day(campaign, now)
        if campaign.daily_quota is not None and not pool.room(
            campaign.daily_quota, lambda q: q.days.get(cid, {}).get(day, 0)
        ):
            return ReasonCode.DAILY_QUOTA_EXHAUSTED
        by_day = self.days.setdefault(cid, {})
        by_day[day] = by_day.get(day, 0) + 1
        if len(by_day) > DAYS_KEPT:
            del by_day[min(by_day)]
        self.totals[cid] = self.totals.get(cid, 0) + 1
        return None

    def _day(self, campaign: CampaignPolicy, now: datetime) -> str:
        # Every candidate of a batch is decided at the same ``now``: one zone
        # conversion per campaign and batch, not per release.
        if self._days_now != now:
            self._days_now, self._days_at = now, {}
        day = self._days_at.get(campaign.timezone)
        if day is None:
            day = self._days_at[campaign.timezone] = campaign.day_of(now).isoformat()
        return day

    def header(self) -> tuple[str, bytes]:
        counts = QuotaCounts.model_construct(
            partition=self.partition, totals=self.totals, days=self.days
        )
        return QuotaCounts.HEADER, counts.model_dump_json().encode()


@dataclass(slots=True)
class Pool:
    """Every partition's counts as this worker knows them: its own partitions' kept
    current, the others' as they were read back (their owners count on)."""

    owned: dict[int, PartitionQuota]
    others: dict[int, PartitionQuota]
    partitions: int
    stale: bool = False
    """Forgotten: a handler that took one of these counts before must take them again."""

    @classmethod
    def of(
        cls, partitions: int, owned: Iterable[PartitionQuota], others: Iterable[PartitionQuota] = ()
    ) -> Pool:
        pool = cls({}, {q.partition: q for q in others}, partitions)
        for quota in owned:
            pool.adopt(quota)
        return pool

    def adopt(self, quota: PartitionQuota) -> None:
        self.others.pop(quota.partition, None)
        self.owned[quota.partition] = quota
        quota.pool = self

    def room(self, quota: int, count: Callable[[PartitionQuota], int]) -> bool:
        """Whether one more release fits: each other partition may still release its
        share, so it is set aside for it (or what it released, if more)."""
        used = sum(count(q) for q in self.owned.values())
        for p in range(self.partitions):
            if p not in self.owned:
                other = self.others.get(p)
                used += max(
                    count(other) if other is not None else 0,
                    quota_share(quota, self.partitions, p),
                )
        return used < quota


Restore = Callable[[int], Awaitable[PartitionQuota]]


class QuotaLedger:
    """The counts of every partition, read back from the release log the first time
    they are needed after an assignment, with those this worker owns pooled."""

    def __init__(
        self,
        partitions: int,
        restore: Restore | None = None,
        owned: Callable[[], Collection[int]] | None = None,
    ) -> None:
        self.partitions = partitions
        self._restore: Restore = restore or self._empty
        self._owned = owned or (lambda: range(partitions))
        self._pool: asyncio.Future[Pool] | None = None
        self._retired: Pool | None = None
        # Acknowledgements still awaited, by partition: a restore waits for them, so
        # the counts it reads back cover every release this worker queued.
        self._in_flight: dict[int, set[asyncio.Future[None]]] = {}

    async def _empty(self, partition: int) -> PartitionQuota:
        return PartitionQuota(partition)

    async def of(self, partition: int) -> PartitionQuota:
        pool = await self._current()
        held = pool.owned.get(partition)
        if held is None:
            # Assigned after the counts were read (its previous owner has stopped
            # deciding it: faust drains a revoked partition first): read it again.
            held = await self._restore(partition)
            if pool.owned.get(partition) is None:
                pool.adopt(held)
            held = pool.owned[partition]
        return held

    async def _current(self) -> Pool:
        pool = self._pool
        if pool is None:
            pool = self._pool = asyncio.ensure_future(self._restored())
        try:
            return await asyncio.shield(pool)
        except BaseException:
            if self._pool is pool and pool.done():
                self._pool = None  # try again with the next batch
            raise

    async def _restored(self) -> Pool:
        if (retired := self._retired) is not None:
            # A handler may still be counting on the counts forgotten: let it queue
            # its records (it takes the new counts for its next batch, see ``stale``).
            for quota in retired.owned.values():
                async with quota.lock:
                    pass
        waiting = [f for futures in self._in_flight.values() for f in futures]
        await asyncio.gather(*waiting, return_exceptions=True)
        quotas = await asyncio.gather(*(self._restore(p) for p in range(self.partitions)))
        owned = set(self._owned())
        return Pool.of(
            self.partitions,
            (q for q in quotas if q.partition in owned),
            (q for q in quotas if q.partition not in owned),
        )

    def forget(self) -> None:
        """Drop every count held (partitions revoked, or a send failed): another
        worker may count meanwhile, and the log is the truth when they come back."""
        pool, self._pool = self._pool, None
        if pool is not None and pool.done() and not pool.cancelled() and not pool.exception():
            self._retired = pool.result()
            self._retired.stale = True

    async def acknowledged(self, partition: int, acks: Awaitable[None]) -> None:
        """Wait for a batch's records; if the broker refused them, the counts held
        may include releases that are not on it: read them back next time."""
        waiting = asyncio.ensure_future(acks)
        in_flight = self._in_flight.setdefault(partition, set())
        in_flight.add(waiting)
        try:
            await waiting
        except BaseException:
            self.forget()
            raise
        finally:
            in_flight.discard(waiting)
            with contextlib.suppress(asyncio.CancelledError):
                if waiting.done() and not waiting.cancelled():
                    waiting.exception()  # retrieved: no "never retrieved" warning

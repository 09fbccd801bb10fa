"""The soak's run: candidates offered at a fixed rate in bursts, a window closed and
sampled every ``interval_s``, each window accounted for once all its candidates are
decided, then the drain (:class:`SoakBench`, whose outcome is :class:`SoakResult`)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.bench.capacity import BROKER, HARNESS
from services.bench.load import DecisionCollector, Seen, now_iso, send_messages, tag_of
from services.bench.probes import KafkaProbe, ProcessSampler
from services.bench.run import World
from services.bench.session import running_pipeline
from services.bench.soak.analysis import SoakAnalysis, analyse
from services.bench.soak.options import UNJUDGED, SoakOptions
from services.bench.soak.probing import probe_window, soak_probe
from services.bench.soak.sampling import Window, WindowSampler
from services.bench.stats import Accounting, parse_ts, percentiles_ms
from services.stack.pipeline import Pipeline, PipelineOptions

Say = Callable[[str], None]


@dataclass
class SoakResult:
    options: SoakOptions
    model_build_s: float = 0.0
    pipeline_start_s: float = 0.0
    start: dict[str, dict[str, float]] = field(default_factory=dict)  # RSS before the load
    windows: list[Window] = field(default_factory=list)
    drain_s: float = 0.0
    late: int = 0  # decisions that arrived after the drain gave up on them
    duplicates_late: int = 0  # second decisions after a window was accounted
    problems: list[str] = field(default_factory=list)

    @property
    def accounting(self) -> dict[str, int]:
        keys = ("expected", "decided", "missing", "duplicated", "conflicting", "scored")
        total = {k: sum(int(w.accounting.get(k, 0)) for w in self.windows) for k in keys}
        total["duplicated"] += self.duplicates_late
        total["late"] = self.late
        return total

    def analysis(self) -> SoakAnalysis:
        return analyse(self.windows, self.options)


class SoakBench:
    def __init__(self, options: SoakOptions, world: World, say: Say) -> None:
        self.options = options
        self.world = world
        self.say = say
        self.root = options.workdir / "soak"
        self.rng = np.random.default_rng(options.seed)
        self.result = SoakResult(options)
        self.pending: list[Window] = []  # closed, not yet accounted
        self.deliveries: list[asyncio.Future[Any]] = []
        self.probes: list[asyncio.Task[None]] = []

    async def run(self) -> SoakResult:
        o = self.options
        options = PipelineOptions(
            linger_ms=o.linger_ms,
            deadline_ms=o.deadline_ms,
            log_level="WARNING",
            extra_env={
                **o.extra_env,
                "prescreen": {
                    "PRESCREEN_DECIDED_RETENTION_S": str(o.decided_retention_s),
                    **o.extra_env.get("prescreen", {}),
                },
            },
        )
        async with running_pipeline(
            self.root,
            self.world,
            options,
            self.result,
            label="soak",
            model_version="m-soak",
            key_bits=o.key_bits,
            partitions=o.partitions,
            say=self.say,
        ) as session:
            collector = session.collector
            probe = soak_probe(session.broker.settings())
            try:  # the probe stops first: before the producer, collector and pipeline
                await probe.start()
                sampler = WindowSampler(ProcessSampler(session.pids(), {HARNESS: os.getpid()}))
                await self.load(session.pipeline, session.producer, collector, sampler, probe)
                await self.drain(collector)
                for task in self.probes:
                    await task
                for delivery in self.deliveries:
                    await delivery
            finally:
                await probe.stop()
        self.leftovers(collector)
        self.result.problems += self.problems()
        return self.result

    # -- load ---------------------------------------------------------------------
    async def load(
        self,
        pipeline: Pipeline,
        producer: Any,
        collector: DecisionCollector,
        sampler: WindowSampler,
        probe: KafkaProbe,
    ) -> None:
        o, t = self.options, self.world.templates
        self.result.start = sampler.snapshot()
        tick = o.tick_ms / 1000
        self.say(
            f"[soak] {o.rate:g}/s for {o.windows * o.interval_s:g}s, "
            f"sampled every {o.interval_s:g}s ({o.windows} windows)"
        )
        start = time.monotonic()
        window = Window(0, 0.0, o.interval_s)
        sampler.begin()
        last_sample, last_decided = start, self._decided(collector)
        sent_total = 0
        futures: list[Awaitable[Any]] = []
        next_tick = start
        while True:
            now = time.monotonic()
            if now >= start + (window.index + 1) * o.interval_s:
                # -- close the window: sample, then account for older windows ---------
                decided = self._decided(collector)
                window.t_end_s = now - start
                window.span_s = now - last_sample
                window.decisions = decided - last_decided
                window.backlog = sent_total - decided
                sampler.sample(window)
                last_sample, last_decided = now, decided
                self.probes.append(asyncio.create_task(probe_window(window, probe)))
                if futures:
                    self.deliveries.append(asyncio.gather(*futures))
                    futures = []
                self._prune_done()
                self.result.windows.append(window)
                self.pending.append(window)
                self._progress(window)
                self.account(collector, final=False)
                dead = [n for n, s in pipeline.fleet.services.items() if not s.alive]
                if dead:
                    self.result.problems.append(f"exited during the soak: {', '.join(dead)}")
                    return
                if window.index + 1 >= o.windows:
                    return
                window = Window(window.index + 1, 0.0, o.interval_s)
            due = math.ceil(o.rate * (now - start)) or 1
            if due > sent_total:
                count = due - sent_total
                stamp = now_iso()  # occurred_at = the burst's send time
                customers = self.rng.integers(0, len(t), size=count)
                burst = [
                    t.message(int(c), f"{window.tag}-{window.offered + i}", stamp)
                    for i, c in enumerate(customers)
                ]
                futures += await send_messages(producer, burst)
                window.offered += count
                sent_total = due
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    def _prune_done(self) -> None:
        """Drop finished sends and probes (re-raising a failed send), so that the
        harness's memory stays flat however long the soak."""
        for delivery in [d for d in self.deliveries if d.done()]:
            delivery.result()
        self.deliveries = [d for d in self.deliveries if not d.done()]
        for probe in [t for t in self.probes if t.done()]:
            probe.result()
        self.probes = [t for t in self.probes if not t.done()]

    @staticmethod
    def _decided(collector: DecisionCollector) -> int:
        return sum(n for tag, n in collector.arrivals.items() if tag.startswith("s"))

    def _progress(self, window: Window) -> None:
        rss = sum(v["rss_mb"] for n, v in window.processes.items() if n not in UNJUDGED)
        self.say(
            f"[soak] t={window.t_end_s:5.0f}s offered {window.offered_per_s:5.0f}/s "
            f"decided {window.decided_per_s:5.0f}/s backlog {window.backlog:5d} "
            f"services RSS {rss:7.1f} MB, broker {window.rss(BROKER):6.1f} MB"
        )

    # -- accounting -----------------------------------------------------------------
    def account(self, collector: DecisionCollector, *, final: bool) -> None:
        """Account for every closed window whose candidates are all decided (at the
        end, ``final``: every window, the rest missing), then drop its decisions from
        the collector so a long soak's harness stays flat. A window is never given up
        on during the run: an overloaded pipeline decides late, not never."""
        keep = []
        for window in self.pending:
            if not (final or collector.arrivals[window.tag] >= window.offered):
                keep.append(window)
                continue
            ids = [f"{window.tag}-{i}" for i in range(window.offered)]
            seen: list[Seen | None] = [collector.seen.pop(e, None) for e in ids]
            found = [s for s in seen if s is not None]
            window.missing_ids = {e for e, s in zip(ids, seen, strict=True) if s is None}
            window.accounting = Accounting.of(seen).__dict__
            window.decided_ms = percentiles_ms(
                [parse_ts(s.decided_at) - parse_ts(s.occurred_at) for s in found]
            )
            window.received_ms = percentiles_ms(
                [s.received - parse_ts(s.occurred_at) for s in found]
            )
            window.final = True
        self.pending = keep

    async def drain(self, collector: DecisionCollector) -> None:
        """Until every offered candidate is decided, or no decision came for a while."""
        o = self.options
        started = last_change = time.monotonic()
        expected = sum(w.offered for w in self.result.windows)
        count = self._decided(collector)
        while count < expected:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if self._decided(collector) != count:
                count, last_change = self._decided(collector), now
            if now - last_change > o.idle_timeout_s + o.deadline_ms / 1000:
                break
        self.result.drain_s = time.monotonic() - started
        self.account(collector, final=True)

    def leftovers(self, collector: DecisionCollector) -> None:
        """Decisions still in the collector belong to accounted windows: second copies,
        or candidates the drain gave up on that were decided after all."""
        missing = {e for w in self.result.windows for e in w.missing_ids}
        for event_id in collector.seen:
            if not tag_of(event_id).startswith("s"):
                continue
            if event_id in missing:
                self.result.late += 1
            else:
                self.result.duplicates_late += 1

    def problems(self) -> list[str]:
        a = self.result.accounting
        out = []
        if a["missing"]:
            late = f" ({a['late']} of them decided later)" if a["late"] else ""
            out.append(f"soak: {a['missing']} of {a['expected']} candidates got no decision{late}")
        if a["conflicting"]:
            out.append(f"soak: {a['conflicting']} candidates got conflicting decisions")
        if a["decided"] and a["scored"] < a["decided"]:
            out.append(f"soak: {a['decided'] - a['scored']} candidates decided without a score")
        dlq = max((w.dlq for w in self.result.windows if w.dlq is not None), default=0)
        if dlq:
            out.append(f"soak: {dlq} records dead-lettered")
        return out

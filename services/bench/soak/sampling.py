"""One sampling window of a soak (:class:`Window`), and what ``/proc`` says at its end
(:class:`WindowSampler`): per process (summed over its process group) resident memory,
the heap's share and the cores it used since the last sample; the whole machine's busy
cores and the share that is neither the pipeline's nor the harness's; the load average."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from services.bench.probes import ProcessSampler, machine_busy_s


@dataclass
class Window:
    """One sampling interval: what was offered in it, and the state at its end."""

    index: int
    t_end_s: float  # since the load started, when the window was sampled
    span_s: float
    offered: int = 0
    decisions: int = 0  # first decisions read during the window, any window's candidates
    backlog: int = 0  # offered so far minus decided so far, at the sample
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    machine_cores: float | None = None  # busy cores, whole machine
    other_cores: float | None = None  # of which not the pipeline's nor the harness's
    load_1m: float | None = None
    records: int | None = None
    dlq: int | None = None
    lag: dict[str, int | None] = field(default_factory=dict)
    probe_error: str | None = None  # why records, dlq or lag are missing
    decided_ms: dict[str, float] = field(default_factory=dict)
    received_ms: dict[str, float] = field(default_factory=dict)
    accounting: dict[str, Any] = field(default_factory=dict)
    missing_ids: set[str] = field(default_factory=set)
    final: bool = False

    @property
    def tag(self) -> str:
        return f"s{self.index}"

    @property
    def offered_per_s(self) -> float:
        return self.offered / self.span_s if self.span_s > 0 else math.nan

    @property
    def decided_per_s(self) -> float:
        return self.decisions / self.span_s if self.span_s > 0 else math.nan

    def rss(self, name: str) -> float:
        return self.processes.get(name, {}).get("rss_mb", math.nan)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("missing_ids")
        out.pop("final")
        out["offered_per_s"] = self.offered_per_s
        out["decided_per_s"] = self.decided_per_s
        return out


class WindowSampler:
    """Reads the processes and the machine from ``/proc`` at each window's end, and the
    cores each used since the previous read."""

    def __init__(self, processes: ProcessSampler) -> None:
        self.processes = processes
        self.last_cpu: dict[str, float] = {}
        self.last_busy: float | None = None

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Every process's sample now (the memory before the load)."""
        return {n: asdict(s) for n, s in self.processes.read().items()}

    def begin(self) -> None:
        """The CPU counters the first window's cores are measured from."""
        self.last_cpu = {n: s.cpu_s for n, s in self.processes.read().items()}
        self.last_busy = machine_busy_s()

    def sample(self, window: Window) -> None:
        """Fill ``window``'s processes, machine cores and load; its ``span_s`` is set."""
        samples = self.processes.read()
        for name, s in samples.items():
            cores = (s.cpu_s - self.last_cpu.get(name, s.cpu_s)) / window.span_s
            window.processes[name] = {**asdict(s), "cores": cores}
        self.last_cpu = {n: s.cpu_s for n, s in samples.items()}
        busy = machine_busy_s()
        if busy is not None and self.last_busy is not None:
            window.machine_cores = (busy - self.last_busy) / window.span_s
            ours = sum(p["cores"] for p in window.processes.values())
            window.other_cores = max(0.0, window.machine_cores - ours)
        self.last_busy = busy
        window.load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

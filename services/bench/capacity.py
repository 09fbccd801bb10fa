"""CPU per candidate per service, against the crypto floor, and the capacity plan
(``fedscreen bench --plan RATE``): pure arithmetic on what one federated bench run
measured, so that a plan can be made again from the run's JSON (``--from``).

Where the numbers come from (all from the federated throughput phase of one run):

- CPU seconds per process, from /proc, summed over each service's process group
  (``stats.CpuMeter``), divided by the candidates decided in the phase;
- the partners' re-randomisation factors: the flood starts with full pools, so the
  factors it drew and did not replace were computed before the phase; a sustained rate
  pays for them, so the plan adds them per partner at the micro-benchmark's cost of one
  uniform ``r^n`` (same run);
- records per candidate and their mean size per topic: end offsets before and after
  the phase, sizes read back from a sample (``probes.topic_traffic``);
- the crypto floor: the micro-benchmark's fragment path (both partners' fragments and
  the bank's decryption) per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

BROKER = "broker (tansu)"
HARNESS = "bench (load+collector)"
PARTNER_PREFIX = "partner-"
NOT_IN_PIPELINE = (HARNESS, "receiver")
"""Measured, but not the product: the load generator and the demo campaign tool."""
SCALES_PER_PARTITION = ("intake", "prescreen", "webhooks")
"""Consumers in a group, so one instance per partition at most. Partners scale by
replicas that each read every request partition (the shared ledger's claim picks the one
that answers): their instance count does not bound the partitions."""


class PlanError(ValueError):
    """A results file (or run) that a plan cannot be made from; one line, says why."""


@dataclass(frozen=True)
class ServiceCpu:
    name: str
    cpu_s: float  # in the measured phase, every thread
    us_per_candidate: float  # measured, serving path: (cpu_s - pool_cpu_s) / candidates
    pool_us_per_candidate: float = 0.0
    """Partners: the uniform factors, computed ahead and off the serving path: the pool
    thread's CPU in the phase, plus the factors drawn from the pool filled before the
    phase (and not replaced in it) at the micro-benchmark's cost."""
    pool_cpu_s: float = 0.0  # of cpu_s: the factor-pool threads

    @property
    def sustained_us(self) -> float:
        """What one candidate costs this service at a rate it sustains indefinitely."""
        return self.us_per_candidate + self.pool_us_per_candidate

    @property
    def scales_out(self) -> bool:
        return self.name.startswith(PARTNER_PREFIX) or self.bound_by_partitions

    @property
    def bound_by_partitions(self) -> bool:
        return self.name in SCALES_PER_PARTITION


@dataclass(frozen=True)
class CpuPerCandidate:
    decided: int
    services: dict[str, ServiceCpu]  # every pipeline process, the broker among them
    crypto_floor_us: float | None  # the micro-benchmark's fragment path, same run
    harness_us: float | None = None  # the load generator: reported, never summed
    unscored: int = 0  # decided without the partners' scores (a missed deadline)
    factor_floor_us: float | None = None
    """The micro-benchmark's uniform factors per candidate (every partner's), same run."""

    @property
    def pipeline_us(self) -> float:
        """All services and the broker on their serving paths (the issue's "pipeline
        CPU"); like the crypto floor, without the partners' factors computed ahead."""
        return sum(s.us_per_candidate for s in self.services.values())

    @property
    def pool_us(self) -> float:
        """The partners' factors, per candidate (computed ahead, in their pools)."""
        return sum(s.pool_us_per_candidate for s in self.services.values())

    @property
    def ratio(self) -> float | None:
        """Pipeline CPU per candidate over the crypto floor, neither with the factors
        (target <= 2)."""
        if self.crypto_floor_us is None or not self.crypto_floor_us > 0:
            return None
        return self.pipeline_us / self.crypto_floor_us

    @property
    def ratio_with_factors(self) -> float | None:
        """The same with the factors on both sides: what every candidate costs, computed
        ahead or not, over the crypto's own share of it."""
        if self.ratio is None or self.factor_floor_us is None or not self.pool_us:
            return None
        assert self.crypto_floor_us is not None
        return (self.pipeline_us + self.pool_us) / (self.crypto_floor_us + self.factor_floor_us)

    def to_json(self) -> dict[str, Any]:
        return {
            "decided": self.decided,
            "services": {
                n: {**asdict(s), "sustained_us": s.sustained_us} for n, s in self.services.items()
            },
            "pipeline_us": self.pipeline_us,
            "crypto_floor_us": self.crypto_floor_us,
            "ratio": self.ratio,
            "pool_us": self.pool_us,
            "factor_floor_us": self.factor_floor_us,
            "ratio_with_factors": self.ratio_with_factors,
            "harness_us": self.harness_us,
            "unscored": self.unscored,
        }


def cpu_per_candidate(
    cpu: Mapping[str, Mapping[str, float]],
    decided: int,
    *,
    crypto_floor_us: float | None = None,
    pool_drawn: Mapping[str, int] | None = None,
    factor_ms: float | None = None,
    scored: int | None = None,
    factor_floor_us: float | None = None,
) -> CpuPerCandidate:
    """``cpu``: CPU seconds per process name in the phase (``CpuMeter.read()``);
    ``pool_drawn``: factors each partner drew from its pool and did not replace, by
    partner name (without the ``partner-`` prefix); ``factor_ms``: one factor's CPU."""
    if decided < 1:
        raise PlanError("no candidate was decided in the measured phase")
    services: dict[str, ServiceCpu] = {}
    for name, numbers in cpu.items():
        if name in NOT_IN_PIPELINE:
            continue
        cpu_s = float(numbers["cpu_s"])
        # The factor-pool threads are not on the serving path (the crypto floor leaves
        # the factors out too): they go with the pool's factors, not the pipeline's CPU.
        # Results of a bench before threads were told apart have none.
        pool_s = min(cpu_s, float(numbers.get("pool_cpu_s", 0.0)))
        if name.startswith(PARTNER_PREFIX) and pool_drawn and factor_ms is not None:
            drawn = max(0, pool_drawn.get(name.removeprefix(PARTNER_PREFIX), 0))
            pool_ahead_s = drawn * factor_ms / 1e3
        else:
            pool_ahead_s = 0.0
        services[name] = ServiceCpu(
            name,
            cpu_s,
            (cpu_s - pool_s) / decided * 1e6,
            (pool_s + pool_ahead_s) / decided * 1e6,
            pool_s,
        )
    harness = cpu.get(HARNESS)
    return CpuPerCandidate(
        decided,
        services,
        crypto_floor_us,
        float(harness["cpu_s"]) / decided * 1e6 if harness else None,
        max(0, decided - scored) if scored is not None else 0,
        factor_floor_us,
    )


@dataclass(frozen=True)
class TopicLoad:
    topic: str
    per_candidate: float  # records written per candidate decided
    mean_bytes: float | None  # key + value + headers


def topic_loads(traffic: Mapping[str, Mapping[str, Any]], decided: int) -> list[TopicLoad]:
    """``traffic``: per topic, ``messages`` and ``mean_bytes`` (``TopicTraffic``)."""
    if decided < 1:
        raise PlanError("no candidate was decided in the measured phase")
    return [
        TopicLoad(
            topic,
            int(t["messages"]) / decided,
            None if t.get("mean_bytes") is None else float(t["mean_bytes"]),
        )
        for topic, t in sorted(traffic.items())
    ]


@dataclass(frozen=True)
class Assumptions:
    """The model's knobs, printed with every plan."""

    headroom: float = 0.7
    """Plan every instance to run at most this share of its cores busy."""
    instance_cores: float = 1.0
    """Cores one instance can use: one Python process, one event loop (the partners'
    worker threads are mostly under the GIL too)."""
    partition_mb_s: float = 10.0
    """Writes one partition takes, MB/s: a common Kafka sizing figure, not measured here
    (the embedded broker says nothing about a Kafka cluster)."""

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= 1:
            raise PlanError("the headroom must be in (0, 1]")
        if not self.instance_cores > 0 or not self.partition_mb_s > 0:
            raise PlanError("cores per instance and MB/s per partition must be positive")


@dataclass(frozen=True)
class ServicePlan:
    name: str
    us_per_candidate: float  # sustained
    busy_cores: float  # at the target rate
    cores: float  # busy_cores / headroom
    instances: int


@dataclass(frozen=True)
class TopicPlan:
    topic: str
    messages_per_s: float
    mb_per_s: float | None
    partitions_for_bytes: int | None


@dataclass(frozen=True)
class CapacityPlan:
    rate: float
    assumptions: Assumptions
    services: list[ServicePlan]
    broker_busy_cores: float | None  # the embedded broker's, scaled: indicative only
    topics: list[TopicPlan]
    partitions: int
    partitions_reason: str
    notes: list[str] = field(default_factory=list)

    @property
    def bank_cores(self) -> float:
        """The bank's services (partners run in their own infrastructure)."""
        return sum(s.cores for s in self.services if not s.name.startswith(PARTNER_PREFIX))

    def partner_cores(self) -> dict[str, float]:
        return {
            s.name.removeprefix(PARTNER_PREFIX): s.cores
            for s in self.services
            if s.name.startswith(PARTNER_PREFIX)
        }

    @property
    def messages_per_s(self) -> float:
        return sum(t.messages_per_s for t in self.topics)

    @property
    def mb_per_s(self) -> float:
        return sum(t.mb_per_s or 0.0 for t in self.topics)

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "assumptions": asdict(self.assumptions),
            "services": [asdict(s) for s in self.services],
            "bank_cores": self.bank_cores,
            "partner_cores": self.partner_cores(),
            "broker_busy_cores_embedded": self.broker_busy_cores,
            "partitions": self.partitions,
            "partitions_reason": self.partitions_reason,
            "topics": [asdict(t) for t in self.topics],
            "messages_per_s": self.messages_per_s,
            "mb_per_s": self.mb_per_s,
            "notes": self.notes,
        }


def instances_for(busy_cores: float, assumptions: Assumptions) -> int:
    """Instances so that none is busier than ``headroom`` of its cores (at least one)."""
    per_instance = assumptions.headroom * assumptions.instance_cores
    # A hair under an exact multiple must not round up to one more instance.
    return max(1, math.ceil(busy_cores / per_instance - 1e-9))


def plan(
    cpu: CpuPerCandidate,
    traffic: Sequence[TopicLoad],
    rate: float,
    assumptions: Assumptions | None = None,
) -> CapacityPlan:
    """Cores and instances per service, partitions and broker throughput for ``rate``
    candidates/s, scaling each service linearly from its measured CPU per candidate."""
    a = assumptions or Assumptions()
    if not rate > 0 or not math.isfinite(rate):
        raise PlanError(f"the target rate must be a positive number of candidates/s, not {rate}")
    services = []
    broker: float | None = None
    for service in cpu.services.values():
        busy = rate * service.sustained_us / 1e6
        if service.name == BROKER:
            broker = busy
            continue
        instances = instances_for(busy, a) if service.scales_out else 1
        services.append(
            ServicePlan(service.name, service.sustained_us, busy, busy / a.headroom, instances)
        )
    services.sort(key=lambda s: s.name)
    topics = []
    for load in traffic:
        mb = None if load.mean_bytes is None else rate * load.per_candidate * load.mean_bytes / 1e6
        topics.append(
            TopicPlan(
                load.topic,
                rate * load.per_candidate,
                mb,
                None if mb is None else max(1, math.ceil(mb / a.partition_mb_s - 1e-9)),
            )
        )
    most = max(
        (s for s in services if s.name in SCALES_PER_PARTITION),
        key=lambda s: s.instances,
        default=None,
    )
    partitions, reason = 1, "no service needs more than one instance"
    if most is not None and most.instances > 1:
        partitions, reason = most.instances, f"{most.name} needs {most.instances} instances"
    widest = max(topics, key=lambda t: t.partitions_for_bytes or 0, default=None)
    if widest is not None and (widest.partitions_for_bytes or 0) > partitions:
        partitions = widest.partitions_for_bytes or partitions
        reason = (
            f"{widest.topic} writes {widest.mb_per_s:.1f} MB/s "
            f"at {a.partition_mb_s:g} MB/s per partition"
        )
    notes = []
    if not any(s.pool_us_per_candidate for s in cpu.services.values()):
        notes.append(
            "partners' CPU does not include re-randomisation factors drawn from their "
            "pools (no micro-benchmark in the run, or no factor drawn)"
        )
    if cpu.unscored:
        notes.append(
            f"{cpu.unscored} of {cpu.decided} candidates were decided without the partners' "
            "scores (deadline): they cost less, so the plan may be short; measure again"
        )
    if any(t.mean_bytes is None for t in traffic):
        notes.append("some topics' record sizes were not read: their MB/s is missing")
    return CapacityPlan(rate, a, services, broker, topics, partitions, reason, notes)


ASSUMPTIONS_TEXT = (
    "each service scales linearly with instances, at the CPU per candidate measured in "
    "this run (all services shared the machine's cores while measured)",
    "one instance uses at most {instance_cores:g} core(s); each runs at <= {headroom:.0%} busy",
    "intake, prescreen and webhooks scale per partition (a consumer group gives each "
    "instance whole partitions); every topic has the same partition count (the joins are "
    "co-partitioned); a partner scales by replicas on one shared store, each reading "
    "every request partition, so its replicas do not bound the partitions "
    "(docs/runbook.md#scale-a-partner-and-roll-it)",
    "partners' CPU includes every re-randomisation factor the run used: what their pool "
    "threads computed during it, and those drawn from the pools filled before it at the "
    "micro-benchmark's cost per factor; partners run on their own cores",
    "the broker is not in the services' cores: its MB/s are payload writes (key + value "
    "+ headers) before replication and Kafka's framing; each consumer group reads them "
    "again; {partition_mb_s:g} MB/s of writes per partition is an assumption, not measured",
)


def assumption_lines(assumptions: Assumptions) -> list[str]:
    return [line.format(**asdict(assumptions)) for line in ASSUMPTIONS_TEXT]


# -- from a run's results (the bench's JSON) ------------------------------------------
@dataclass(frozen=True)
class PlanInputs:
    cpu: CpuPerCandidate
    traffic: list[TopicLoad]
    machine: str  # where it was measured, for the printout


def inputs_from_results(results: Mapping[str, Any]) -> PlanInputs:
    """What a plan needs, from ``fedscreen bench``'s results (as written to JSON)."""
    pipeline = results.get("pipeline") or {}
    fed = (pipeline.get("modes") or {}).get("federated")
    if not fed:
        raise PlanError("the results have no federated pipeline run (run with --modes federated)")
    phase = fed.get("throughput") or {}
    cpu = phase.get("cpu")
    traffic = phase.get("traffic")
    accounting = phase.get("accounting") or {}
    decided, scored = accounting.get("decided"), accounting.get("scored")
    if not cpu or not isinstance(decided, int):
        raise PlanError("the federated run has no CPU figures (results of an older bench?)")
    if traffic is None:
        raise PlanError("the federated run has no per-topic traffic (results of an older bench?)")
    micro = results.get("micro") or {}
    pools = phase.get("factor_pools") or {}
    start, end = pools.get("ready_at_start") or {}, pools.get("ready_at_end") or {}
    drawn = {p: int(start[p]) - int(end.get(p, 0)) for p in start}
    measured = cpu_per_candidate(
        cpu,
        decided,
        crypto_floor_us=micro.get("fragment_us_per_candidate"),
        pool_drawn=drawn,
        factor_ms=micro.get("uniform_factor_ms"),
        scored=scored if isinstance(scored, int) else None,
        factor_floor_us=micro.get("fragment_factor_us_per_candidate"),
    )
    info = results.get("machine") or {}
    machine = (
        f"{info.get('cpu_model', '?')}, {info.get('cpu_count', '?')} CPUs, {info.get('date', '?')}"
    )
    return PlanInputs(measured, topic_loads(traffic, decided), machine)

"""The curious bank: it follows the protocol, keeps everything it holds (its private
key, every message it can read, its own computations: services/training/trace.py)
and tries to recover each partner's per-row bin vectors from them.

Every score the bank decrypts is an equation in the partners' bins, ``o = sum over the
partners in the sum, sum_j T[j][b_j]``. The attack writes down every equation whose
table it holds and solves them together (services/audit/bins.py): exact
meet-in-the-middle where the partners' bin vectors can be enumerated in halves, else a
dictionary of the likeliest vectors. What decides the outcome is which tables it holds:

- :func:`bank_knowledge`: what the bank of this protocol holds. It never sees a
  direction table or a weight: the partners compute them under encryption. The only
  per-bin values it ever decrypts are the partners' masked truncations, which the
  attack tries as tables anyway (they are useless: statistically masked).
- :func:`legacy_knowledge`: what the bank of the earlier protocol held, rebuilt
  exactly from the same run (the direction tables it computed itself from the
  histograms it decrypted, and each partner's scores decrypted on their own). The
  tests run the attack against it first, to show the attack is real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas import BankBundle, EncryptedFragment, PendingBatch
from services.audit.bins import (
    BudgetExceeded,
    Equations,
    baseline_fraction,
    dictionary,
    marginals,
    mitm,
    recovered_fraction,
)
from services.audit.transcript import read_topic
from services.kernel.config import KafkaSettings
from services.kernel.crypto.blind import direction_multipliers
from services.kernel.crypto.codec import b64_to_int
from services.kernel.crypto.packing import PackingOverflowError, unpack
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.kafka.topics import FRAGMENTS, PENDING
from services.prescreen.joiner import KIND_HEADER
from services.training.trace import TrainingTrace

Table = list[np.ndarray]
"""One equation's values, feature by feature (integers held as float64: exact below 2^53)."""


@dataclass(frozen=True)
class PartnerTruth:
    """The harness's view of one partner (never the bank's): its bin vector for every
    row, in the session's list order."""

    name: str
    bins: np.ndarray
    bins_per_feature: list[int]


@dataclass
class Knowledge:
    """Equations the attacker can write: for each, the partners it sums over, one table
    per partner (per feature), the observed value per row, and the tolerance."""

    label: str
    partners: list[list[str]] = field(default_factory=list)
    tables: list[dict[str, Table]] = field(default_factory=list)
    observations: list[np.ndarray] = field(default_factory=list)
    tolerance: list[float] = field(default_factory=list)
    marginals: dict[str, list[np.ndarray]] = field(default_factory=dict)
    """Per partner, the bin frequencies the attacker knows (the legacy bank read them off
    its histograms); empty when it knows none."""
    notes: list[str] = field(default_factory=list)

    def add(
        self, partners: list[str], tables: dict[str, Table], observed: np.ndarray, tol: float
    ) -> None:
        self.partners.append(partners)
        self.tables.append(tables)
        self.observations.append(np.asarray(observed, dtype=np.float64))
        self.tolerance.append(tol)


@dataclass(frozen=True)
class Recovery:
    partner: str
    rows: int
    recovered_fraction: float
    baseline_fraction: float
    equations: int
    solver: str


def exact_directions(trace: TrainingTrace, truth: PartnerTruth, round_index: int) -> Table:
    """D_e for every bin of the partner in one round, exactly as the partner computed it
    under encryption (the same integer arithmetic): what the legacy bank held."""
    blind = trace.blind
    # The integers the bank encrypted: round(g * 2^gradient_bits).
    g = np.rint(trace.gradients[round_index] * float(1 << blind.gradient_bits))
    counts = [
        int(c)
        for j, size in enumerate(truth.bins_per_feature)
        for c in np.bincount(truth.bins[:, j], minlength=size)
    ]
    q = direction_multipliers(blind, counts)
    table, flat = [], 0
    for j, size in enumerate(truth.bins_per_feature):
        sums = np.bincount(truth.bins[:, j], weights=g, minlength=size)
        table.append(np.array([-round(sums[b]) * q[flat + b] for b in range(size)], dtype=float))
        flat += size
    return table


def _score(table: Table, bins: np.ndarray) -> np.ndarray:
    total: np.ndarray = np.sum([table[j][bins[:, j]] for j in range(bins.shape[1])], axis=0)
    return total


def legacy_knowledge(trace: TrainingTrace, truths: Sequence[PartnerTruth]) -> Knowledge:
    """The earlier protocol's bank: per round and partner, the direction table it chose
    and that partner's own per-row scores under it, and the bin frequencies its
    histograms showed. Checked against the real run: the partners' exact scores must
    add up to what the bank decrypted, row for row."""
    knowledge = Knowledge("legacy protocol: the bank chose the directions")
    for r in range(len(trace.scores)):
        tables = {t.name: exact_directions(trace, t, r) for t in truths}
        per_partner = {t.name: _score(tables[t.name], t.bins) for t in truths}
        total = np.sum(list(per_partner.values()), axis=0)
        if not np.array_equal(total.astype(np.int64), trace.scores[r]):
            raise ValueError(f"round {r + 1}: the rebuilt directions do not match the run")
        for t in truths:
            knowledge.add([t.name], {t.name: tables[t.name]}, per_partner[t.name], 0.5)
    for t in truths:
        knowledge.marginals[t.name] = marginals(t.bins, t.bins_per_feature)
    return knowledge


def bank_knowledge(trace: TrainingTrace) -> Knowledge:
    """This protocol's bank: the per-row sums over every partner it decrypted each round,
    and no table for any of them. It decrypted one per-bin value per partner, the masked
    truncations of the final weights; the attack takes them for the final weights (as if
    the masks were not there) against the final aggregate score of every row, which is
    all it could try with them."""
    knowledge = Knowledge("this protocol: the bank holds no partner table")
    names = sorted(trace.bins_per_feature)
    final = np.zeros(len(trace.ids))
    for r, step in enumerate(trace.steps[: trace.best_round]):
        final = final + step * trace.scores[r].astype(np.float64)
    shift = trace.blind.truncation_bits
    bound = 1 << trace.blind.bound_bits
    tables: dict[str, Table] = {}
    for name in names:
        masked = trace.truncated.get(name)
        if masked is None:
            continue
        values = [(x - bound) >> shift for x in masked]
        rows, start = [], 0
        for count in trace.bins_per_feature[name]:
            rows.append(np.array(values[start : start + count], dtype=float))
            start += count
        tables[name] = rows
    if set(tables) == set(names):
        knowledge.add(
            names,
            tables,
            np.floor(final / (1 << shift)),
            1.0 * sum(len(trace.bins_per_feature[n]) for n in names),
        )
        knowledge.notes.append("final scores against the masked truncations taken as weights")
    knowledge.notes.append("no direction table: the partners computed them under encryption")
    return knowledge


def recover(
    knowledge: Knowledge,
    truths: Sequence[PartnerTruth],
    *,
    budget: int = 1 << 22,
    dictionary_size: int = 1 << 20,
) -> list[Recovery]:
    """Per partner: solve every equation the attacker holds that involves only partners
    it holds tables for, together; rows with identical equations are solved once."""
    by_name = {t.name: t for t in truths}
    out = []
    for truth in truths:
        # The equations touching this partner, with every partner in them known.
        involved = [
            e
            for e, names in enumerate(knowledge.partners)
            if truth.name in names and all(n in knowledge.tables[e] for n in names)
        ]
        group = sorted({n for e in involved for n in knowledge.partners[e]})
        if not involved:
            out.append(
                Recovery(
                    truth.name,
                    len(truth.bins),
                    0.0,
                    baseline_fraction(truth.bins),
                    0,
                    "none: no equation with known tables",
                )
            )
            continue
        widths = [len(by_name[n].bins_per_feature) for n in group]
        tables = []
        for e in involved:
            table: Table = []
            for n in group:
                if n in knowledge.partners[e]:
                    table.extend(knowledge.tables[e][n])
                else:
                    table.extend(np.zeros(b) for b in by_name[n].bins_per_feature)
            tables.append(table)
        eq = Equations(
            tables,
            np.column_stack([knowledge.observations[e] for e in involved]),
            np.array([knowledge.tolerance[e] for e in involved]),
        )
        solver = "meet in the middle"
        try:
            guess = mitm(eq, budget=budget)
        except BudgetExceeded:
            if not all(n in knowledge.marginals for n in group):
                guess = np.full((len(truth.bins), sum(widths)), -1, dtype=np.int64)
                solver = "none: too many vectors to enumerate, and no prior"
            else:
                prior = [p for n in group for p in knowledge.marginals[n]]
                guess = dictionary(eq, prior, size=dictionary_size)
                solver = f"dictionary of the {dictionary_size} likeliest vectors"
        start = sum(widths[: group.index(truth.name)])
        mine = guess[:, start : start + len(truth.bins_per_feature)]
        out.append(
            Recovery(
                truth.name,
                len(truth.bins),
                recovered_fraction(mine, truth.bins),
                baseline_fraction(truth.bins),
                len(involved),
                solver,
            )
        )
    return out


# -- serving ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingView:
    """Per model version, the aggregate partner score the bank decrypted for each
    customer it screened (in units of 2^-frac_bits), and the partners summed."""

    scores: dict[str, dict[str, int]]
    partners: dict[str, list[str]]


async def serving_view(
    kafka: KafkaSettings, private_keys: Mapping[str, PrivateKey], bundles: Sequence[BankBundle]
) -> ServingView:
    """What the bank can read back: its pending records and every fragment on
    ``fed.fragments.v1``, multiplied per batch and decrypted with its own keys, as
    prescreen does (plus every batch prescreen decided without some partner, which
    decodes to nothing)."""
    by_version = {b.model_version: b for b in bundles}
    pending = {}
    for record in await read_topic(kafka, PENDING):
        batch = PendingBatch.model_validate_json(record.value)
        pending[batch.batch_id] = batch
    fragments: dict[str, list[EncryptedFragment]] = {}
    for record in await read_topic(kafka, FRAGMENTS):
        if any(key == KIND_HEADER for key, _ in record.headers):
            continue  # prescreen's own deadline ticks
        fragment = EncryptedFragment.model_validate_json(record.value)
        fragments.setdefault(fragment.batch_id, []).append(fragment)
    scores: dict[str, dict[str, int]] = {}
    partners: dict[str, list[str]] = {}
    for batch_id, batch in pending.items():
        bundle = by_version.get(batch.model_version)
        answers = {f.partner: f for f in fragments.get(batch_id, []) if f.mode == "paillier"}
        if bundle is None or set(answers) != set(batch.partners):
            continue
        key = private_keys[bundle.key_id]
        product = 1
        for fragment in answers.values():
            product = product * b64_to_int(fragment.ciphertext or "") % key.public.nsquare
        features = {c.partner: len(c.bins_per_feature) for c in bundle.partners}
        try:
            slots = unpack(
                bundle.packing, int(key.decrypt(product)), len(batch.candidates), features
            )
        except PackingOverflowError:
            continue
        unit = 1 << bundle.packing.frac_bits
        seen = scores.setdefault(batch.model_version, {})
        for candidate, slot in zip(batch.candidates, slots, strict=True):
            seen[candidate.customer_id] = round(slot.partner_score * unit)
        partners[batch.model_version] = sorted(batch.partners)
    return ServingView(scores, partners)


def serving_knowledge(
    view: ServingView,
    customers: Sequence[str],
    weights: Mapping[str, Mapping[str, Table]],
    label: str,
) -> Knowledge:
    """One equation per model version, for customers screened under every version:
    their decrypted aggregate score against the versions' weight tables (in units of
    2^-frac_bits) where the attacker holds them. ``weights`` is empty for this
    protocol's bank, whose bundles carry none; the legacy bank bundle carried them."""
    knowledge = Knowledge(label)
    for version, scores in sorted(view.scores.items()):
        tables = dict(weights.get(version, {}))
        if not tables:
            knowledge.notes.append(f"{version}: no weight table held")
            continue
        observed = np.array([scores[c] for c in customers], dtype=float)
        tolerance = 0.5 + sum(len(t) for t in tables.values())
        knowledge.add(view.partners[version], tables, observed, tolerance)
    return knowledge

"""``fedscreen evaluate --audit``: the attacks of services/audit on the very run being
evaluated, with the bank's key, and their verdicts (services/audit/report.py).

- the curious bank, per partner: bin recovery from every training round's scores, one
  round at a time (subset-sum per round) and all together with the final scores (the
  solver across rounds and versions), with the tables it holds (``bank_knowledge``);
- a Kafka principal, per partner: forged requests, bundles and training sessions
  written to the running partner (``forger``).

The curious partner's attacks need a serving pipeline or customers the partner does not
hold, which an evaluation has neither of: tests/privacy runs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import PackingSpec, TrainStart
from schemas.training import TO_PARTNER
from services.audit.curious_bank import Knowledge, PartnerTruth, bank_knowledge, recover
from services.audit.forger import attempt, forgeries
from services.audit.report import AttackResult
from services.audit.transcript import read_messages
from services.kernel.config import KafkaSettings
from services.kernel.crypto.tokens import load_token_source
from services.kernel.kafka.topics import training_topic
from services.partner.store import FeatureStore
from services.training.trace import TrainingTrace

BANK = "curious bank"
KAFKA = "Kafka principal"


def truths(
    trace: TrainingTrace, token_dir: Path, stores: dict[str, Path], session: str
) -> list[PartnerTruth]:
    """Every partner's bins for every listed row, from its own store and the session's
    binning: the audit sees every party, as no service does."""
    out = []
    for name, db in stores.items():
        tokens = load_token_source(token_dir, name, allow_hmac=True)
        store = FeatureStore(db)
        try:
            binning = store.binning(session)
            if binning is None:
                raise ValueError(f"partner {name} holds no binning {session}")
            values, _ = store.lookup([tokens.token(i) or "-" * 43 for i in trace.ids])
        finally:
            store.close()
        out.append(PartnerTruth(name, binning.transform(values), binning.bins_per_feature))
    return out


def _single(knowledge: Knowledge, e: int) -> Knowledge:
    return dataclasses.replace(
        knowledge,
        partners=[knowledge.partners[e]],
        tables=[knowledge.tables[e]],
        observations=[knowledge.observations[e]],
        tolerance=[knowledge.tolerance[e]],
    )


def bank_attacks(
    trace: TrainingTrace, partner_truths: Sequence[PartnerTruth]
) -> list[AttackResult]:
    knowledge = bank_knowledge(trace)
    how = "; ".join(knowledge.notes)
    rounds = len(trace.scores)
    joint = {r.partner: r for r in recover(knowledge, partner_truths)}
    per_round = {t.name: 0.0 for t in partner_truths}
    for e in range(len(knowledge.partners)):
        for r in recover(_single(knowledge, e), partner_truths):
            per_round[r.partner] = max(per_round[r.partner], r.recovered_fraction)
    out = []
    for truth in partner_truths:
        result = joint[truth.name]
        out.append(
            AttackResult(
                "training: subset-sum per round",
                BANK,
                f"{truth.name}: per-row bin vector",
                result.rows,
                per_round[truth.name],
                result.baseline_fraction,
                f"{rounds} rounds of decrypted per-row scores (sums over every partner); "
                f"{how}; solver: {result.solver}",
            )
        )
        out.append(
            AttackResult(
                "training and serving: solver across rounds and versions",
                BANK,
                f"{truth.name}: per-row bin vector",
                result.rows,
                result.recovered_fraction,
                result.baseline_fraction,
                f"every equation it holds at once ({result.equations}); solver: {result.solver}",
            )
        )
    return out


async def forger_attacks(
    kafka: KafkaSettings,
    partners: Sequence[str],
    packing: PackingSpec,
    binning_id: str,
    signer: Ed25519PrivateKey,
) -> list[AttackResult]:
    """Against the running partners, with tokens the forger read off their training
    topics and a signing key that is not the bank's."""
    out = []
    for name in partners:
        starts = [
            m
            for m in map(TO_PARTNER.validate_json, await read_messages(kafka, training_topic(name)))
            if isinstance(m, TrainStart)
        ]
        tokens = starts[0].tokens[:20] if starts else []
        attempts = forgeries(name, tokens, signer, packing, binning_id, list(partners))
        outcomes = await attempt(kafka, name, attempts)
        accepted = sum(o.accepted for o in outcomes)
        refused = sum(o.dead_lettered for o in outcomes)
        out.append(
            AttackResult(
                "forged bank messages",
                KAFKA,
                f"{name}: acts on a message the bank did not send",
                len(outcomes),
                accepted / len(outcomes),
                0.0,
                f"{', '.join(o.name for o in outcomes)}; {refused} of {len(outcomes)} "
                "dead-lettered",
            )
        )
    return out

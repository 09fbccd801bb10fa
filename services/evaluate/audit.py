"""``fedscreen evaluate --audit``: runs services/audit's attacks on the evaluated run.

The forger writes to the partners while they are still up, right after training; the
curious bank's attacks work from what the bank held when training ended (its trace,
``fedscreen train --trace-dir``); the truth they are scored against comes from the
partners' own stores, which the evaluation, standing in for every party, can read.
"""

from __future__ import annotations

from pathlib import Path

from schemas import PartnerBundle
from services.audit.report import AttackResult, Audit
from services.audit.run import bank_attacks, forger_attacks, truths
from services.evaluate.spec import EvaluateSpec
from services.kernel.crypto.signing import new_signing_key
from services.kernel.kafka.broker import EmbeddedBroker
from services.stack.fixtures import Deployment
from services.training.trace import TrainingTrace


class Auditor:
    def __init__(self, spec: EvaluateSpec, deployment: Deployment, broker: EmbeddedBroker) -> None:
        self.spec = spec
        self.deployment = deployment
        self.broker = broker
        self.forged: list[AttackResult] = []

    async def forge(self, model_dir: Path) -> None:
        """With the partners up: forgeries signed by a key that is not the bank's."""
        bundle = PartnerBundle.model_validate_json(
            (model_dir / f"partner-{next(iter(self.spec.partners))}.json").read_text()
        )
        self.forged = await forger_attacks(
            self.broker.settings(),
            list(self.spec.partners),
            bundle.packing,
            bundle.binning_id,
            new_signing_key(),
        )

    def finish(self, model_dir: Path) -> Audit:
        trace = TrainingTrace.load(self.deployment.root / "bank" / "trace" / "trace.npz")
        session = f"train-{model_dir.name}"
        partner_truths = truths(
            trace, self.deployment.token_dir, dict(self.deployment.partner_dbs), session
        )
        audit = Audit(model_dir.name, list(self.spec.partners))
        audit.attacks.extend(bank_attacks(trace, partner_truths))
        audit.attacks.extend(self.forged)
        return audit

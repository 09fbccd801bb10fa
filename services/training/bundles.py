"""Turn a trained model into the bank bundle and one bundle per partner."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import BankBundle, PartnerBundle, PartnerScorecard, PolicyConfig
from services.kernel.crypto.packing import check_capacity
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.signing import signed
from services.training.trainer import Trained


def build_bundles(
    trained: Trained,
    key: PrivateKey,
    *,
    model_version: str,
    session_id: str,
    bank_features: list[str],
    policy: PolicyConfig,
    signing_key: Ed25519PrivateKey,
) -> tuple[BankBundle, dict[str, PartnerBundle]]:
    """The partner bundles carry no weights: each partner serves with the encrypted
    weights it kept from the session (``binning_id``). Each is signed with the bank's
    key: a partner trusts a Paillier key only inside a bundle that verifies."""
    packing = trained.packing
    partners = list(trained.bins_per_feature)
    check_capacity(packing, [len(trained.bins_per_feature[k]) for k in partners], key.public.bits)
    now = datetime.now(UTC)
    bank = BankBundle(
        model_version=model_version,
        created_at=now,
        key_id=key.key_id,
        public_key_n=key.public.to_b64(),
        packing=packing,
        bank_features=bank_features,
        partners=[
            PartnerScorecard(partner=k, bins_per_feature=trained.bins_per_feature[k])
            for k in partners
        ],
        booster=trained.booster.model_to_string(),
        stacked=trained.stacked,
        fallback_booster=trained.fallback.model_to_string(),
        policy=policy,
        metrics=trained.metrics,
    )
    bundles = {
        k: signed(
            PartnerBundle(
                model_version=model_version,
                created_at=now,
                partner=k,
                binning_id=session_id,
                key_id=key.key_id,
                public_key_n=key.public.to_b64(),
                packing=packing,
            ),
            signing_key,
        )
        for k in partners
    }
    return bank, bundles

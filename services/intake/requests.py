"""The bank's fragment requests for one batch: one per partner, each signed with the
bank's key and each carrying the digest of every participant's token list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import FragmentRequest
from services.kernel.crypto.masking import token_list_digest
from services.kernel.crypto.signing import sign


def fragment_requests(
    *,
    batch_id: str,
    model_version: str,
    created_at: datetime,
    deadline_at: datetime,
    tokens: Mapping[str, Sequence[str]],
    signing_key: Ed25519PrivateKey,
) -> dict[str, FragmentRequest]:
    """Every participant binds the same digests into its masks: asking the batch again
    with other tokens for any of them would give every participant fresh masks."""
    participants = sorted(tokens)
    digests = {partner: token_list_digest(tokens[partner]) for partner in participants}
    out = {}
    for partner in participants:
        # Built without validation (intake builds these on the hot path from values it
        # validated itself), then signed over the canonical bytes.
        request = FragmentRequest.model_construct(
            batch_id=batch_id,
            partner=partner,
            model_version=model_version,
            created_at=created_at,
            deadline_at=deadline_at,
            tokens=list(tokens[partner]),
            attempt=1,
            participants=participants,
            flags_only=False,
            token_digests=digests,
            signature="",
        )
        out[partner] = request.model_copy(
            update={"signature": sign(signing_key, request.signing_bytes())}
        )
    return out

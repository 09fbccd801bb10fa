"""Messages that cross the bank/partner boundary: only tokens and ciphertexts."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from schemas.common import (
    B64Bytes,
    B64Int,
    Ident,
    PartnerName,
    SignedMessage,
    Token,
    canonical_bytes,
)

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class FragmentRequest(SignedMessage):
    """``fed.requests.<partner>.v1`` (key: batch id): score these tokens, slot by slot.
    Signed by the bank (intake)."""

    SCHEMA_ID: ClassVar[str] = "fragment-request.v1"

    batch_id: Ident
    partner: PartnerName
    model_version: Ident
    created_at: AwareDatetime
    deadline_at: AwareDatetime
    tokens: list[Token] = Field(min_length=1, max_length=512, description="Slot s holds tokens[s].")
    attempt: int = Field(default=1, ge=1, le=16)
    participants: list[PartnerName] = Field(
        min_length=1,
        max_length=64,
        description="The partners asked for this batch and attempt: each masks its fragment "
        "pairwise with every other one, so only the product of all their fragments decrypts.",
    )
    flags_only: bool = Field(
        default=False,
        description="Only the blacklist fields. Partners refuse it (and any attempt but the "
        "first): the bank never asks a batch again.",
    )
    token_digests: dict[PartnerName, Sha256Hex] = Field(
        default_factory=dict,
        description="SHA-256 of each participant's token list (services.kernel.crypto."
        "masking.token_list_digest): every participant binds the same map into its masks, "
        "so the same batch asked again with other tokens for anyone gets fresh masks.",
    )


class EncryptedFragment(SignedMessage):
    """``fed.fragments.v1`` (key: batch id): one partner's answer for one batch.

    In ``paillier`` mode ``ciphertext`` packs, per slot, the partner's partial score
    (low field) and its blacklist hit (high field), re-randomised. ``plaintext`` mode
    exists only for the benchmark's crypto-off baseline and is refused unless the
    prescreen service is started in that mode.
    """

    SCHEMA_ID: ClassVar[str] = "fragment.v1"

    batch_id: Ident
    partner: PartnerName
    model_version: Ident
    key_id: Ident
    mode: Literal["paillier", "plaintext"] = "paillier"
    slot_count: int = Field(ge=1, le=512)
    ciphertext: B64Int | None = None
    plain_slots: list[int] | None = Field(default=None, max_length=512)
    attempt: int = Field(default=1, ge=1, le=16)
    participants: list[PartnerName] = Field(
        min_length=1,
        max_length=64,
        description="The request's participants, whose masks it carries.",
    )
    flags_only: bool = False
    signed_at: AwareDatetime

    @model_validator(mode="after")
    def _payload_matches_mode(self) -> EncryptedFragment:
        if self.mode == "paillier" and (self.ciphertext is None or self.plain_slots is not None):
            raise ValueError("paillier fragments carry a ciphertext and no plain slots")
        if self.mode == "plaintext" and (
            self.plain_slots is None or len(self.plain_slots) != self.slot_count
        ):
            raise ValueError("plaintext fragments carry exactly slot_count plain slots")
        return self


class AgreementKey(SignedMessage):
    """``fed.agreement-keys.v1`` (compacted, key: partner name): a partner's X25519 public
    key for the pairwise masks of secure aggregation.

    Signed with the partner's Ed25519 fragment-signing key, and every partner checks the
    signature against its own registry of its peers' signing keys: whoever can write to
    the topic (the bank, the Kafka operators, another partner) cannot substitute a key
    whose private half it holds, which would let it strip that pair's masks. Peers keep
    the newest key by ``created_at``, so an old message replayed cannot roll a key back.
    """

    SCHEMA_ID: ClassVar[str] = "agreement-key.v1"

    partner: PartnerName
    public_key: B64Bytes = Field(
        min_length=43, max_length=43, description="Raw X25519 public key, base64url."
    )
    created_at: AwareDatetime


__all__ = ["AgreementKey", "EncryptedFragment", "FragmentRequest", "canonical_bytes"]

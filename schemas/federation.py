"""Messages that cross the bank/partner boundary: only tokens and ciphertexts."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from schemas.common import B64Bytes, B64Int, Ident, PartnerName, Token, WireModel


class FragmentRequest(WireModel):
    """``fed.requests.<partner>.v1`` (key: batch id): score these tokens, slot by slot."""

    SCHEMA_ID: ClassVar[str] = "fragment-request.v1"

    batch_id: Ident
    partner: PartnerName
    model_version: Ident
    created_at: AwareDatetime
    deadline_at: AwareDatetime
    tokens: list[Token] = Field(min_length=1, max_length=512, description="Slot s holds tokens[s].")
    attempt: int = Field(default=1, ge=1, le=16)


class EncryptedFragment(WireModel):
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
    signed_at: AwareDatetime
    signature: B64Bytes = Field(description="Ed25519 over signing_bytes(), base64url.")

    @model_validator(mode="after")
    def _payload_matches_mode(self) -> EncryptedFragment:
        if self.mode == "paillier" and (self.ciphertext is None or self.plain_slots is not None):
            raise ValueError("paillier fragments carry a ciphertext and no plain slots")
        if self.mode == "plaintext" and (
            self.plain_slots is None or len(self.plain_slots) != self.slot_count
        ):
            raise ValueError("plaintext fragments carry exactly slot_count plain slots")
        return self

    def signing_bytes(self) -> bytes:
        """Canonical bytes the partner signs: every field but the signature, in a fixed order."""
        body = self.model_dump(mode="json", exclude={"signature"})
        parts = [f"{name}={body[name]}" for name in sorted(body)]
        return ("fedscreen.fragment.v1\n" + "\n".join(parts)).encode()

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas import EncryptedFragment
from services.kernel.crypto.codec import b64_to_bytes
from services.kernel.crypto.signing import (
    PartnerKeyRegistry,
    SignatureError,
    load_signing_key,
    new_signing_key,
    public_key_b64,
    save_signing_key,
    sign,
)
from services.kernel.crypto.tokens import Tokenizer, new_token_key


def test_tokens_are_stable_per_key_and_unlinkable_across_partners() -> None:
    key_a, key_b = new_token_key(), new_token_key()
    tok_a = Tokenizer(b64_to_bytes(key_a))
    tok_b = Tokenizer(b64_to_bytes(key_b))
    assert tok_a.token("customer-1") == tok_a.token("customer-1")
    assert tok_a.token("customer-1") != tok_a.token("customer-2")
    assert tok_a.token("customer-1") != tok_b.token("customer-1")
    assert "customer" not in tok_a.token("customer-1")
    with pytest.raises(ValueError, match="16 bytes"):
        Tokenizer(b"short")


def _fragment(partner: str = "telco", ciphertext: str = "AQ") -> EncryptedFragment:
    return EncryptedFragment(
        batch_id="b-1",
        partner=partner,
        model_version="m1",
        key_id="pk-1",
        slot_count=3,
        participants=[partner],
        ciphertext=ciphertext,
        signed_at=datetime(2026, 1, 1, tzinfo=UTC),
        signature="",
    )


def test_signed_fragments_verify_and_tampering_is_caught(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = new_signing_key()
    save_signing_key(key, tmp_path / "telco.pem")
    key = load_signing_key(tmp_path / "telco.pem")
    registry = PartnerKeyRegistry.parse(f"telco={public_key_b64(key)}")
    unsigned = _fragment()
    signed = unsigned.model_copy(update={"signature": sign(key, unsigned.signing_bytes())})
    registry.verify(signed)

    tampered = signed.model_copy(update={"ciphertext": "Ag"})
    with pytest.raises(SignatureError, match="bad signature"):
        registry.verify(tampered)
    other_partner = signed.model_copy(update={"partner": "bank2"})
    with pytest.raises(SignatureError, match="no registered key"):
        registry.verify(other_partner)
    forged = signed.model_copy(
        update={"signature": sign(new_signing_key(), unsigned.signing_bytes())}
    )
    with pytest.raises(SignatureError):
        registry.verify(forged)


def test_registry_spec_errors_are_explicit() -> None:
    with pytest.raises(ValueError, match="name=base64url"):
        PartnerKeyRegistry.parse("telco")


def test_psi_token_maps_win_over_hmac_keys_and_outsiders_get_fresh_decoys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from services.kernel.crypto.tokens import TokenSourceError, load_token_source, token_or_decoy

    (tmp_path / "payments.key").write_text(new_token_key())
    # Keyed HMAC only when asked for: it lets the partner compute any id's token.
    with pytest.raises(TokenSourceError, match="keyed-HMAC tokens are not enabled"):
        load_token_source(tmp_path, "payments", allow_hmac=False)
    hmac_source = load_token_source(tmp_path, "payments", allow_hmac=True)
    assert hmac_source.token("c1") is not None  # keyed HMAC covers everyone
    (tmp_path / "payments.csv").write_text("customer_id,token\nc1,TOKEN-c1-aaaaaaaaaaaaaaaaa\n")
    psi = load_token_source(tmp_path, "payments", allow_hmac=False)
    assert token_or_decoy(psi, "c1") == "TOKEN-c1-aaaaaaaaaaaaaaaaa"
    decoys = {token_or_decoy(psi, "not-shared") for _ in range(3)}
    assert len(decoys) == 3  # fresh each time: a partner cannot link them
    assert all(len(d) == len(hmac_source.token("c1") or "") for d in decoys)  # token-shaped
    with pytest.raises(ValueError, match="token key"):
        load_token_source(tmp_path, "repayments", allow_hmac=True)

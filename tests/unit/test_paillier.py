from __future__ import annotations

import secrets

import pytest
from gmpy2 import mpz

from services.kernel.crypto.paillier import (
    CiphertextError,
    PrivateKey,
    generate_keypair,
    key_id_for,
    load_private_key,
    load_private_keys,
    save_private_key,
)


def test_encrypt_decrypt_round_trip_and_homomorphic_sum(private_key: PrivateKey) -> None:
    pk = private_key.public
    values = [0, 1, 12345, int(pk.n) - 1, secrets.randbelow(int(pk.n))]
    ciphertexts = [pk.encrypt(v) for v in values]
    assert [private_key.decrypt(c) for c in ciphertexts] == values
    assert private_key.decrypt(pk.add(ciphertexts[1:3])) == 12346


def test_encryption_is_randomised_and_rerandomisation_preserves_plaintext(
    private_key: PrivateKey,
) -> None:
    pk = private_key.public
    first, second = pk.encrypt(42), pk.encrypt(42)
    assert first != second
    fresh = pk.rerandomize(first)
    assert fresh != first
    assert private_key.decrypt(fresh) == 42


def test_owner_fast_encryption_decrypts_and_is_randomised(private_key: PrivateKey) -> None:
    plaintexts = [0, 7, 2**200, int(private_key.public.n) - 3]
    ciphertexts = private_key.encrypt_many(plaintexts)
    assert [private_key.decrypt(c) for c in ciphertexts] == plaintexts
    assert private_key.encrypt_many([7])[0] != private_key.encrypt_many([7])[0]
    # a public-key holder can add to the owner's ciphertexts
    total = private_key.public.add([ciphertexts[1], private_key.public.encrypt(3)])
    assert private_key.decrypt(total) == 10


def test_validation_rejects_values_outside_z_star_n2(private_key: PrivateKey) -> None:
    pk = private_key.public
    for bad in (0, -1, pk.nsquare, pk.nsquare + 5, pk.n, private_key.p * 3):
        with pytest.raises(CiphertextError):
            pk.validate(bad)
    assert pk.validate(pk.encrypt(1)) > 0


def test_plaintext_out_of_range_is_refused(private_key: PrivateKey) -> None:
    with pytest.raises(ValueError, match="out of range"):
        private_key.public.encrypt(int(private_key.public.n))
    with pytest.raises(ValueError, match="out of range"):
        private_key.public.encrypt(-1)


def test_small_keys_are_refused_in_production() -> None:
    with pytest.raises(ValueError, match="at least 2048"):
        generate_keypair(1024)


def test_key_files_round_trip_with_private_permissions(tmp_path, private_key: PrivateKey) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys" / "bank.json"
    save_private_key(private_key, path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_private_key(path)
    assert loaded.key_id == private_key.key_id == key_id_for(int(private_key.public.n))
    assert loaded.decrypt(private_key.public.encrypt(99)) == 99
    assert set(load_private_keys(path.parent)) == {private_key.key_id}


def test_key_file_errors_name_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "broken.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_private_key(bad)
    with pytest.raises(ValueError, match="no Paillier private key"):
        load_private_keys(tmp_path / "empty-dir-that-does-not-exist")


def test_mismatched_factors_are_rejected(private_key: PrivateKey) -> None:
    with pytest.raises(ValueError, match="p \\* q"):
        PrivateKey(private_key.public, private_key.p, private_key.q + 2)
    assert isinstance(private_key.p, type(mpz(1)))


def test_ciphertexts_do_not_reveal_the_random_exponents_parity(private_key: PrivateKey) -> None:
    """A base with Jacobi symbol -1 would make every ciphertext's symbol equal (-1)^e."""
    import gmpy2

    from services.kernel.crypto.paillier import djn_base

    n = private_key.public.n
    assert all(gmpy2.jacobi(djn_base(n), n) == 1 for _ in range(20))
    symbols = {gmpy2.jacobi(private_key.public.encrypt(7), n) for _ in range(40)}
    symbols |= {gmpy2.jacobi(c, n) for c in private_key.encrypt_many([7] * 40)}
    assert symbols == {1}

"""ECDH-PSI on ristretto255: correctness, what crosses the wire, and input validation."""

from __future__ import annotations

import random
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import PsiAnswer, PsiOffer, PsiResult
from services.alignment.files import AlignmentInputError, read_ids, write_token_map
from services.kernel.crypto import psi, ristretto
from services.kernel.crypto.codec import bytes_to_b64
from services.kernel.crypto.tokens import Tokenizer, TokenMap
from services.partner.store import FeatureStore

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _sets(bank: int, partner: int, shared: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    common = [f"c-{i:06d}" for i in range(shared)]
    bank_ids = common + [f"b-{i:06d}" for i in range(bank - shared)]
    partner_ids = common + [f"p-{i:06d}" for i in range(partner - shared)]
    rng.shuffle(bank_ids)
    rng.shuffle(partner_ids)
    return bank_ids, partner_ids


def _run(
    bank_ids: list[str],
    partner_ids: list[str],
    *,
    partner: str = "payments",
    bank_secret: bytes | None = None,
    partner_secret: bytes | None = None,
) -> tuple[psi.Intersection, psi.Intersection, list[str]]:
    """One session through the wire models (JSON both ways), as Kafka would carry it.
    Returns both sides' results and every message's JSON."""
    bank = psi.BankSession(partner, bank_secret or psi.new_secret(), bank_ids)
    offer = PsiOffer(
        session_id="s-1",
        partner=partner,
        expires_at=NOW + timedelta(minutes=5),
        points=psi.encode_points(bank.offer),
    )
    wire = [offer.model_dump_json()]

    side = psi.PartnerSession(partner, partner_secret or psi.new_secret(), partner_ids)
    received = PsiOffer.model_validate_json(wire[-1])
    reblinded = side.answer(psi.decode_points(received.points, "offer"))
    answer = PsiAnswer(
        session_id="s-1",
        partner=partner,
        reblinded=psi.encode_points(reblinded),
        own=psi.encode_points(side.own),
    )
    wire.append(answer.model_dump_json())

    got = PsiAnswer.model_validate_json(wire[-1])
    doubly, bank_view = bank.finish(
        psi.decode_points(got.reblinded, "reblinded"), psi.decode_points(got.own, "own")
    )
    result = PsiResult(session_id="s-1", partner=partner, doubly_blinded=psi.encode_points(doubly))
    wire.append(result.model_dump_json())

    back = PsiResult.model_validate_json(wire[-1])
    partner_view = side.finish(psi.decode_points(back.doubly_blinded, "result"))
    return bank_view, partner_view, wire


def test_intersection_is_exact_and_both_sides_get_the_same_tokens() -> None:
    bank_ids, partner_ids = _sets(bank=400, partner=300, shared=170)
    bank_view, partner_view, _ = _run(bank_ids, partner_ids)
    shared = set(bank_ids) & set(partner_ids)
    assert len(shared) == 170
    assert set(bank_view.tokens) == shared
    assert bank_view.tokens == partner_view.tokens
    assert (bank_view.own_size, bank_view.other_size) == (400, 300)
    assert (partner_view.own_size, partner_view.other_size) == (300, 400)
    assert len(set(bank_view.tokens.values())) == 170  # one token per customer


def test_disjoint_sets_match_nothing() -> None:
    bank_view, partner_view, _ = _run([f"b{i}" for i in range(50)], [f"p{i}" for i in range(60)])
    assert bank_view.tokens == {} and partner_view.tokens == {}


def test_duplicates_and_order_do_not_matter() -> None:
    bank_ids, partner_ids = _sets(bank=60, partner=40, shared=25, seed=3)
    a, b = psi.new_secret(), psi.new_secret()
    first, _, _ = _run(bank_ids, partner_ids, bank_secret=a, partner_secret=b)
    shuffled = list(reversed(bank_ids)) + bank_ids[:10]
    second, _, _ = _run(shuffled, partner_ids, bank_secret=a, partner_secret=b)
    assert first.tokens == second.tokens
    assert psi.BankSession("x", a, bank_ids).offer == psi.BankSession("x", a, shuffled).offer


def test_tokens_are_stable_with_kept_secrets_and_change_with_new_ones() -> None:
    bank_ids, partner_ids = _sets(bank=50, partner=50, shared=30, seed=4)
    a, b = psi.new_secret(), psi.new_secret()
    run1, _, _ = _run(bank_ids, partner_ids, bank_secret=a, partner_secret=b)
    run2, _, _ = _run(bank_ids, partner_ids, bank_secret=a, partner_secret=b)
    fresh, _, _ = _run(bank_ids, partner_ids, bank_secret=a)
    assert run1.tokens == run2.tokens
    assert set(fresh.tokens) == set(run1.tokens)
    assert not set(fresh.tokens.values()) & set(run1.tokens.values())


def test_tokens_are_unlinkable_across_partners() -> None:
    bank_ids, partner_ids = _sets(bank=80, partner=80, shared=80, seed=5)
    a = psi.new_secret()
    pay, _, _ = _run(bank_ids, partner_ids, partner="payments", bank_secret=a)
    rep, _, _ = _run(bank_ids, partner_ids, partner="repayments", bank_secret=a)
    assert set(pay.tokens) == set(rep.tokens)
    assert not set(pay.tokens.values()) & set(rep.tokens.values())
    # Even the same b under two names gives different tokens (domain separation).
    point = psi.hash_ids(["c-1"])[0]
    assert psi.token("payments", point) != psi.token("repayments", point)


def test_the_partner_answer_is_reproducible_for_a_restart_mid_session() -> None:
    bank_ids, partner_ids = _sets(bank=40, partner=40, shared=20, seed=6)
    a, b = psi.new_secret(), psi.new_secret()
    offered = psi.BankSession("p", a, bank_ids).offer
    first, second = psi.PartnerSession("p", b, partner_ids), psi.PartnerSession("p", b, partner_ids)
    assert first.answer(offered) == second.answer(offered)
    assert first.own == second.own


def test_messages_carry_only_32_byte_points_never_an_id() -> None:
    bank_ids, partner_ids = _sets(bank=120, partner=90, shared=50, seed=7)
    _, _, wire = _run(bank_ids, partner_ids)
    for text in wire:
        assert not any(customer_id in text for customer_id in bank_ids + partner_ids)
    offer, answer, result = (
        PsiOffer.model_validate_json(wire[0]),
        PsiAnswer.model_validate_json(wire[1]),
        PsiResult.model_validate_json(wire[2]),
    )
    for points in (offer.points, answer.reblinded, answer.own, result.doubly_blinded):
        assert all(len(p) == 43 for p in points)
        assert all(len(point) == 32 for point in psi.decode_points(points, "check"))
    # The offer is sorted by value, so its order says nothing about the bank's file.
    assert psi.decode_points(offer.points, "x") == sorted(psi.decode_points(offer.points, "x"))


def _invalid_points() -> dict[str, str]:
    valid = psi.hash_ids(["c-1"])[0]
    not_on_curve = next(
        bytes([i]) + valid[1:]
        for i in range(256)
        if not ristretto.is_valid_point(bytes([i]) + valid[1:])
    )
    non_canonical_b64 = bytes_to_b64(valid)[:-1] + "B"  # stray low bits in the last char
    return {
        "identity": bytes_to_b64(ristretto.IDENTITY),
        "not a group element": bytes_to_b64(not_on_curve),
        "non-canonical base64": non_canonical_b64,
        "too short": bytes_to_b64(valid[:31]),
        "not base64": "!" * 43,
    }


@pytest.mark.parametrize("case", sorted(_invalid_points()))
def test_invalid_points_are_rejected_with_their_index(case: str) -> None:
    good = psi.encode_points(psi.hash_ids(["a", "b"]))
    bad = _invalid_points()[case]
    with pytest.raises(psi.PsiProtocolError, match=r"offer: point 2 "):
        psi.decode_points([*good, bad], "offer")


def test_the_schema_rejects_points_of_the_wrong_shape() -> None:
    with pytest.raises(ValidationError):
        PsiOffer(session_id="s", partner="p", expires_at=NOW, points=["A" * 44])
    with pytest.raises(ValidationError):
        PsiOffer(session_id="s", partner="p", expires_at=NOW, points=[])
    with pytest.raises(ValidationError):
        PsiResult(session_id="s", partner="p", doubly_blinded=["customer-0001" + "A" * 30 + "="])


def test_answers_of_the_wrong_size_are_rejected() -> None:
    bank = psi.BankSession("p", psi.new_secret(), ["a", "b", "c"])
    side = psi.PartnerSession("p", psi.new_secret(), ["a", "x"])
    reblinded = side.answer(bank.offer)
    with pytest.raises(psi.PsiProtocolError, match="re-blinded 2 points"):
        bank.finish(reblinded[:2], side.own)
    doubly, _ = bank.finish(reblinded, side.own)
    with pytest.raises(psi.PsiProtocolError, match="returned 1 points for 2"):
        side.finish(doubly[:1])


def test_secrets_are_owner_only_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "payments.scalar"
    secret, created = psi.load_or_create_secret(path)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert psi.load_or_create_secret(path) == (secret, False)
    path.write_text(bytes_to_b64(b"\xff" * 32))  # >= L: not a canonical scalar
    with pytest.raises(psi.PsiProtocolError, match="ristretto255 scalar"):
        psi.load_secret(path)
    path.write_text(bytes_to_b64(bytes(32)))
    with pytest.raises(psi.PsiProtocolError):
        psi.load_secret(path)


def test_id_files_and_token_maps(tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("ID,x\n c1 ,1\nc2,2\nc1,3\n")
    assert read_ids(ids, "ID") == ["c1", "c2"]
    with pytest.raises(AlignmentInputError, match="no column"):
        read_ids(ids, "nope")
    ids.write_text("ID\nc1\n\n,\n")
    with pytest.raises(AlignmentInputError, match=":3: empty ID"):
        read_ids(ids, "ID")
    out = tmp_path / "tokens.csv"
    write_token_map(out, {"c1": "t" * 43})
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert TokenMap.from_csv(out).token("c1") == "t" * 43
    assert TokenMap.from_csv(out).token("c2") is None
    out.write_text("id,tok\n")
    with pytest.raises(ValueError, match="header"):
        TokenMap.from_csv(out)


def test_partner_store_loads_only_the_shared_customers_from_a_token_map(tmp_path: Path) -> None:
    bank_ids = ["c1", "c3", "c9"]
    _, partner_view, _ = _run(bank_ids, ["c1", "c2", "c3"])
    write_token_map(tmp_path / "map.csv", partner_view.tokens)
    (tmp_path / "p.csv").write_text("ID,F\nc1,1\nc2,2\nc3,3\n")
    store = FeatureStore(tmp_path / "s.sqlite")
    count = store.load_csv(
        tmp_path / "p.csv",
        id_column="ID",
        features=["F"],
        tokenizer=TokenMap.from_csv(tmp_path / "map.csv"),
    )
    assert count == 2
    values, _ = store.lookup([partner_view.tokens["c3"], partner_view.tokens["c1"]])
    assert values[:, 0].tolist() == [3.0, 1.0]
    # The HMAC tokenizer still satisfies the same interface (the fallback).
    assert Tokenizer(b"k" * 32).token("c1") is not None
    store.close()


def test_the_bundled_libsodium_serves_when_the_system_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh machine without libsodium23 still aligns, through rbcl's bundled copy,
    and gets exactly the same points."""
    import ctypes.util
    import hashlib

    from services.kernel.crypto import ristretto

    digests = [hashlib.sha512(f"id-{i}".encode()).digest() for i in range(5)]
    scalar = ristretto.scalar_random()
    expected = ristretto.scalarmult(scalar, ristretto.from_hashes(digests))
    monkeypatch.setattr(ristretto, "_CANDIDATES", ("libsodium-that-does-not-exist.so",))
    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: None)
    ristretto._lib.cache_clear()
    try:
        lib = ristretto._lib()
        assert "libsodium" not in str(getattr(lib, "_name", ""))  # rbcl's temporary copy
        assert ristretto.scalarmult(scalar, ristretto.from_hashes(digests)) == expected
    finally:
        ristretto._lib.cache_clear()

"""Slot packing: negative weights, full slots, overflow, and encrypted == plaintext."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import PackingSpec
from services.kernel.crypto.packing import (
    FragmentTables,
    PackingOverflowError,
    PlainTables,
    check_capacity,
    combine_plain,
    encode_weight,
    pack,
    packing_for,
    slot_value,
    unpack,
)
from services.kernel.crypto.paillier import PrivateKey

SPEC = packing_for(2048, [3, 2])


def test_layout_is_as_tight_as_the_model_allows() -> None:
    spec = packing_for(2048, [12, 6])
    # 18 features * 2 * 8 * 2^14 < 2^23, plus 25 bits for two partners' values below 2^24
    assert (spec.score_bits, spec.flag_bits, spec.slot_bits) == (23, 24, 48)
    assert spec.slots == 2046 // 48 == 42
    assert packing_for(3072, [12, 6]).slots == 3070 // 48 == 63
    # three partners need one more carry bit; training's layout (no flags) needs 2 bits
    assert packing_for(2048, [6, 6, 6]).slot_bits == 23 + 26
    training = packing_for(2048, [12, 6], flag_bits=1)
    assert (training.slot_bits, training.slots) == (25, 81)


def test_negative_and_extreme_weights_round_trip() -> None:
    weights = [-8.0, -3.25, 0.0, 1e-4, 7.999, 8.0]
    entries = [encode_weight(SPEC, w) for w in weights]
    assert min(entries) == 0 and max(entries) == 2 * SPEC.entry_offset
    slots = [slot_value(SPEC, e, 0) for e in entries]
    decoded = unpack(SPEC, pack(SPEC, slots), len(slots), {"only": 1})
    for weight, result in zip(weights, decoded, strict=True):
        assert result.partner_score == pytest.approx(weight, abs=2**-(SPEC.frac_bits))
        assert result.blacklist_hits == 0


def test_weights_outside_the_clip_are_refused() -> None:
    with pytest.raises(PackingOverflowError, match="outside"):
        encode_weight(SPEC, 8.01)
    with pytest.raises(PackingOverflowError, match="outside"):
        encode_weight(SPEC, -100.0)


def test_every_slot_full_at_its_worst_case_decodes_exactly() -> None:
    partners = {"a": 3, "b": 2}
    worst_entries = sum(partners.values()) * 2 * SPEC.entry_offset
    slots = [slot_value(SPEC, worst_entries, len(partners))] * SPEC.slots
    decoded = unpack(SPEC, pack(SPEC, slots), SPEC.slots, partners)
    assert len(decoded) == SPEC.slots
    assert all(r.partner_score == pytest.approx(5 * SPEC.weight_clip) for r in decoded)
    assert all(r.blacklist_hits == 2 for r in decoded)


def test_impossible_slot_values_are_detected_not_misread() -> None:
    partners = {"a": 3, "b": 2}
    too_big = sum(partners.values()) * 2 * SPEC.entry_offset + 1
    with pytest.raises(PackingOverflowError, match="impossible"):
        unpack(SPEC, pack(SPEC, [0, too_big]), 2, partners)
    too_many = 2 * ((1 << SPEC.flag_bits) - 1) + 1  # above two partners' largest values
    with pytest.raises(PackingOverflowError, match="impossible"):
        unpack(SPEC, pack(SPEC, [slot_value(SPEC, 0, too_many)]), 1, partners)
    with pytest.raises(PackingOverflowError, match="outside the used slots"):
        unpack(SPEC, 1 << (3 * SPEC.slot_bits), 3, partners)
    with pytest.raises(PackingOverflowError):
        pack(SPEC, [1 << SPEC.slot_bits])
    with pytest.raises(PackingOverflowError):
        pack(SPEC, [0] * (SPEC.slots + 1))


def test_capacity_check_refuses_models_that_could_overflow() -> None:
    spec = PackingSpec(
        frac_bits=14, slot_bits=48, score_bits=23, flag_bits=24, slots=42, weight_clip=8.0
    )
    check_capacity(spec, [12, 6], 2048)
    with pytest.raises(PackingOverflowError, match="score bits"):
        check_capacity(spec, [40, 40], 2048)
    with pytest.raises(PackingOverflowError, match="plaintext space"):
        check_capacity(spec, [12, 6], 1024)
    with pytest.raises(PackingOverflowError, match="blacklist"):
        check_capacity(spec, [1, 1, 1], 2048)  # 3 * (2^24 - 1) needs 26 bits, not 25


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(-8, 8, allow_nan=False), min_size=3, max_size=3),
            st.lists(st.floats(-8, 8, allow_nan=False), min_size=2, max_size=2),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=SPEC.slots,
    )
)
def test_plaintext_path_sums_partners_exactly(rows) -> None:  # type: ignore[no-untyped-def]
    """Two partners' plaintext fragments add slot by slot into the right scores and hits."""
    a_entries = [[encode_weight(SPEC, w) for w in r[0]] for r in rows]
    b_entries = [[encode_weight(SPEC, w) for w in r[1]] for r in rows]
    frag_a = [slot_value(SPEC, sum(e), int(r[2])) for e, r in zip(a_entries, rows, strict=True)]
    frag_b = [slot_value(SPEC, sum(e), int(r[3])) for e, r in zip(b_entries, rows, strict=True)]
    decoded = unpack(SPEC, combine_plain(SPEC, [frag_a, frag_b]), len(rows), {"a": 3, "b": 2})
    for row, result in zip(rows, decoded, strict=True):
        expected = sum(row[0]) + sum(row[1])
        assert result.partner_score == pytest.approx(expected, abs=5 * 2**-SPEC.frac_bits)
        assert result.blacklist_hits == int(row[2]) + int(row[3])
        assert result.flagged == (row[2] or row[3])


def test_encrypted_fragments_from_two_partners_decrypt_to_the_plaintext_result(
    private_key: PrivateKey,
) -> None:
    pk = private_key.public
    spec = packing_for(pk.bits, [3, 2])
    spec = spec.model_copy(update={"slots": 6})  # fewer slots keep table building fast
    rng = random.Random(7)
    weights_a = [[rng.uniform(-4, 4) for _ in range(4)] for _ in range(3)]
    weights_b = [[rng.uniform(-4, 4) for _ in range(5)] for _ in range(2)]
    entries_a = [[encode_weight(spec, w) for w in row] for row in weights_a]
    entries_b = [[encode_weight(spec, w) for w in row] for row in weights_b]
    tables_a = FragmentTables(pk, spec, [[pk.encrypt(e) for e in row] for row in entries_a])
    tables_b = FragmentTables(pk, spec, [[pk.encrypt(e) for e in row] for row in entries_b])
    bins_a = [[rng.randrange(4) for _ in range(3)] for _ in range(6)]
    bins_b = [[rng.randrange(5) for _ in range(2)] for _ in range(6)]
    hits_a = [False, True, False, False, True, False]
    hits_b = [False, True, True, False, False, False]

    encrypted = pk.add([tables_a.fragment(bins_a, hits_a), tables_b.fragment(bins_b, hits_b)])
    decoded = unpack(spec, int(private_key.decrypt(encrypted)), 6, {"a": 3, "b": 2})
    plain = combine_plain(
        spec,
        [
            PlainTables(spec, entries_a).fragment(bins_a, hits_a),
            PlainTables(spec, entries_b).fragment(bins_b, hits_b),
        ],
    )
    assert decoded == unpack(spec, plain, 6, {"a": 3, "b": 2})
    for s in range(6):
        expected = sum(weights_a[j][b] for j, b in enumerate(bins_a[s])) + sum(
            weights_b[j][b] for j, b in enumerate(bins_b[s])
        )
        assert decoded[s].partner_score == pytest.approx(expected, abs=1e-3)
        assert decoded[s].blacklist_hits == int(hits_a[s]) + int(hits_b[s])


def test_fragments_are_rerandomised_so_equal_inputs_look_different(private_key: PrivateKey) -> None:
    pk = private_key.public
    spec = packing_for(pk.bits, [1]).model_copy(update={"slots": 2})
    tables = FragmentTables(pk, spec, [[pk.encrypt_deterministic(encode_weight(spec, 1.0))]])
    first = tables.fragment([[0], [0]], [False, False])
    second = tables.fragment([[0], [0]], [False, False])
    assert first != second
    assert private_key.decrypt(first) == private_key.decrypt(second)
    # the bank knows every table ciphertext: the plain product of table entries must not appear
    naive = tables.combined[0][0][0] * tables.combined[1][0][0] % pk.nsquare
    assert first != naive and second != naive


def test_a_fragment_with_more_rows_than_slots_is_refused(private_key: PrivateKey) -> None:
    pk = private_key.public
    spec = packing_for(pk.bits, [1]).model_copy(update={"slots": 2})
    tables = FragmentTables(pk, spec, [[pk.encrypt(1)]])
    with pytest.raises(PackingOverflowError):
        tables.fragment([[0]] * 3, [False] * 3)


def test_feature_groups_respect_the_entry_budget_and_cover_every_feature() -> None:
    from services.kernel.crypto.packing import group_features

    bins = [12, 11, 12, 11, 11, 11, 17, 17, 17, 16, 16, 16]
    groups = group_features(bins, 320)
    assert sorted(j for g in groups for j in g) == list(range(len(bins)))
    for group in groups:
        size = 1
        for j in group:
            size *= bins[j]
        assert size <= 320 or len(group) == 1
    assert len(groups) == 6  # pairs: half the multiplications per candidate
    assert group_features(bins, 1) == [(j,) for j in sorted(range(12), key=lambda j: bins[j])]


def test_grouped_and_ungrouped_tables_give_the_same_fragment_plaintext(
    private_key: PrivateKey,
) -> None:
    pk = private_key.public
    spec = packing_for(pk.bits, [3]).model_copy(update={"slots": 3})
    rng = random.Random(3)
    entries = [[encode_weight(spec, rng.uniform(-3, 3)) for _ in range(b)] for b in (4, 5, 3)]
    ciphertexts = [[pk.encrypt(e) for e in row] for row in entries]
    grouped = FragmentTables(pk, spec, ciphertexts, max_group_entries=100)
    single = FragmentTables(pk, spec, ciphertexts, max_group_entries=1)
    assert len(grouped.groups) < len(single.groups) == 3
    rows = [[3, 4, 2], [0, 0, 0], [1, 2, 1]]
    hits = [True, False, False]
    assert private_key.decrypt(grouped.fragment(rows, hits)) == private_key.decrypt(
        single.fragment(rows, hits)
    )

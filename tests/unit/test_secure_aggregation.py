"""Secure aggregation of fragments: each property the protocol claims, proven on the real
code (docs/crypto.md, "Secure aggregation").

- the masks cancel exactly in the product of every participant's fragment (K = 2, 3);
- one masked fragment alone decrypts to values spread over the whole field;
- the blacklist field is 0 iff nobody flagged, and tells one flag from two only with
  probability about 1/(2^t - 1);
- without one participant, the others' fragments do not decode;
- an agreement key that is not signed by its partner's registered key is refused.

Statistics run on plaintexts with a fixed modulus and fixed keys, so they are
deterministic; each threshold is one a masked value passes and an unmasked one cannot.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from schemas import AgreementKey, PackingSpec
from services.kernel.crypto.codec import bytes_to_b64
from services.kernel.crypto.masking import (
    MaskContext,
    batch_digest,
    flag_tags,
    fragment_addend,
    pair_field_masks,
    pair_seed,
    tag_seed,
    token_list_digest,
)
from services.kernel.crypto.packing import (
    FragmentTables,
    PackingOverflowError,
    encode_weight,
    packing_for,
    unpack,
)
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.signing import PartnerKeyRegistry, SignatureError, public_key_b64
from services.partner.agreement import PeerDirectory, announcement

NAMES = ("alpha", "bravo", "charlie")
# A fixed odd 2048-bit modulus: the statistics below need the mask arithmetic mod n, not a
# key, and a fixed n makes them deterministic.
FIXED_N = int.from_bytes(hashlib.shake_256(b"fedscreen-test-modulus").digest(256), "big") | (
    1 << 2047 | 1
)


def x25519(name: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(hashlib.sha256(b"x25519|" + name.encode()).digest())


def ed25519(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"ed|" + name.encode()).digest())


class Party:
    """One partner's view: its own keys and the seeds it shares with the others."""

    def __init__(self, name: str, names: Sequence[str]) -> None:
        self.name = name
        self.key = x25519(name)
        self.seeds = {
            peer: pair_seed(self.key, name, x25519(peer).public_key(), peer)
            for peer in names
            if peer != name
        }
        self.tags = tag_seed(self.key)

    def addend(self, spec: PackingSpec, context: MaskContext, hits: Sequence[bool]) -> int:
        seeds = {p: self.seeds[p] for p in context.participants if p != self.name}
        return fragment_addend(spec, context, self.name, seeds, self.tags, hits)


def context(
    batch: str,
    participants: Sequence[str],
    spec: PackingSpec,
    slots: int,
    n: int,
    *,
    attempt: int = 1,
    flags_only: bool = False,
    model_version: str = "m-1",
    tokens: Sequence[str] = ("t" * 43,),
) -> MaskContext:
    return MaskContext(
        batch,
        attempt,
        tuple(sorted(participants)),
        flags_only,
        slots,
        spec.flag_bits,
        n,
        model_version,
        batch_digest({p: token_list_digest(tokens) for p in participants}),
    )


def chi2_critical(dof: int, z: float = 3.09) -> float:
    """Upper 0.1 % point of chi-square (Wilson-Hilferty; z = 3.09 for p = 0.001)."""
    h = 2 / (9 * dof)
    return dof * (1 - h + z * math.sqrt(h)) ** 3


def chi2_uniform(values: Sequence[int], bins: int) -> float:
    counts = Counter(values)
    expected = len(values) / bins
    return sum((counts.get(b, 0) - expected) ** 2 / expected for b in range(bins))


def chi2_homogeneity(a: Sequence[int], b: Sequence[int], bins: int) -> float:
    """Do two samples come from the same distribution over ``bins`` categories?"""
    ca, cb = Counter(a), Counter(b)
    total = 0.0
    for k in range(bins):
        row = ca.get(k, 0) + cb.get(k, 0)
        if row == 0:
            continue
        for counts, size in ((ca, len(a)), (cb, len(b))):
            expected = row * size / (len(a) + len(b))
            total += (counts.get(k, 0) - expected) ** 2 / expected
    return total


# -- the masks cancel exactly ------------------------------------------------------------


def tables_for(
    key: PrivateKey, spec: PackingSpec, rng: random.Random, features: int
) -> tuple[FragmentTables, list[list[int]]]:
    entries = [[encode_weight(spec, rng.uniform(-3, 3)) for _ in range(3)] for _ in range(features)]
    pk = key.public
    return FragmentTables(pk, spec, [[pk.encrypt(e) for e in row] for row in entries]), entries


@pytest.mark.parametrize("partners", [2, 3])
def test_the_masked_fragments_of_every_participant_decrypt_to_the_exact_sum(
    private_key: PrivateKey, partners: int
) -> None:
    names = NAMES[:partners]
    pk = private_key.public
    slots = 5
    spec = packing_for(pk.bits, [2] * partners).model_copy(update={"slots": slots})
    rng = random.Random(partners)
    ctx = context("b-exact", names, spec, slots, int(pk.n))
    product, scores, flags, tag_sum = 1, [0.0] * slots, [False] * slots, [0] * slots
    for name in names:
        party = Party(name, names)
        tables, entries = tables_for(private_key, spec, rng, 2)
        rows = [[rng.randrange(3) for _ in range(2)] for _ in range(slots)]
        hits = [rng.random() < 0.5 for _ in range(slots)]
        fragment = tables.fragment(rows, addend=party.addend(spec, ctx, hits))
        product = product * fragment % pk.nsquare
        tags = flag_tags(party.tags, ctx)
        for s in range(slots):
            scores[s] += sum(entries[j][b] - spec.entry_offset for j, b in enumerate(rows[s]))
            flags[s] |= hits[s]
            tag_sum[s] += tags[s] if hits[s] else 0
    plaintext = int(private_key.decrypt(product))
    decoded = unpack(spec, plaintext, slots, dict.fromkeys(names, 2))  # no overflow anywhere
    mod = 1 << spec.flag_bits
    for s, result in enumerate(decoded):
        assert result.partner_score * (1 << spec.frac_bits) == scores[s]  # exact, not approx
        assert result.flagged == flags[s]
        assert result.blacklist_hits % mod == tag_sum[s] % mod  # field masks cancel mod 2^t


def test_one_masked_fragment_decrypts_to_something_that_does_not_even_unpack(
    private_key: PrivateKey,
) -> None:
    pk = private_key.public
    spec = packing_for(pk.bits, [2, 2]).model_copy(update={"slots": 3})
    tables, _ = tables_for(private_key, spec, random.Random(1), 2)
    hits = [True, False, False]
    alone = Party("alpha", NAMES[:2])
    masked = tables.fragment(
        [[0, 1]] * 3, addend=alone.addend(spec, context("b", NAMES[:2], spec, 3, int(pk.n)), hits)
    )
    with pytest.raises(PackingOverflowError):
        unpack(spec, int(private_key.decrypt(masked)), 3, {"alpha": 2})
    # a fragment with nobody to pair with carries no mask: the bank reads it (inherent)
    single = tables.fragment(
        [[0, 1]] * 3, addend=alone.addend(spec, context("b", ["alpha"], spec, 3, int(pk.n)), hits)
    )
    result = unpack(spec, int(private_key.decrypt(single)), 3, {"alpha": 2})
    assert [r.flagged for r in result] == hits


# -- one fragment alone looks uniform ----------------------------------------------------


def test_a_single_masked_fragment_is_spread_over_the_whole_field() -> None:
    """Alpha's fragment plaintext (scores + its blacklist values + its mask), batch after
    batch. Masked, every slot's score field and the top of the plaintext are uniform;
    unmasked (alpha alone), the score fields stay below the worst case and everything
    above the used slots is zero. Same data, same thresholds."""
    spec = packing_for(2048, [12, 6])
    slots, batches = 8, 400
    worst = 18 * 2 * spec.entry_offset
    rng = random.Random(5)
    alpha = Party("alpha", NAMES[:2])
    samples: dict[str, dict[str, list[int]]] = {
        "masked": {"score_top": [], "top": []},
        "alone": {"score_top": [], "top": []},
    }
    for b in range(batches):
        scores = [rng.randrange(worst // 2) for _ in range(slots)]  # alpha's part of a sum
        packed = sum(v << (s * spec.slot_bits) for s, v in enumerate(scores))
        hits = [rng.random() < 0.1 for _ in range(slots)]
        for kind, participants in (("masked", NAMES[:2]), ("alone", ["alpha"])):
            ctx = context(f"b-{b}", participants, spec, slots, FIXED_N)
            value = (packed + alpha.addend(spec, ctx, hits)) % FIXED_N
            for s in range(slots):
                score = (value >> (s * spec.slot_bits)) & ((1 << spec.score_bits) - 1)
                samples[kind]["score_top"].append(score >> (spec.score_bits - 4))  # 16 bins
            samples[kind]["top"].append(value * 16 // FIXED_N)  # which 16th of [0, n)
            if kind == "alone":
                assert value >> (slots * spec.slot_bits) == 0
                assert all(
                    (value >> (s * spec.slot_bits)) & ((1 << spec.score_bits) - 1) < worst
                    for s in range(slots)
                )
    critical = chi2_critical(15)
    assert chi2_uniform(samples["masked"]["score_top"], 16) < critical
    assert chi2_uniform(samples["masked"]["top"], 16) < critical
    # the same test on the unmasked fragment fails by orders of magnitude
    assert chi2_uniform(samples["alone"]["score_top"], 16) > 100 * critical
    assert chi2_uniform(samples["alone"]["top"], 16) > 100 * critical


# -- the blacklist field ------------------------------------------------------------------


def test_the_blacklist_field_is_zero_iff_nobody_flagged_and_hides_the_count() -> None:
    """Two partners, t = 8 so that the rare events show. Per slot the bank reads the
    field F of the sum (with its carry bit). F mod 2^t is 0 without a flag, never 0 with
    one, and 0 with two only at rate 1/(2^t - 1); F itself is distributed the same with
    one flag and with two. Without the field masks (tags simply added), F > 2^t - 1
    happens only with two flags: the same test then tells them apart at once."""
    spec = packing_for(2048, [12, 6], flag_bits=8)
    t = spec.flag_bits
    slots, batches = 60, 170
    alpha, bravo = Party("alpha", NAMES[:2]), Party("bravo", NAMES[:2])
    rng = random.Random(11)
    by_count: dict[int, list[int]] = {0: [], 1: [], 2: []}
    naive: dict[int, list[int]] = {1: [], 2: []}
    for b in range(batches):
        ctx = context(f"b-{b}", NAMES[:2], spec, slots, FIXED_N, flags_only=True)
        pattern = [rng.randrange(4) for _ in range(slots)]  # 0: none, 1: a, 2: b, 3: both
        hits_a = [p in (1, 3) for p in pattern]
        hits_b = [p in (2, 3) for p in pattern]
        total = (alpha.addend(spec, ctx, hits_a) + bravo.addend(spec, ctx, hits_b)) % FIXED_N
        assert total < 1 << (slots * spec.slot_bits)  # the masks cancelled exactly
        tags_a, tags_b = flag_tags(alpha.tags, ctx), flag_tags(bravo.tags, ctx)
        for s in range(slots):
            field = total >> (spec.score_bits + s * spec.slot_bits) & (
                (1 << (spec.slot_bits - spec.score_bits)) - 1
            )
            count = int(hits_a[s]) + int(hits_b[s])
            by_count[count].append(field)
            if count:
                naive[count].append(tags_a[s] * hits_a[s] + tags_b[s] * hits_b[s])
    mod = 1 << t
    assert all(f % mod == 0 for f in by_count[0])
    assert all(f % mod != 0 for f in by_count[1])
    zeros = sum(f % mod == 0 for f in by_count[2])
    expected = len(by_count[2]) / (mod - 1)  # about 10 of 2,560
    assert expected / 4 <= zeros <= expected * 3
    bins = 32  # the 9-bit field in 32 bins of 16 values
    critical = chi2_critical(bins - 1)
    assert (
        chi2_homogeneity([f // 16 for f in by_count[1]], [f // 16 for f in by_count[2]], bins)
        < critical
    )
    assert (
        chi2_homogeneity([f // 16 for f in naive[1]], [f // 16 for f in naive[2]], bins)
        > 10 * critical
    )


# -- dropout ------------------------------------------------------------------------------


def test_without_one_participant_the_others_fragments_do_not_decode(
    private_key: PrivateKey,
) -> None:
    """Charlie misses the batch: alpha and bravo's fragments carry masks with charlie, so
    their product decodes to nothing (the joiner then decides without any partner's
    answer, and asks nobody again)."""
    pk = private_key.public
    n, slots = int(pk.n), 4
    spec = packing_for(pk.bits, [2, 2, 2]).model_copy(update={"slots": slots})
    tables, _ = tables_for(private_key, spec, random.Random(2), 2)
    parties = {name: Party(name, NAMES) for name in NAMES}
    hits = {"alpha": [True, False, False, False], "bravo": [False, False, True, False]}
    rows = [[1, 2]] * slots
    first = context("b-drop", NAMES, spec, slots, n)
    answered = {
        p: tables.fragment(rows, addend=parties[p].addend(spec, first, hits[p])) for p in hits
    }
    both = answered["alpha"] * answered["bravo"] % pk.nsquare
    with pytest.raises(PackingOverflowError):
        unpack(spec, int(private_key.decrypt(both)), slots, {"alpha": 2, "bravo": 2})


def test_masks_are_fresh_per_batch_and_attempt_and_stable_per_request() -> None:
    spec = packing_for(2048, [2, 2])
    alpha = Party("alpha", NAMES[:2])
    hits = [False] * 4
    base = context("b-1", NAMES[:2], spec, 4, FIXED_N)
    same = alpha.addend(spec, base, hits)
    assert alpha.addend(spec, base, hits) == same  # a redelivered request: same plaintext
    for other in (
        context("b-2", NAMES[:2], spec, 4, FIXED_N),
        context("b-1", NAMES[:2], spec, 4, FIXED_N, attempt=2),
        context("b-1", NAMES[:2], spec, 4, FIXED_N, flags_only=True),
        context("b-1", NAMES[:2], spec, 4, FIXED_N, model_version="m-2"),
        context("b-1", NAMES[:2], spec, 4, FIXED_N, tokens=("u" * 43,)),
    ):
        assert alpha.addend(spec, other, hits) != same
    # both sides of a pair derive the same seed and field masks
    bravo = Party("bravo", NAMES[:2])
    assert alpha.seeds["bravo"] == bravo.seeds["alpha"]
    assert pair_field_masks(alpha.seeds["bravo"], base) == pair_field_masks(
        bravo.seeds["alpha"], base
    )


# -- agreement keys ------------------------------------------------------------------------


def registry(*names: str) -> PartnerKeyRegistry:
    return PartnerKeyRegistry({n: public_key_b64(ed25519(n)) for n in names})


def test_a_substituted_agreement_key_is_refused() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    directory = PeerDirectory("alpha", x25519("alpha"), registry("alpha", "bravo"))
    genuine = announcement("bravo", x25519("bravo"), ed25519("bravo"), now)
    assert directory.offer(genuine)
    seed = directory.seeds_for(["alpha", "bravo"])["bravo"]
    assert seed == Party("alpha", NAMES[:2]).seeds["bravo"]

    attacker = X25519PrivateKey.generate()
    substitutes = [
        announcement("bravo", attacker, Ed25519PrivateKey.generate(), now + timedelta(1)),
        announcement("bravo", attacker, ed25519("alpha"), now + timedelta(1)),  # wrong signer
        announcement("mallory", attacker, ed25519("mallory"), now + timedelta(1)),  # unregistered
        genuine.model_copy(
            update={"public_key": announcement("x", attacker, ed25519("x"), now).public_key}
        ),
    ]
    for message in substitutes:
        with pytest.raises(SignatureError):
            directory.offer(message)
    assert directory.seeds_for(["bravo"])["bravo"] == seed

    # a validly signed but older key (a replay) cannot roll the key back
    newer = announcement("bravo", x25519("bravo-2"), ed25519("bravo"), now + timedelta(2))
    assert directory.offer(newer)
    assert not directory.offer(genuine)
    assert directory.seeds_for(["bravo"])["bravo"] != seed

    # a low-order point, however well signed, yields no seed
    zero = AgreementKey(
        partner="bravo",
        public_key=bytes_to_b64(bytes(32)),
        created_at=now + timedelta(3),
        signature="",
    )
    from services.kernel.crypto.signing import sign

    zero = zero.model_copy(update={"signature": sign(ed25519("bravo"), zero.signing_bytes())})
    with pytest.raises(ValueError, match="shared key"):
        directory.offer(zero)

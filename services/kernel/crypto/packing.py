"""Fixed-point slot packing: many candidates' partner scores in one Paillier plaintext.

Layout (see :class:`schemas.PackingSpec`): slot s occupies bits [sW, (s+1)W); in a
slot the low ``score_bits`` hold a sum of table entries (weights shifted by an
offset so they are never negative) and the bits above hold the blacklist field.

Partner side: :class:`FragmentTables` pre-shifts each encrypted table entry into every
slot (W modular squarings per step), so a batch's fragment is one modular
multiplication per (slot, feature group), one for the plaintext ``addend`` (blacklist
tags and secure-aggregation masks, :mod:`services.kernel.crypto.masking`) and one
re-randomisation.
Bank side: :func:`unpack` checks every field against its worst case, so an overflow,
a wrong key, a tampered ciphertext or masks that do not cancel are detected rather than
mis-scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import gmpy2
from gmpy2 import mpz

from schemas import PackingSpec
from services.kernel.crypto.paillier import PublicKey

DEFAULT_FRAC_BITS = 14
DEFAULT_WEIGHT_CLIP = 8.0
DEFAULT_FLAG_BITS = 24
"""t: blacklist tags are uniform in [1, 2^t). A candidate flagged by two or more partners
reads as unflagged with probability 1/(2^t - 1), and the field tells one flag from two
with the same advantage (docs/crypto.md, "The blacklist field"): 6e-8 at t = 24, which
gives 48-bit slots, 42 per 2048-bit plaintext, on the reference split."""
MAX_SLOTS = 512


class PackingOverflowError(OverflowError):
    """A value does not fit its field, or a decrypted slot exceeds what is possible."""


def flag_field_bits(partners: int, flag_bits: int) -> int:
    """Width of the blacklist field: room for the sum of one value below 2^t per partner."""
    return max(1, (partners * ((1 << flag_bits) - 1)).bit_length())


def packing_for(
    key_bits: int,
    features_per_partner: Sequence[int],
    *,
    frac_bits: int = DEFAULT_FRAC_BITS,
    weight_clip: float = DEFAULT_WEIGHT_CLIP,
    flag_bits: int = DEFAULT_FLAG_BITS,
) -> PackingSpec:
    """The tightest layout for a model: fields exactly wide enough for the worst case,
    so a 2048-bit plaintext carries as many candidates as possible (2 bits of margin
    below n). Training's score messages carry no blacklist field, so their session
    layout passes ``flag_bits=1``: the narrowest field, as many slots as possible."""
    entry_max = 2 * round(weight_clip * (1 << frac_bits))
    score_bits = max(8, (sum(features_per_partner) * entry_max).bit_length())
    field_bits = flag_field_bits(len(features_per_partner), flag_bits)
    slot_bits = max(16, score_bits + field_bits)
    slots = min((key_bits - 2) // slot_bits, MAX_SLOTS)
    if slots < 1:
        raise PackingOverflowError(f"a {key_bits}-bit key cannot hold one {slot_bits}-bit slot")
    spec = PackingSpec(
        frac_bits=frac_bits,
        slot_bits=slot_bits,
        score_bits=slot_bits - field_bits,
        flag_bits=flag_bits,
        slots=slots,
        weight_clip=weight_clip,
    )
    check_capacity(spec, features_per_partner, key_bits)
    return spec


def encode_weight(spec: PackingSpec, weight: float) -> int:
    """round(w * 2^F) + offset, in [0, 2 * offset]."""
    value = round(weight * (1 << spec.frac_bits))
    offset = spec.entry_offset
    if not -offset <= value <= offset:
        raise PackingOverflowError(
            f"weight {weight} outside [-{spec.weight_clip}, {spec.weight_clip}]"
        )
    return value + offset


def check_capacity(spec: PackingSpec, features_per_partner: Sequence[int], key_bits: int) -> None:
    """Refuse a model whose worst-case slot sum could overflow its field."""
    if spec.slots * spec.slot_bits > key_bits - 2:
        raise PackingOverflowError("slots * slot_bits exceeds the key's plaintext space")
    worst_score = sum(features_per_partner) * 2 * spec.entry_offset
    if worst_score >= 1 << spec.score_bits:
        raise PackingOverflowError(
            f"{sum(features_per_partner)} features can sum to {worst_score}, "
            f"which does not fit {spec.score_bits} score bits"
        )
    partners = len(features_per_partner)
    if partners * ((1 << spec.flag_bits) - 1) >= 1 << (spec.slot_bits - spec.score_bits):
        raise PackingOverflowError(
            f"{partners} partners' blacklist values below 2^{spec.flag_bits} do not fit the "
            f"{spec.slot_bits - spec.score_bits}-bit blacklist field"
        )


def flag_addend(spec: PackingSpec, fields: Sequence[int]) -> int:
    """The plaintext that puts ``fields[s]`` (each below 2^flag_bits) into slot s's
    blacklist field."""
    limit = 1 << spec.flag_bits
    addend = 0
    for s, value in enumerate(fields):
        if not 0 <= value < limit:
            raise PackingOverflowError(f"blacklist value {value} outside [0, 2^{spec.flag_bits})")
        addend |= value << (spec.score_bits + s * spec.slot_bits)
    return addend


def slot_value(spec: PackingSpec, entries_sum: int, hits: int) -> int:
    """One slot's plaintext value (the plaintext benchmark mode sends these directly)."""
    return entries_sum + (hits << spec.score_bits)


def pack(spec: PackingSpec, slot_values: Sequence[int]) -> int:
    if len(slot_values) > spec.slots:
        raise PackingOverflowError(f"{len(slot_values)} values for {spec.slots} slots")
    limit = 1 << spec.slot_bits
    packed = 0
    for s, value in enumerate(slot_values):
        if not 0 <= value < limit:
            raise PackingOverflowError(f"slot {s} value {value} outside [0, 2^{spec.slot_bits})")
        packed |= value << (s * spec.slot_bits)
    return packed


@dataclass(frozen=True, slots=True)
class SlotResult:
    partner_score: float
    blacklist_hits: int
    """The raw blacklist field: a hit count where partners add 1 per hit (plaintext
    benchmark mode, the micro-benchmark), a sum of random tags and masks otherwise."""
    flagged: bool
    """Some partner flagged the candidate: the field is non-zero modulo 2^flag_bits."""


def unpack(
    spec: PackingSpec,
    plaintext: int,
    slot_count: int,
    features_per_partner: Mapping[str, int],
) -> list[SlotResult]:
    """Decode the sum of the listed partners' fragments.

    ``features_per_partner`` names exactly the partners whose fragments were summed;
    their feature counts give the total offset to remove and the worst case to check
    (0 features for a flags-only fragment, whose score fields are empty).
    """
    if plaintext < 0 or plaintext >> (slot_count * spec.slot_bits):
        raise PackingOverflowError("plaintext has bits outside the used slots")
    total_features = sum(features_per_partner.values())
    offset_total = total_features * spec.entry_offset
    worst_score = 2 * offset_total
    # Each partner's value in the field is below 2^t; a hit count (1 per hit) is too.
    flag_mask = (1 << spec.flag_bits) - 1
    max_field = len(features_per_partner) * flag_mask
    slot_mask = (1 << spec.slot_bits) - 1
    score_mask = (1 << spec.score_bits) - 1
    scale = float(1 << spec.frac_bits)
    results = []
    value = int(plaintext)
    for s in range(slot_count):
        slot = value & slot_mask
        value >>= spec.slot_bits
        score = slot & score_mask
        field = slot >> spec.score_bits
        if score > worst_score or field > max_field:
            raise PackingOverflowError(f"slot {s} holds an impossible value")
        results.append(SlotResult((score - offset_total) / scale, field, bool(field & flag_mask)))
    return results


def group_features(bins_per_feature: Sequence[int], max_entries: int) -> list[tuple[int, ...]]:
    """Greedy grouping of features whose joint bin count stays within ``max_entries``.

    A group's combined table holds one ciphertext per combination of its features' bins,
    so a fragment needs one multiplication per group instead of one per feature, at the
    cost of ``prod(bins)`` entries per slot instead of ``sum(bins)``.
    """
    order = sorted(range(len(bins_per_feature)), key=lambda j: bins_per_feature[j])
    groups: list[list[int]] = []
    size = 0
    for j in order:
        if groups and size * bins_per_feature[j] <= max_entries:
            groups[-1].append(j)
            size *= bins_per_feature[j]
        else:
            groups.append([j])
            size = bins_per_feature[j]
    return [tuple(g) for g in groups]


class SlotLayout(Protocol):
    """What :class:`FragmentTables` needs of a layout: serving's :class:`PackingSpec` or
    training's :class:`schemas.training.ScoreLayout`."""

    @property
    def slot_bits(self) -> int: ...

    @property
    def slots(self) -> int: ...

    @property
    def score_bits(self) -> int: ...


class FragmentTables:
    """A partner's encrypted tables, pre-shifted into every slot and pre-combined by
    feature group.

    ``shifted[s][j][b] = tables[j][b] ^ (2^(W*s)) = Enc(entry * 2^(W*s))``; for a group
    (j1, j2, ...) the combined entry for bins (b1, b2, ...) is the product of the shifted
    entries, i.e. the encryption of their sum. ``max_group_entries=1`` disables grouping.
    """

    def __init__(
        self,
        public_key: PublicKey,
        spec: SlotLayout,
        tables: Sequence[Sequence[int]],
        *,
        max_group_entries: int = 320,
    ) -> None:
        self.public_key = public_key
        self.spec = spec
        self.bins_per_feature = [len(row) for row in tables]
        self.groups = group_features(self.bins_per_feature, max_group_entries)
        # Mixed-radix strides: the index of bins (b1, b2, ...) in a group's table.
        self.strides: list[tuple[int, ...]] = []
        for group in self.groups:
            strides, stride = [], 1
            for j in reversed(group):
                strides.append(stride)
                stride *= self.bins_per_feature[j]
            self.strides.append(tuple(reversed(strides)))
        nsquare = public_key.nsquare
        shift = mpz(1) << spec.slot_bits
        flat = [public_key.validate(c) for row in tables for c in row]
        self.combined: list[list[list[mpz]]] = []
        for s in range(spec.slots):
            if s:
                # One C call per slot; gmpy2 releases the GIL inside it.
                flat = gmpy2.powmod_base_list(flat, shift, nsquare)
            self.combined.append(self._combine(self._split(flat), nsquare))
        # Enc(2^score_bits) shifted per slot; deterministic here, hidden by the final
        # re-randomisation like every other factor.
        self.blacklist = [
            public_key.encrypt_deterministic(1 << (spec.score_bits + s * spec.slot_bits))
            for s in range(spec.slots)
        ]

    def _split(self, flat: Sequence[mpz]) -> list[list[mpz]]:
        rows, start = [], 0
        for bins in self.bins_per_feature:
            rows.append(list(flat[start : start + bins]))
            start += bins
        return rows

    def _combine(self, shifted: list[list[mpz]], nsquare: mpz) -> list[list[mpz]]:
        out = []
        for group in self.groups:
            table = shifted[group[0]]
            for j in group[1:]:
                table = [a * b % nsquare for a in table for b in shifted[j]]
            out.append(table)
        return out

    @property
    def features(self) -> int:
        return len(self.bins_per_feature)

    def fragment(
        self,
        rows: Sequence[Sequence[int]],
        hits: Sequence[bool] | None = None,
        *,
        addend: int = 0,
        factor: mpz | None = None,
    ) -> mpz:
        """Enc(sum over slots of (sum_j entry[j][bin] + hit * 2^score_bits) * 2^(W s)
        + addend), fresh.

        ``hits`` adds 1 per hit to the blacklist field (training sends none; the
        benchmarks count hits). Serving passes ``addend`` instead: the blacklist tags and
        the secure-aggregation masks as one plaintext in [0, n), added as the factor
        ``1 + addend * n``. ``rows`` may be empty (a flags-only fragment).

        ``factor`` is the fresh random factor: partners pass a uniform ``r^n`` that hides
        from the key owner (services/kernel/crypto/randomness.py); without one, this
        party's short-exponent factor.
        """
        if len(rows) > self.spec.slots or (hits is not None and len(rows) != len(hits)):
            raise PackingOverflowError(f"{len(rows)} rows for {self.spec.slots} slots")
        pk = self.public_key
        if not 0 <= addend < pk.n:
            raise PackingOverflowError("addend outside [0, n)")
        nsquare = pk.nsquare
        plan = list(zip(self.groups, self.strides, strict=True))
        # The fresh factor makes the product of known ciphertexts (the bank encrypted
        # every table entry) unrecognisable; it multiplies in first, like the rest.
        acc = pk.random_factor() if factor is None else factor
        for s, bins in enumerate(rows):
            tables = self.combined[s]
            for g, (group, strides) in enumerate(plan):
                index = 0
                for j, stride in zip(group, strides, strict=True):
                    index += bins[j] * stride
                acc = acc * tables[g][index] % nsquare
            if hits is not None and hits[s]:
                acc = acc * self.blacklist[s] % nsquare
        if addend:
            acc = acc * pk.encrypt_deterministic(addend) % nsquare
        return acc


class PlainTables:
    """The same computation without encryption: the benchmark's crypto-off baseline."""

    def __init__(self, spec: PackingSpec, entries: Sequence[Sequence[int]]) -> None:
        self.spec = spec
        self.entries = [list(row) for row in entries]
        self.bins_per_feature = [len(row) for row in entries]

    @property
    def features(self) -> int:
        return len(self.bins_per_feature)

    def fragment(self, rows: Sequence[Sequence[int]], hits: Sequence[bool]) -> list[int]:
        entries, spec = self.entries, self.spec
        return [
            slot_value(spec, sum(entries[j][b] for j, b in enumerate(bins)), int(hit))
            for bins, hit in zip(rows, hits, strict=True)
        ]


def combine_plain(spec: PackingSpec, fragments: Sequence[Sequence[int]]) -> int:
    """Sum plaintext-mode fragments slot by slot and pack them like a decryption would."""
    sums = [sum(column) for column in zip(*fragments, strict=True)]
    return pack(spec, sums)

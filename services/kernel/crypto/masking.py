"""Secure aggregation of fragments: pairwise zero-sum masks and blacklist tags.

For one batch and attempt with participants P (sorted names), partner i adds to the
plaintext of its fragment, through one factor ``1 + addend * n`` (docs/crypto.md,
"Secure aggregation"):

- the **mask** ``M_i = sum_{j in P, j != i} s_ij * m_ij  (mod n)``, with ``s_ij = +1`` if
  ``i < j`` and ``-1`` otherwise, and ``m_ij = PRF(seed_ij, context)`` uniform in [0, n).
  ``seed_ij`` comes from the X25519 agreement of i and j, so i and j derive the same
  ``m_ij`` and nobody else can: the masks cancel in the product of all participants'
  fragments, and each fragment alone decrypts to a uniform value mod n;
- in slot s's blacklist field, ``v_i[s] = (hit_i[s] * r_i[s] + a_i[s]) mod 2^t``: a
  tag ``r_i[s]`` uniform in [1, 2^t) if i flags the candidate, and the field mask
  ``a_i[s] = sum_j s_ij * u_ij[s] mod 2^t`` (``u_ij[s] = PRF(seed_ij, ...)``), which sums
  to 0 mod 2^t over P. The field of the sum, read mod 2^t, is the sum of the tags: 0
  iff nobody flagged (but for a 1/(2^t - 1) chance when two or more did), and its
  carries above bit t are random given that residue, so they reveal no count.

The context binds the batch id, the attempt, the participants, whether the request is
flags-only, the slot count, t, n, the model version and a digest of the tokens: masks
are fresh per batch and attempt, and two requests that differ in any of these never
share a mask (the same context asked twice with other tokens or another model would
otherwise yield masks that cancel in the difference of the two answers). Tags come from a seed only
partner i knows, over the same context, so a redelivered request yields the same
plaintext again (a fresh tag would let the bank subtract two answers and see the tag).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas import PackingSpec
from services.kernel.crypto.packing import flag_addend

SEED_INFO = b"fedscreen.mask-seed.v1"
TAG_SEED_INFO = b"fedscreen.flag-tag-seed.v1"
STATISTICAL_BITS = 128
"""Extra PRF bits before a reduction mod n: the mask is within 2^-128 of uniform."""
TAG_EXTRA_BITS = 64
"""Extra PRF bits before a reduction mod 2^t - 1: the tag is within 2^-64 of uniform."""


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _lp(data: bytes) -> bytes:
    """Length-prefixed, so no two different field lists encode to the same bytes."""
    return len(data).to_bytes(4, "big") + data


def _check_participants(participants: tuple[str, ...]) -> None:
    if list(participants) != sorted(set(participants)):
        raise ValueError("participants must be sorted and unique")


def _encode_names(participants: tuple[str, ...]) -> bytes:
    return b"".join(_lp(p.encode()) for p in participants)


def _encode_modulus(modulus: int) -> bytes:
    return modulus.to_bytes((modulus.bit_length() + 7) // 8, "big")


def pair_seed(own: X25519PrivateKey, own_name: str, peer: X25519PublicKey, peer_name: str) -> bytes:
    """seed_ij = HKDF-SHA256(X25519(own, peer), info = names and public keys in name order):
    both partners of the pair derive the same 32 bytes. Raises ValueError for a
    low-order peer key (X25519 then yields the all-zero secret, which cryptography
    refuses)."""
    if own_name == peer_name:
        raise ValueError("a partner has no mask with itself")
    shared = own.exchange(peer)
    (first, first_key), (second, second_key) = sorted(
        [(own_name, _raw(own.public_key())), (peer_name, _raw(peer))]
    )
    info = SEED_INFO + _lp(first.encode()) + _lp(second.encode()) + first_key + second_key
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)


def tag_seed(own: X25519PrivateKey) -> bytes:
    """The partner's own seed for its blacklist tags: derived from its agreement key, so
    it needs no file of its own and is stable across restarts."""
    private = own.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return HKDF(hashes.SHA256(), 32, salt=None, info=TAG_SEED_INFO).derive(private)


@dataclass(frozen=True, slots=True)
class MaskContext:
    """What every mask and tag of one fragment is bound to."""

    batch_id: str
    attempt: int
    participants: tuple[str, ...]
    flags_only: bool
    slot_count: int
    flag_bits: int
    modulus: int
    model_version: str
    batch_digest: bytes
    """:func:`batch_digest` of every participant's token-list digest."""

    def __post_init__(self) -> None:
        _check_participants(self.participants)

    def encode(self) -> bytes:
        names, n = _encode_names(self.participants), _encode_modulus(self.modulus)
        return b"".join(
            (
                _lp(self.batch_id.encode()),
                self.attempt.to_bytes(4, "big"),
                _lp(names),
                bytes([self.flags_only]),
                self.slot_count.to_bytes(4, "big"),
                self.flag_bits.to_bytes(4, "big"),
                _lp(n),
                _lp(self.model_version.encode()),
                _lp(self.batch_digest),
            )
        )


def token_list_digest(tokens: Sequence[str]) -> str:
    """SHA-256 (hex) over one partner's tokens, length-prefixed, in slot order."""
    return hashlib.sha256(b"".join(_lp(t.encode()) for t in tokens)).hexdigest()


def batch_digest(token_digests: Mapping[str, str]) -> bytes:
    """SHA-256 over every participant's name and token-list digest, in name order: the
    same for every participant of a batch, and different as soon as anyone's tokens are."""
    body = b"".join(
        _lp(name.encode()) + _lp(token_digests[name].encode()) for name in sorted(token_digests)
    )
    return hashlib.sha256(body).digest()


@dataclass(frozen=True, slots=True)
class TrainingMaskContext:
    """What the mask of one training score ciphertext is bound to: the session, the
    round, the ciphertext's position and the session's partners."""

    session_id: str
    round: int
    chunk: int
    participants: tuple[str, ...]
    modulus: int

    def __post_init__(self) -> None:
        _check_participants(self.participants)

    def encode(self) -> bytes:
        names, n = _encode_names(self.participants), _encode_modulus(self.modulus)
        return b"".join(
            (
                b"fedscreen.training-mask.v1",
                _lp(self.session_id.encode()),
                self.round.to_bytes(4, "big"),
                self.chunk.to_bytes(4, "big"),
                _lp(names),
                _lp(n),
            )
        )


class _Context(Protocol):
    @property
    def modulus(self) -> int: ...

    def encode(self) -> bytes: ...


def _expand(label: bytes, seed: bytes, context: _Context, size: int) -> bytes:
    """The PRF: SHAKE-256 over a label, the seed and the context, ``size`` bytes long."""
    return hashlib.shake_256(_lp(label) + _lp(seed) + context.encode()).digest(size)


def _chunks(data: bytes, width: int, count: int) -> list[int]:
    return [int.from_bytes(data[i * width : (i + 1) * width], "big") for i in range(count)]


def pair_mask(seed: bytes, context: _Context) -> int:
    """m_ij: bits(n) + 128 PRF bits reduced mod n, uniform in [0, n) up to 2^-128."""
    size = (context.modulus.bit_length() + STATISTICAL_BITS + 7) // 8
    return int.from_bytes(_expand(b"mask", seed, context, size), "big") % context.modulus


def pair_field_masks(seed: bytes, context: MaskContext) -> list[int]:
    """u_ij[s] for every slot: exactly uniform in [0, 2^t) (t PRF bits each)."""
    width = (context.flag_bits + 7) // 8
    raw = _expand(b"field", seed, context, width * context.slot_count)
    mask = (1 << context.flag_bits) - 1
    return [value & mask for value in _chunks(raw, width, context.slot_count)]


def flag_tags(seed: bytes, context: MaskContext) -> list[int]:
    """r_i[s] for every slot: uniform in [1, 2^t) up to 2^-64, never 0."""
    width = (context.flag_bits + TAG_EXTRA_BITS + 7) // 8
    raw = _expand(b"tag", seed, context, width * context.slot_count)
    modulus = (1 << context.flag_bits) - 1
    return [1 + value % modulus for value in _chunks(raw, width, context.slot_count)]


def fragment_addend(
    spec: PackingSpec,
    context: MaskContext,
    me: str,
    pair_seeds: Mapping[str, bytes],
    own_tag_seed: bytes,
    hits: Sequence[bool],
) -> int:
    """The plaintext partner ``me`` adds to its fragment: its blacklist fields (tags
    plus field masks) and its mask, in [0, n). ``pair_seeds`` holds the seed shared with
    every other participant; with no other participant there is nothing to cancel
    against, so the fragment carries no mask (the bank then reads it in the clear)."""
    if me not in context.participants:
        raise ValueError(f"{me!r} is not a participant")
    if set(pair_seeds) != set(context.participants) - {me}:
        raise ValueError("need exactly one seed per other participant")
    if (
        len(hits) != context.slot_count
        or context.slot_count > spec.slots
        or context.flag_bits != spec.flag_bits
    ):
        raise ValueError("hits and context do not match the layout")
    field_mask = (1 << spec.flag_bits) - 1
    tags = flag_tags(own_tag_seed, context)
    fields = [tag if hit else 0 for tag, hit in zip(tags, hits, strict=True)]
    mask = 0
    for peer, seed in pair_seeds.items():
        sign = 1 if me < peer else -1
        mask += sign * pair_mask(seed, context)
        for s, u in enumerate(pair_field_masks(seed, context)):
            fields[s] = (fields[s] + sign * u) & field_mask  # mod 2^t, also when negative
    return (flag_addend(spec, fields) + mask) % context.modulus


def training_mask(me: str, pair_seeds: Mapping[str, bytes], context: TrainingMaskContext) -> int:
    """M_i for one training score ciphertext: sum_j s_ij m_ij mod n over the session's
    other partners, so the masks cancel in the product of every partner's ciphertext
    and each one alone decrypts to a value uniform mod n."""
    if me not in context.participants:
        raise ValueError(f"{me!r} is not a participant")
    if set(pair_seeds) != set(context.participants) - {me}:
        raise ValueError("need exactly one seed per other participant")
    mask = 0
    for peer, seed in pair_seeds.items():
        mask += (1 if me < peer else -1) * pair_mask(seed, context)
    return mask % context.modulus

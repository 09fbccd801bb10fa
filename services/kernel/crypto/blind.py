"""Fixed-point arithmetic of blind-direction training (docs/protocol.md, "Training").

The partners' weights never exist in plaintext anywhere: partner k holds them as
Paillier ciphertexts under the bank's key, and computes each round's Newton direction
under encryption from the bank's encrypted gradients:

    D_e = -G_e * q_e,    q_e = floor(2^Q / (n_e + c)),    G_e = sum_{i in bin e} g_i

where n_e is the number of session rows in bin e (known to the partner only) and c a
pseudo-count. ``q_e`` approximates the inverse Hessian of bin e by its row count, so
D_e is a damped Newton step that needs no division under encryption. The bank picks
one step ``a_r`` per round for all partners from the *sum* of their direction scores,
and the final weights are ``W_e = floor(sum_r a_r D_e,r / 2^T)``: the partners compute
the sum under encryption and the bank drops the low T bits of a statistically masked
copy (:func:`truncation_mask`, :func:`truncate`, :func:`unmask_constant`).

Every value here is an integer; ciphertexts carry them mod n (negative values as
``n - |v|``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from schemas.training import BlindTraining, ScoreLayout
from services.kernel.crypto.packing import DEFAULT_FRAC_BITS, MAX_SLOTS, PackingOverflowError

GRADIENT_BITS = 16
QUOTIENT_BITS = 24
STEP_BITS = 16
MAX_STEP = 64
PSEUDO_COUNT = 600
MASK_BITS = 64
PROVISIONAL_FEATURES = 64
"""TrainStart sizes the score layout as if every partner had this many features (the
bank learns the real counts only from TrainReady)."""


def blind_training(
    rounds: int,
    *,
    pseudo_count: int = PSEUDO_COUNT,
    weight_bits: int = DEFAULT_FRAC_BITS,
) -> BlindTraining:
    """The session's fixed-point parameters, with B large enough for ``rounds`` steps of
    at most ``MAX_STEP`` along directions below 2^V."""
    direction_bits = GRADIENT_BITS + QUOTIENT_BITS
    bound = STEP_BITS + direction_bits + (rounds * MAX_STEP).bit_length() + 1
    return BlindTraining(
        gradient_bits=GRADIENT_BITS,
        quotient_bits=QUOTIENT_BITS,
        step_bits=STEP_BITS,
        weight_bits=weight_bits,
        pseudo_count=pseudo_count,
        max_step=MAX_STEP,
        max_rounds=rounds,
        bound_bits=bound,
        mask_bits=MASK_BITS,
    )


def score_layout(key_bits: int, blind: BlindTraining, total_features: int) -> ScoreLayout:
    """Each slot holds the sum over partners of ``du + 2^V`` per feature: below
    ``2 * total_features * 2^V``."""
    slot_bits = blind.direction_bits + 1 + total_features.bit_length()
    slots = min((key_bits - 2) // slot_bits, MAX_SLOTS)
    if slots < 1:
        raise PackingOverflowError(f"a {key_bits}-bit key cannot hold one {slot_bits}-bit slot")
    return ScoreLayout(slot_bits=slot_bits, slots=slots)


# -- bank -----------------------------------------------------------------------
def encode_gradients(blind: BlindTraining, g: np.ndarray, n: int) -> list[int]:
    """round(g * 2^gradient_bits) mod n, for g in [-1, 1]."""
    if np.any(np.abs(g) > 1.0):
        raise ValueError("gradients must lie in [-1, 1]")
    values = np.rint(g * float(1 << blind.gradient_bits)).astype(np.int64).tolist()
    return [v % n for v in values]


def encode_step(blind: BlindTraining, step: float) -> int:
    """The step as the partners apply it: round(a * 2^step_bits), with 0 <= a <= max_step."""
    if not 0.0 <= step <= blind.max_step:
        raise ValueError(f"step {step} outside [0, {blind.max_step}]")
    return round(step * (1 << blind.step_bits))


def decode_step(blind: BlindTraining, step: int) -> float:
    return step / float(1 << blind.step_bits)


def decode_scores(
    layout: ScoreLayout, blind: BlindTraining, plaintext: int, count: int, total_features: int
) -> list[float]:
    """The aggregate direction score of the ``count`` rows in one decrypted plaintext.
    Raises PackingOverflowError when a slot holds an impossible value (masks that do not
    cancel, a wrong key, a tampered ciphertext)."""
    if plaintext < 0 or plaintext >> (count * layout.slot_bits):
        raise PackingOverflowError("plaintext has bits outside the used slots")
    offset = total_features << blind.direction_bits
    mask = (1 << layout.slot_bits) - 1
    scale = float(1 << blind.direction_bits)
    out = []
    value = int(plaintext)
    for s in range(count):
        slot = value & mask
        value >>= layout.slot_bits
        if slot >= 2 * offset:
            raise PackingOverflowError(f"slot {s} holds an impossible direction score")
        out.append((slot - offset) / scale)
    return out


def truncate(blind: BlindTraining, masked: int) -> int:
    """What the bank returns for a decrypted masked value X: floor(X / 2^T)."""
    if masked < 0 or masked >> (blind.bound_bits + blind.mask_bits + 2):
        raise PackingOverflowError("masked value outside its range")
    return masked >> blind.truncation_bits


# -- partner ----------------------------------------------------------------------
def direction_multipliers(blind: BlindTraining, counts: Sequence[int]) -> list[int]:
    """q_e = floor(2^Q / (n_e + c)): floor, so |D_e| <= n_e 2^gradient_bits q_e < 2^V."""
    return [(1 << blind.quotient_bits) // (int(n) + blind.pseudo_count) for n in counts]


def direction_offset(blind: BlindTraining) -> int:
    """Added to every direction entry before scoring, so each is in (0, 2^(V+1))."""
    return 1 << blind.direction_bits


def truncation_mask(blind: BlindTraining) -> int:
    """rho + 2^B, rho uniform in [0, 2^(B + 1 + mask_bits)): added to a value A with
    |A| < 2^B, it gives a non-negative X whose distribution is within 2^-mask_bits of
    one that does not depend on A."""
    return (1 << blind.bound_bits) + secrets.randbits(blind.bound_bits + 1 + blind.mask_bits)


def unmask_constant(blind: BlindTraining, mask: int) -> int:
    """-floor(mask / 2^T): added to floor((A + mask) / 2^T) it leaves floor(A / 2^T) or
    one more, the weight at scale 2^weight_bits."""
    return -(mask >> blind.truncation_bits)

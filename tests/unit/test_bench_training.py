"""The training-round benchmark runs both protocols and reports a per-step cost.

What it compares is asserted by what each protocol does, not by how long it took on
this machine: fedscreen encrypts every row's gradient owner-side (CRT, one batch),
the naive protocol makes one full-cost python-paillier public-key encryption per
sampled row and scales its timings to the full sizes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import phe
import pytest
from gmpy2 import mpz

from services.bench import training_crypto as tc
from services.kernel.crypto.paillier import PrivateKey

FIT_ROWS, SCORED_ROWS, SAMPLE_ROWS = 40, 60, 5
PARTNER_BINS = {"a": [3, 4], "b": [5]}


@dataclass(eq=False)
class OwnerSideKey(PrivateKey):
    """The session's key, counting the rows it encrypts owner-side, per call."""

    batches: list[int] = field(default_factory=list, init=False)

    def encrypt_many(self, plaintexts: Sequence[int]) -> list[mpz]:
        self.batches.append(len(plaintexts))
        return super().encrypt_many(plaintexts)


def one_second_each(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``tc._timed`` on a clock where every timed call takes one second: the report's
    arithmetic, free of the machine's speed."""
    return fn(*args), 1.0


def test_both_protocols_are_timed_on_every_step(
    monkeypatch: pytest.MonkeyPatch, private_key: PrivateKey
) -> None:
    # Small sizes keep this a smoke test; the numbers themselves come from `fedscreen bench`.
    monkeypatch.setattr(tc, "PARTNER_BINS", PARTNER_BINS)
    monkeypatch.setattr(tc, "_timed", one_second_each)
    key = OwnerSideKey(private_key.public, private_key.p, private_key.q)
    ours = tc.fedscreen_round(key, fit_rows=FIT_ROWS, scored_rows=SCORED_ROWS, seed=1)
    assert set(ours.steps) == set(tc.STEPS) and ours.total > 0
    # The bank's step once, every partner's once per partner.
    partners = len(PARTNER_BINS)
    assert ours.steps == {
        "bank: encrypt gradients": 1.0,
        "partners: encrypted directions": partners,
        "partners: uniform random factors": partners,
        "partners: score every row": partners,
        "bank: decrypt scores": 1.0,
    }

    public = phe.PaillierPublicKey(int(key.public.n))
    private = phe.PaillierPrivateKey(public, int(key.p), int(key.q))
    encrypt = public.encrypt
    public_encryptions: list[float] = []

    def counted(value: float, *args: Any, **kwargs: Any) -> Any:
        public_encryptions.append(value)
        return encrypt(value, *args, **kwargs)

    monkeypatch.setattr(public, "encrypt", counted)
    naive = tc.naive_round(
        public, private, sample_rows=SAMPLE_ROWS, fit_rows=FIT_ROWS, scored_rows=SCORED_ROWS, seed=1
    )
    assert set(naive.steps) == set(tc.STEPS)
    # Timed on the sample, every step scaled linearly to the full sizes.
    scale = SCORED_ROWS / SAMPLE_ROWS
    assert naive.steps == {
        "bank: encrypt gradients": scale,
        "partners: encrypted directions": partners * scale,
        "partners: uniform random factors": partners * scale,
        "partners: score every row": partners * scale,
        "bank: decrypt scores": partners * scale,
    }
    # A full-cost public-key encryption per row against an owner-side CRT one: fedscreen
    # encrypted every row of the session (held-out zeros too) in one owner-side batch,
    # the naive protocol each sampled row with the public key.
    assert key.batches == [SCORED_ROWS]
    assert len(public_encryptions) == SAMPLE_ROWS

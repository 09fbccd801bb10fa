"""The training-round benchmark runs both protocols and reports a per-step cost."""

from __future__ import annotations

from services.bench import training_crypto as tc
from services.kernel.crypto.paillier import generate_keypair


def test_both_protocols_are_timed_on_every_step(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Small sizes keep this a smoke test; the numbers themselves come from `fedscreen bench`.
    monkeypatch.setattr(tc, "PARTNER_BINS", {"a": [3, 4], "b": [5]})
    key = generate_keypair(2048)
    ours = tc.fedscreen_round(key, fit_rows=40, scored_rows=60, seed=1)
    assert set(ours.steps) == set(tc.STEPS) and ours.total > 0
    import phe

    public = phe.PaillierPublicKey(int(key.public.n))
    private = phe.PaillierPrivateKey(public, int(key.p), int(key.q))
    naive = tc.naive_round(public, private, sample_rows=5, fit_rows=40, scored_rows=60, seed=1)
    assert set(naive.steps) == set(tc.STEPS)
    # A full-cost public-key encryption per row against an owner-side CRT one.
    assert naive.steps["bank: encrypt gradients"] > 2 * ours.steps["bank: encrypt gradients"]

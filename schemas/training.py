"""Federated training protocol (docs/design.md §3; docs/protocol.md, "Training"), over Kafka.

Bank -> partner on ``fed.training.<partner>.v1``; partner -> bank on
``fed.training.bank.v1``; both keyed by session id. Large messages are chunked by the
Kafka layer. Only tokens, bin *counts* per feature (not edges or names), step sizes
and ciphertexts cross the boundary.

The partners' scorecard weights exist only as ciphertexts held by each partner: the
partner computes its own Newton directions under encryption from the bank's
encrypted gradients, and the bank decrypts nothing but the per-row *sum over
partners* of the direction scores (masked pairwise across partners) and values
masked by the partner's statistical noise. Nothing the bank decrypts is a function
of weights it knows.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, TypeAdapter, model_validator

from schemas.common import B64Int, Ident, PartnerName, SignedMessage, Token, WireModel


class BlindTraining(WireModel):
    """Fixed-point parameters of one session, set by the bank in ``TrainStart``.

    - gradients travel as ``round(g * 2^gradient_bits)`` (signed, mod n);
    - partner k's direction for bin e is ``D_e = -G_e * round(2^quotient_bits / (n_e +
      pseudo_count))``, with G_e the encrypted sum of the gradients of the rows in bin e
      and n_e the bin's row count (which only the partner knows): a Newton step with the
      Hessian approximated per row, at scale ``2^(gradient_bits + quotient_bits)``;
    - steps travel as ``round(a * 2^step_bits)``; the final weights are
      ``floor(sum_r a_r D_r / 2^(step_bits + gradient_bits + quotient_bits - weight_bits))``
      at scale ``2^weight_bits``, the serving layout's fractional bits.
    """

    gradient_bits: int = Field(ge=8, le=40)
    quotient_bits: int = Field(ge=8, le=48)
    step_bits: int = Field(ge=4, le=32)
    weight_bits: int = Field(ge=4, le=32)
    pseudo_count: int = Field(ge=1, le=1_000_000)
    max_step: int = Field(ge=1, le=1024, description="|a| <= max_step, so sums stay bounded.")
    max_rounds: int = Field(ge=1, le=200)
    bound_bits: int = Field(
        ge=16,
        le=512,
        description="B: |sum_r a_r D_r| < 2^B for every bin, given max_step and max_rounds.",
    )
    mask_bits: int = Field(
        ge=40,
        le=256,
        description="Statistical distance 2^-mask_bits of the truncation masks from uniform.",
    )

    @property
    def direction_bits(self) -> int:
        """V: directions are fixed-point at 2^V, and |D_e| < 2^V."""
        return self.gradient_bits + self.quotient_bits

    @property
    def truncation_bits(self) -> int:
        """T: the final weights drop this many low bits of sum_r a_r D_r."""
        return self.step_bits + self.direction_bits - self.weight_bits

    @model_validator(mode="after")
    def _consistent(self) -> BlindTraining:
        if self.truncation_bits < 0:
            raise ValueError("weight_bits exceeds the scale of the accumulated directions")
        if self.bound_bits <= self.truncation_bits:
            raise ValueError("bound_bits must exceed the truncated bits")
        return self


class ScoreLayout(WireModel):
    """Slot packing of training's direction scores: slot s of a plaintext holds
    ``du + offset`` of row ``chunk * slots + s`` in bits ``[s * slot_bits, (s + 1) *
    slot_bits)``, where each partner adds ``2^V`` per feature as its offset."""

    slot_bits: int = Field(ge=16, le=256)
    slots: int = Field(ge=1, le=512)

    @property
    def score_bits(self) -> int:
        """The whole slot is score: training carries no blacklist field."""
        return self.slot_bits


class TrainStart(SignedMessage):
    SCHEMA_ID: ClassVar[str] = "train-start.v1"

    kind: Literal["start"] = "start"
    session_id: Ident
    partner: PartnerName
    participants: list[PartnerName] = Field(
        min_length=1,
        max_length=64,
        description="Every partner of the session: each masks its scores pairwise with the "
        "others, so the bank can decrypt only their sum.",
    )
    key_id: Ident
    public_key_n: B64Int
    blind: BlindTraining
    layout: ScoreLayout
    max_bins: int = Field(ge=2, le=256)
    tokens: list[Token] = Field(
        min_length=1,
        description="Every row of the session in one shuffled list: the rows the bank fits "
        "on, validates on and tests on look the same (held-out rows carry encrypted zero "
        "gradients).",
    )


class TrainRound(SignedMessage):
    """One round: the step the bank chose for the previous round's directions, and the
    gradients of this one."""

    SCHEMA_ID: ClassVar[str] = "train-round.v1"

    kind: Literal["round"] = "round"
    session_id: Ident
    round: int = Field(ge=1, le=200)
    previous_step: int | None = Field(
        default=None,
        description="round(a_(round-1) * 2^step_bits); absent in round 1.",
    )
    gradients: list[B64Int] = Field(description="Enc(round(g * 2^gradient_bits)) per row.")


class TrainFinish(SignedMessage):
    """Ends the session. With ``done``: the partners turn the kept rounds' directions
    into their final encrypted weights (``best_round`` of them, with ``steps``)."""

    SCHEMA_ID: ClassVar[str] = "train-finish.v1"

    kind: Literal["finish"] = "finish"
    session_id: Ident
    status: Literal["done", "aborted"]
    best_round: int = Field(default=0, ge=0, le=200)
    steps: list[int] = Field(
        default_factory=list, description="round(a_r * 2^step_bits) for r = 1..best_round."
    )

    @model_validator(mode="after")
    def _steps_match(self) -> TrainFinish:
        if len(self.steps) != self.best_round:
            raise ValueError("one step per kept round")
        return self


class TrainTruncated(SignedMessage):
    """Bank -> partner: Enc(floor(X / 2^T)) for each masked value X of ``TrainTruncate``."""

    SCHEMA_ID: ClassVar[str] = "train-truncated.v1"

    kind: Literal["truncated"] = "truncated"
    session_id: Ident
    ciphertexts: list[B64Int]


class TrainReady(SignedMessage):
    SCHEMA_ID: ClassVar[str] = "train-ready.v1"

    kind: Literal["ready"] = "ready"
    session_id: Ident
    partner: PartnerName
    bins_per_feature: list[int] = Field(min_length=1)


class TrainScores(SignedMessage):
    SCHEMA_ID: ClassVar[str] = "train-scores.v1"

    kind: Literal["scores"] = "scores"
    session_id: Ident
    partner: PartnerName
    round: int = Field(ge=1, le=200)
    ciphertexts: list[B64Int] = Field(
        description="Slot-packed direction scores of every row, masked pairwise across the "
        "session's partners, re-randomised."
    )


class TrainTruncate(SignedMessage):
    """Partner -> bank: Enc(sum_r a_r D_r + 2^B + rho) per bin, rho uniform in
    [0, 2^(B + 1 + mask_bits)): the bank learns nothing from the decryption (statistical
    distance 2^-mask_bits), and returns the values with their low T bits dropped."""

    SCHEMA_ID: ClassVar[str] = "train-truncate.v1"

    kind: Literal["truncate"] = "truncate"
    session_id: Ident
    partner: PartnerName
    ciphertexts: list[B64Int]


class TrainDone(SignedMessage):
    """Partner -> bank: the final encrypted weights are stored under the session id,
    which the partner's bundle names (``binning_id``)."""

    SCHEMA_ID: ClassVar[str] = "train-done.v1"

    kind: Literal["done"] = "done"
    session_id: Ident
    partner: PartnerName


class TrainError(SignedMessage):
    SCHEMA_ID: ClassVar[str] = "train-error.v1"

    kind: Literal["error"] = "error"
    session_id: Ident
    partner: PartnerName
    error: str


ToPartner = TrainStart | TrainRound | TrainFinish | TrainTruncated
ToBank = TrainReady | TrainScores | TrainTruncate | TrainDone | TrainError

TO_PARTNER: TypeAdapter[ToPartner] = TypeAdapter(Annotated[ToPartner, Field(discriminator="kind")])
TO_BANK: TypeAdapter[ToBank] = TypeAdapter(Annotated[ToBank, Field(discriminator="kind")])

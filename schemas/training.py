"""Federated training protocol (DESIGN.md section 3), over Kafka.

Bank -> partner on ``fed.training.<partner>.v1``; partner -> bank on
``fed.training.bank.v1``; both keyed by session id. Large messages are chunked by the
Kafka layer. Only tokens, bin *counts* per feature (not edges or names) and
ciphertexts cross the boundary.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, TypeAdapter

from schemas.common import B64Int, Ident, PartnerName, Token, WireModel
from schemas.rollout import PackingSpec


class GradientPacking(WireModel):
    """One plaintext per sample: ``g * 2**(frac_bits + h_bits) + h * 2**frac_bits``.

    h >= 0 sits in the low ``h_bits`` field; the signed g sits on top and is decoded
    from the centred residue mod n, so no per-bin offsets (which would reveal bin
    counts) are needed.
    """

    frac_bits: int = Field(ge=8, le=40)
    h_bits: int = Field(ge=16, le=128)


class TrainStart(WireModel):
    SCHEMA_ID: ClassVar[str] = "train-start.v1"

    kind: Literal["start"] = "start"
    session_id: Ident
    partner: PartnerName
    key_id: Ident
    public_key_n: B64Int
    packing: PackingSpec
    gradient_packing: GradientPacking
    max_bins: int = Field(ge=2, le=256)
    tokens: list[Token] = Field(min_length=1, description="Fit rows, in gradient order.")
    eval_tokens: list[Token] = Field(default_factory=list, description="Scored, never fit.")


class TrainWeights(WireModel):
    SCHEMA_ID: ClassVar[str] = "train-weights.v1"

    kind: Literal["weights"] = "weights"
    session_id: Ident
    round: int = Field(ge=0)
    tables: list[list[B64Int]] = Field(description="Enc(entry(w[j][b])) per feature and bin.")


class TrainGradients(WireModel):
    SCHEMA_ID: ClassVar[str] = "train-gradients.v1"

    kind: Literal["gradients"] = "gradients"
    session_id: Ident
    round: int = Field(ge=0)
    ciphertexts: list[B64Int] = Field(description="One packed (g, h) per fit row.")


class TrainFinish(WireModel):
    SCHEMA_ID: ClassVar[str] = "train-finish.v1"

    kind: Literal["finish"] = "finish"
    session_id: Ident
    status: Literal["done", "aborted"]


class TrainReady(WireModel):
    SCHEMA_ID: ClassVar[str] = "train-ready.v1"

    kind: Literal["ready"] = "ready"
    session_id: Ident
    partner: PartnerName
    bins_per_feature: list[int] = Field(min_length=1)


class TrainScores(WireModel):
    SCHEMA_ID: ClassVar[str] = "train-scores.v1"

    kind: Literal["scores"] = "scores"
    session_id: Ident
    partner: PartnerName
    round: int = Field(ge=0)
    ciphertexts: list[B64Int] = Field(
        description="Slot-packed partial scores of tokens + eval_tokens, re-randomised."
    )


class TrainHistograms(WireModel):
    SCHEMA_ID: ClassVar[str] = "train-histograms.v1"

    kind: Literal["histograms"] = "histograms"
    session_id: Ident
    partner: PartnerName
    round: int = Field(ge=0)
    ciphertexts: list[list[B64Int]] = Field(description="Enc(sum of packed (g, h)) [j][b].")


class TrainError(WireModel):
    SCHEMA_ID: ClassVar[str] = "train-error.v1"

    kind: Literal["error"] = "error"
    session_id: Ident
    partner: PartnerName
    error: str


ToPartner = TrainStart | TrainWeights | TrainGradients | TrainFinish
ToBank = TrainReady | TrainScores | TrainHistograms | TrainError

TO_PARTNER: TypeAdapter[ToPartner] = TypeAdapter(Annotated[ToPartner, Field(discriminator="kind")])
TO_BANK: TypeAdapter[ToBank] = TypeAdapter(Annotated[ToBank, Field(discriminator="kind")])

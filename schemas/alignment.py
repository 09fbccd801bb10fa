"""ID alignment by ECDH private set intersection on ristretto255 (docs/psi.md).

Bank -> partner on ``fed.align.<partner>.v1``; partner -> bank on
``fed.align.bank.v1``; both keyed by session id, large messages chunked by the Kafka
layer. Only blinded group elements cross the boundary: 32-byte ristretto255 encodings
in unpadded base64url, never an id. The schema checks their shape; receivers also
check that each one is a valid group element (``services.kernel.crypto.psi``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, StringConstraints, TypeAdapter

from schemas.common import Ident, PartnerName, SignedMessage

PsiPoint = Annotated[
    str, StringConstraints(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]{43}$")
]
"""A ristretto255 element: 32 bytes, unpadded base64url."""


class PsiOffer(SignedMessage):
    """Bank -> partner: the bank's ids, hashed to the group and blinded with its secret."""

    SCHEMA_ID: ClassVar[str] = "psi-offer.v1"

    kind: Literal["offer"] = "offer"
    session_id: Ident
    partner: PartnerName
    expires_at: AwareDatetime = Field(
        description="The bank stops waiting then; a partner skips offers past it."
    )
    points: list[PsiPoint] = Field(
        min_length=1, description="H(x)^a for each bank id x, sorted by value."
    )


class PsiAnswer(SignedMessage):
    """Partner -> bank: the offer raised to the partner's secret, and its own set."""

    SCHEMA_ID: ClassVar[str] = "psi-answer.v1"

    kind: Literal["answer"] = "answer"
    session_id: Ident
    partner: PartnerName
    reblinded: list[PsiPoint] = Field(
        min_length=1, description="H(x)^(ab): the offer's points raised to b, in offer order."
    )
    own: list[PsiPoint] = Field(
        min_length=1, description="H(y)^b for each partner id y, sorted by value."
    )


class PsiResult(SignedMessage):
    """Bank -> partner: the partner's set raised to the bank's secret."""

    SCHEMA_ID: ClassVar[str] = "psi-result.v1"

    kind: Literal["result"] = "result"
    session_id: Ident
    partner: PartnerName
    doubly_blinded: list[PsiPoint] = Field(
        min_length=1, description="H(y)^(ab): the answer's own points raised to a, in order."
    )


class PsiError(SignedMessage):
    """Either direction: the sender gave up on the session (bad points, wrong sizes)."""

    SCHEMA_ID: ClassVar[str] = "psi-error.v1"

    kind: Literal["error"] = "error"
    session_id: Ident
    partner: PartnerName
    error: str = Field(max_length=2000)


ToPartner = PsiOffer | PsiResult | PsiError
ToBank = PsiAnswer | PsiError

TO_PARTNER: TypeAdapter[ToPartner] = TypeAdapter(Annotated[ToPartner, Field(discriminator="kind")])
TO_BANK: TypeAdapter[ToBank] = TypeAdapter(Annotated[ToBank, Field(discriminator="kind")])

"""ECDH private set intersection on ristretto255: the bank's and a partner's halves.

Classic Diffie–Hellman PSI (docs/psi.md). With H a hash to the group, the bank's
secret scalar a and partner k's secret scalar b:

1. the bank sends ``H(x)^a`` for its ids x (:class:`BankSession.offer`);
2. the partner returns those raised to b, in the bank's order, and its own
   ``H(y)^b`` (:class:`PartnerSession.answer`);
3. the bank raises the partner's points to a and returns them in the partner's order
   (:class:`BankSession.finish`); both sides now hold ``H(.)^(ab)`` for their own ids
   and see which ones the other side holds too (:class:`PartnerSession.finish`).

The token of a shared customer is derived from ``H(x)^(ab)``, which neither side can
compute alone, so the tokens differ per partner (each has its own b, the bank its own
a per partner) and stay the same across runs only while both secrets are kept.

Sets are sent sorted by blinded value rather than shuffled: to anyone without the
secret that order is a uniformly random permutation of the ids (blinded values are
pseudorandom), and unlike a shuffle it is reproducible, so a partner that restarts
mid-session sends exactly the answer the bank already matched against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.kernel.crypto import ristretto
from services.kernel.crypto.codec import b64_to_bytes, bytes_to_b64
from services.kernel.crypto.paillier import write_secret

ID_DOMAIN = b"fedscreen/psi/v1/id\x00"
TOKEN_DOMAIN = b"fedscreen/psi/v1/token\x00"
POINT_B64_CHARS = 43
"""32 bytes in unpadded base64url."""


class PsiProtocolError(ValueError):
    """A protocol input is unusable (bad point, wrong length, bad secret); says why."""


# -- secrets ------------------------------------------------------------------------


def new_secret() -> bytes:
    while True:
        scalar = ristretto.scalar_random()
        if ristretto.is_canonical_scalar(scalar):  # rejects zero, 2^-252
            return scalar


def save_secret(secret: bytes, path: Path) -> None:
    write_secret(path, (bytes_to_b64(secret) + "\n").encode())


def load_secret(path: Path) -> bytes:
    try:
        secret = b64_to_bytes(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise PsiProtocolError(f"cannot read PSI secret from {path}: {exc}") from exc
    if not ristretto.is_canonical_scalar(secret):
        raise PsiProtocolError(f"{path} does not hold a ristretto255 scalar (32 bytes, 0 < s < L)")
    return secret


def load_or_create_secret(path: Path) -> tuple[bytes, bool]:
    """The secret in ``path``, created (mode 0600) if the file does not exist.
    Returns the secret and whether it was created: a new secret means new tokens."""
    if path.exists():
        return load_secret(path), False
    secret = new_secret()
    save_secret(secret, path)
    return secret, True


# -- group operations ---------------------------------------------------------------


def hash_ids(ids: Sequence[str]) -> list[bytes]:
    """H(x): SHA-512 of the domain-separated UTF-8 id, mapped into the group."""
    digests = [hashlib.sha512(ID_DOMAIN + customer_id.encode()).digest() for customer_id in ids]
    return ristretto.from_hashes(digests)


def blind(secret: bytes, points: Sequence[bytes]) -> list[bytes]:
    """P^secret for every P, in order."""
    return ristretto.scalarmult(secret, points)


def token(partner: str, doubly_blinded: bytes) -> str:
    """The per-partner token of a shared customer: base64url(SHA-256(domain || partner ||
    H(x)^(ab))). The partner name only separates domains; b already differs per partner."""
    digest = hashlib.sha256(TOKEN_DOMAIN + partner.encode() + b"\x00" + doubly_blinded)
    return bytes_to_b64(digest.digest())


def encode_points(points: Iterable[bytes]) -> list[str]:
    return [bytes_to_b64(point) for point in points]


def decode_points(texts: Sequence[str], what: str) -> list[bytes]:
    """Wire points back to bytes, rejecting anything but canonical encodings of
    non-identity group elements: an invalid point would otherwise make the other side
    compute on a value outside the group (or the identity, which matches everything)."""
    points = []
    for index, text in enumerate(texts):
        try:
            point = b64_to_bytes(text)
        except ValueError as exc:
            raise PsiProtocolError(f"{what}: point {index} is not base64url") from exc
        # Re-encoding rejects non-canonical base64 (stray low bits in the last char).
        if bytes_to_b64(point) != text or not ristretto.is_valid_point(point):
            raise PsiProtocolError(f"{what}: point {index} is not a valid ristretto255 element")
        points.append(point)
    return points


def _unique(ids: Iterable[str]) -> list[str]:
    seen = dict.fromkeys(ids)
    if "" in seen:
        raise PsiProtocolError("empty customer id")
    return list(seen)


# -- the two parties ----------------------------------------------------------------


@dataclass(frozen=True)
class Intersection:
    """One side's view of the result: its own shared ids and their tokens."""

    tokens: dict[str, str]
    """customer id -> token, for this side's customers in the intersection only."""
    own_size: int
    other_size: int


class BankSession:
    """The bank's half of one session with one partner."""

    def __init__(
        self,
        partner: str,
        secret: bytes,
        ids: Sequence[str],
        hashed: Mapping[str, bytes] | None = None,
    ) -> None:
        """``hashed`` is H(x) by id, computed once and shared by every partner's session."""
        self.partner = partner
        self._secret = secret
        unique = _unique(ids)
        points = [hashed[i] for i in unique] if hashed is not None else hash_ids(unique)
        blinded = blind(secret, points)
        order = sorted(range(len(unique)), key=blinded.__getitem__)
        self._ids = [unique[i] for i in order]
        self.offer: list[bytes] = [blinded[i] for i in order]
        """H(x)^a, sorted: what the bank sends."""

    def finish(
        self, reblinded: Sequence[bytes], own: Sequence[bytes]
    ) -> tuple[list[bytes], Intersection]:
        """From the partner's answer: the result to send back (``own`` raised to a, in
        the partner's order) and the bank's tokens for the shared customers."""
        if len(reblinded) != len(self.offer):
            raise PsiProtocolError(
                f"partner {self.partner} re-blinded {len(reblinded)} points, "
                f"the bank offered {len(self.offer)}"
            )
        if not own:
            raise PsiProtocolError(f"partner {self.partner} sent an empty set")
        doubly = blind(self._secret, own)
        theirs = set(doubly)
        tokens = {
            customer_id: token(self.partner, point)
            for customer_id, point in zip(self._ids, reblinded, strict=True)
            if point in theirs
        }
        return doubly, Intersection(tokens, len(self.offer), len(own))


class PartnerSession:
    """Partner k's half of one session."""

    def __init__(self, partner: str, secret: bytes, ids: Sequence[str]) -> None:
        self.partner = partner
        self._secret = secret
        unique = _unique(ids)
        blinded = blind(secret, hash_ids(unique))
        order = sorted(range(len(unique)), key=blinded.__getitem__)
        self._ids = [unique[i] for i in order]
        self.own: list[bytes] = [blinded[i] for i in order]
        """H(y)^b, sorted: sent with the answer."""
        self._reblinded: frozenset[bytes] | None = None
        self._offered = 0

    def answer(self, offered: Sequence[bytes]) -> list[bytes]:
        """The bank's points raised to b, in the bank's order (``own`` goes with them)."""
        if not offered:
            raise PsiProtocolError("the bank offered an empty set")
        reblinded = blind(self._secret, offered)
        self._reblinded = frozenset(reblinded)
        self._offered = len(offered)
        return reblinded

    def finish(self, doubly_blinded: Sequence[bytes]) -> Intersection:
        """From the bank's result (``own`` raised to a, in ``own``'s order): the
        partner's tokens for its customers the bank holds too."""
        if self._reblinded is None:
            raise PsiProtocolError("result before answer")
        if len(doubly_blinded) != len(self.own):
            raise PsiProtocolError(
                f"the bank returned {len(doubly_blinded)} points for {len(self.own)} sent"
            )
        tokens = {
            customer_id: token(self.partner, point)
            for customer_id, point in zip(self._ids, doubly_blinded, strict=True)
            if point in self._reblinded
        }
        return Intersection(tokens, len(self.own), self._offered)

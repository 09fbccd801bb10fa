"""Per-partner pseudonymous tokens.

Two sources, one interface (:class:`TokenSource`):

- :class:`TokenMap`, the ``customer_id,token`` CSV that ECDH-PSI (``fedscreen align``,
  docs/psi.md) writes on each side: tokens exist only for the shared customers. The
  default everywhere.
- :class:`Tokenizer`, keyed HMAC-SHA256 of the customer id: the bank and partner k
  share key_k (agreed out of band), so both map their own customer ids to the same
  token without exchanging ids. Partner k can compute the token of *any* id, so with
  guessable ids (sequential numbers, phone numbers) it maps every request and training
  token back to an id and learns which of the bank's customers it does not hold: an
  explicit opt-in (:data:`HMAC_OPT_IN`), for ids that cannot be guessed.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from services.kernel.crypto.codec import b64_to_bytes, bytes_to_b64

TOKEN_KEY_BYTES = 32
TOKEN_MAP_HEADER = ("customer_id", "token")
HMAC_OPT_IN = (
    "keyed-HMAC tokens let the partner compute the token of any id: with guessable ids it "
    "re-identifies the bank's customers it does not hold (docs/privacy.md); use PSI "
    "(`fedscreen align`) unless the ids cannot be guessed"
)

log = logging.getLogger(__name__)


class TokenSourceError(ValueError):
    """No usable token source for a partner; the message says what to do."""


class TokenSource(Protocol):
    def token(self, customer_id: str) -> str | None:
        """The customer's token, or None if it has none (outside a PSI intersection)."""
        ...


class Tokenizer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("token keys need at least 16 bytes")
        self._key = key

    def token(self, customer_id: str) -> str:
        digest = hmac.new(self._key, customer_id.encode(), hashlib.sha256).digest()
        return bytes_to_b64(digest)

    @classmethod
    def from_file(cls, path: Path) -> Tokenizer:
        try:
            return cls(b64_to_bytes(path.read_text().strip()))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read token key from {path}: {exc}") from exc


def new_token_key() -> str:
    return bytes_to_b64(secrets.token_bytes(TOKEN_KEY_BYTES))


class TokenMap:
    """Tokens from a PSI run: customers outside the intersection have none."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def token(self, customer_id: str) -> str | None:
        return self._tokens.get(customer_id)

    @classmethod
    def from_csv(cls, path: Path) -> TokenMap:
        try:
            with path.open(newline="") as handle:
                reader = csv.reader(handle)
                if tuple(next(reader, ())) != TOKEN_MAP_HEADER:
                    raise ValueError(f"the header is not {','.join(TOKEN_MAP_HEADER)}")
                return cls({row[0]: row[1] for row in reader if row})
        except (OSError, ValueError, IndexError) as exc:
            raise ValueError(f"cannot read token map from {path}: {exc}") from exc


def load_token_source(directory: Path, partner: str, *, allow_hmac: bool) -> TokenSource:
    """The bank's tokens for a partner: ``<partner>.csv`` written by ``fedscreen align``
    (ECDH-PSI, shared customers only); the keyed-HMAC key ``<partner>.key`` only when
    ``allow_hmac`` says so, with a warning."""
    aligned = directory / f"{partner}.csv"
    if aligned.is_file():
        return TokenMap.from_csv(aligned)
    key = directory / f"{partner}.key"
    if not allow_hmac:
        raise TokenSourceError(
            f"no PSI token map {aligned} for partner {partner} (run `fedscreen align`)"
            + (f"; {key} exists, but keyed-HMAC tokens are not enabled" if key.exists() else "")
        )
    log.warning("partner %s: %s", partner, HMAC_OPT_IN)
    return Tokenizer.from_file(key)


def token_or_decoy(source: TokenSource, customer_id: str) -> str:
    """A customer's token, or for one outside the partner's intersection a fresh random
    decoy shaped like a token. The partner finds nothing for it (as for any customer it
    does not hold) and cannot link decoys across requests; it learns only what it
    already knew from the PSI: which of its own customers the bank holds."""
    token = source.token(customer_id)
    return token if token is not None else bytes_to_b64(secrets.token_bytes(32))

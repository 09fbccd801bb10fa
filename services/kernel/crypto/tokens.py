"""Per-partner pseudonymous tokens: keyed HMAC-SHA256 of the customer id.

The bank and partner k share key_k (agreed out of band), so both map their own
customer ids to the same token without exchanging ids; a token for partner k is
useless against partner j. ECDH-PSI (issue 3) replaces the shared key later.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from services.kernel.crypto.codec import b64_to_bytes, bytes_to_b64

TOKEN_KEY_BYTES = 32


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

"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

The signature is ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), where the
key is the base64 part of a ``whsec_`` secret. Receivers verify it with any Standard
Webhooks library; ours is checked against the independent ``standardwebhooks`` package.
In the kernel because two services need it: webhooks signs with it, and the demo
receiver reads its ``whsec_`` secret with :func:`secret_bytes`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def secret_bytes(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_<base64>`` secret (padding optional)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"webhook secret is not valid base64 after {SECRET_PREFIX!r}") from exc
    if len(key) < 16:
        # Shorter keys make the HMAC guessable; the spec recommends 24 to 64 bytes.
        raise ValueError("webhook secret key must be at least 16 bytes")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(
    key: bytes | Sequence[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (each attempt is re-signed with a
    fresh timestamp, so retries stay inside the receivers' replay window).

    With several keys (a secret rotation's overlap) the signature header carries one
    ``v1,`` signature per key, space-separated, in the order given; a receiver holding any
    one of the secrets verifies."""
    keys = [key] if isinstance(key, bytes) else list(key)
    if not keys:
        raise ValueError("at least one key signs")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(k, msg_id, timestamp, body) for k in keys),
    }

"""Big integers and bytes on the wire: unpadded base64url."""

from __future__ import annotations

import base64


def bytes_to_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_to_bytes(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def int_to_b64(value: int) -> str:
    value = int(value)
    if value < 0:
        raise ValueError("only non-negative integers are encoded")
    return bytes_to_b64(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def b64_to_int(text: str) -> int:
    return int.from_bytes(b64_to_bytes(text), "big")

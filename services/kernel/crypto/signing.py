"""Ed25519 signatures: partners sign fragments and their agreement keys; the joiner (for
fragments) and the other partners (for agreement keys) verify against a registry."""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas import EncryptedFragment
from services.kernel.crypto.codec import b64_to_bytes, bytes_to_b64
from services.kernel.crypto.paillier import write_secret


class SignatureError(ValueError):
    """A fragment's signature is missing, malformed or from an unregistered key."""


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_signing_key(key: Ed25519PrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(path, pem)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load signing key from {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return bytes_to_b64(raw)


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return bytes_to_b64(key.sign(message))


class PartnerKeyRegistry:
    """Registered partner verification keys, by partner name."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = {
            name: Ed25519PublicKey.from_public_bytes(b64_to_bytes(b64))
            for name, b64 in keys.items()
        }

    @classmethod
    def parse(cls, spec: str) -> PartnerKeyRegistry:
        """``name=base64url,name2=base64url`` (the form environment variables use)."""
        keys = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, value = item.partition("=")
            if not sep or not name or not value:
                raise ValueError(f"partner key entry {item!r} is not name=base64url")
            keys[name] = value
        return cls(keys)

    def partners(self) -> set[str]:
        return set(self._keys)

    def verify(self, fragment: EncryptedFragment) -> None:
        self.verify_signed(fragment.partner, fragment.signing_bytes(), fragment.signature)

    def verify_signed(self, partner: str, message: bytes, signature: str) -> None:
        """``signature`` (base64url) is ``partner``'s registered key's over ``message``."""
        key = self._keys.get(partner)
        if key is None:
            raise SignatureError(f"no registered key for partner {partner!r}")
        try:
            key.verify(b64_to_bytes(signature), message)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(f"bad signature from partner {partner!r}") from exc

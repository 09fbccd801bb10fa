"""Ed25519 signatures on every message that crosses the bank/partner boundary.

The bank signs what it sends a partner (requests, bundles, training and PSI messages)
with one key, which every partner pins out of band (:class:`BankKey`); each partner
signs what it sends (fragments, agreement keys, training and PSI replies) with its own,
which the bank's services and the other partners hold in a :class:`PartnerKeyRegistry`.
A key is never learned from Kafka."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.common import SignedMessage
from services.kernel.crypto.codec import b64_to_bytes, bytes_to_b64
from services.kernel.crypto.paillier import write_secret


class SignatureError(ValueError):
    """A message's signature is missing, malformed or not from the key it must be from."""


M = TypeVar("M", bound=SignedMessage)


class FromPartner(Protocol):
    @property
    def partner(self) -> str: ...

    def signing_bytes(self) -> bytes: ...

    @property
    def signature(self) -> str: ...


def signed(message: M, key: Ed25519PrivateKey) -> M:
    """The message with its signature field set."""
    return message.model_copy(update={"signature": sign(key, message.signing_bytes())})


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

    def with_key(self, name: str, public_b64: str) -> PartnerKeyRegistry:
        """This registry and one more signer (intake verifies prescreen's readiness
        announcements beside the partners')."""
        merged = PartnerKeyRegistry({})
        merged._keys = {
            **self._keys,
            name: Ed25519PublicKey.from_public_bytes(b64_to_bytes(public_b64.strip())),
        }
        return merged

    def verify(self, message: FromPartner) -> None:
        """``message`` is signed by the registered key of the partner it names."""
        self.verify_signed(message.partner, message.signing_bytes(), message.signature)

    def verify_signed(self, partner: str, message: bytes, signature: str) -> None:
        """``signature`` (base64url) is ``partner``'s registered key's over ``message``."""
        key = self._keys.get(partner)
        if key is None:
            raise SignatureError(f"no registered key for partner {partner!r}")
        try:
            key.verify(b64_to_bytes(signature), message)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(f"bad signature from partner {partner!r}") from exc


class BankKey:
    """The bank's verification key, as a partner pins it: from its own configuration
    (an environment variable or a file), never from Kafka."""

    def __init__(self, public_b64: str) -> None:
        try:
            self._key = Ed25519PublicKey.from_public_bytes(b64_to_bytes(public_b64.strip()))
        except ValueError as exc:
            raise ValueError(f"the bank key is not a base64url Ed25519 public key: {exc}") from exc

    @classmethod
    def configured(cls, value: str, file: Path | None) -> BankKey:
        """From the value, else the file; one of them is required."""
        if value.strip():
            return cls(value)
        if file is None:
            raise ValueError("no bank key: set the bank's Ed25519 public key (base64url)")
        try:
            return cls(file.read_text())
        except OSError as exc:
            raise ValueError(f"cannot read the bank key from {file}: {exc}") from exc

    def verify(self, message: SignedMessage) -> None:
        try:
            self._key.verify(b64_to_bytes(message.signature), message.signing_bytes())
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(
                f"{type(message).__name__} is not signed by the bank's key"
            ) from exc

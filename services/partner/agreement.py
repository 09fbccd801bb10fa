"""A partner's X25519 agreement key and its directory of the other partners' keys.

Each partner publishes its public key on ``fed.agreement-keys.v1`` (compacted, keyed by
partner name), signed with its Ed25519 fragment-signing key, and follows the topic
from the beginning to learn its peers' keys. A peer's key counts only if its signature
verifies against the peer's signing key in this partner's own registry
(``PARTNER_PEER_SIGNING_KEYS``, set up out of band): anyone who can write to the topic
could otherwise substitute a key whose private half it holds and strip that pair's
masks (docs/crypto.md, "Agreement keys").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import ValidationError

from schemas import AgreementKey
from services.kernel.config import KafkaSettings
from services.kernel.crypto.codec import b64_to_bytes, bytes_to_b64
from services.kernel.crypto.masking import pair_seed, tag_seed
from services.kernel.crypto.paillier import write_secret
from services.kernel.crypto.signing import PartnerKeyRegistry, SignatureError, sign
from services.kernel.kafka.topics import AGREEMENT_KEYS
from services.kernel.model.rollout import follow_topic

log = logging.getLogger(__name__)


def new_agreement_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def save_agreement_key(key: X25519PrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(path, pem)


def load_agreement_key(path: Path) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load agreement key from {path}: {exc}") from exc
    if not isinstance(key, X25519PrivateKey):
        raise ValueError(f"{path} is not an X25519 private key")
    return key


def agreement_public_b64(key: X25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return bytes_to_b64(raw)


def announcement(
    partner: str, key: X25519PrivateKey, signing_key: Ed25519PrivateKey, now: datetime
) -> AgreementKey:
    """This partner's signed ``AgreementKey`` message."""
    unsigned = AgreementKey(
        partner=partner, public_key=agreement_public_b64(key), created_at=now, signature=""
    )
    return unsigned.model_copy(update={"signature": sign(signing_key, unsigned.signing_bytes())})


class UnknownPeerError(KeyError):
    """No verified agreement key yet for these participants."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.names = names


class ParticipantsError(ValueError):
    """A participant list this partner will not mask for; ``reason`` is the DLQ reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def acceptable_participants(
    me: str, names: Sequence[str], registered: set[str], min_participants: int
) -> list[str]:
    """The participants, sorted, once this partner may mask with them: masking for a list
    that lacks this partner or names a partner outside its registry would pair masks
    with nobody, or with a key the bank may hold; fewer than ``min_participants`` would
    hand the bank this partner's own contribution."""
    if me not in names:
        raise ParticipantsError("bad-participants", f"participants {list(names)} lack {me!r}")
    if len(set(names)) != len(names):
        raise ParticipantsError("bad-participants", f"participants {list(names)} repeat a name")
    unknown = sorted(set(names) - registered - {me})
    if unknown:
        raise ParticipantsError("bad-participants", f"unregistered participants {unknown}")
    if len(names) < min_participants:
        raise ParticipantsError(
            "too-few-participants",
            f"{len(names)} participants, this partner needs {min_participants}",
        )
    return sorted(names)


class PeerDirectory:
    """The verified agreement keys of this partner's peers, and the pairwise seeds.

    ``registry`` holds the peers' Ed25519 signing keys: the partners this one will mask
    with. A key is replaced only by a newer validly signed one (``created_at``).
    """

    def __init__(self, me: str, own: X25519PrivateKey, registry: PartnerKeyRegistry) -> None:
        self.me = me
        self.own = own
        self.registry = registry
        self.tag_seed = tag_seed(own)
        self._keys: dict[str, AgreementKey] = {}
        self._seeds: dict[str, bytes] = {}
        self._changed = asyncio.Event()

    @property
    def registered(self) -> set[str]:
        """Peers this partner may mask with (its own name excluded)."""
        return self.registry.partners() - {self.me}

    def known(self) -> set[str]:
        return set(self._seeds)

    def offer(self, message: AgreementKey) -> bool:
        """Take a peer's key if its signature verifies and it is newer than the one held.
        Raises SignatureError for an unregistered partner or a bad signature, ValueError
        for an unusable key; returns False for this partner's own key or an older one."""
        if message.partner == self.me:
            return False
        self.registry.verify_signed(message.partner, message.signing_bytes(), message.signature)
        held = self._keys.get(message.partner)
        if held is not None and message.created_at <= held.created_at:
            return False  # a replay of an older key cannot roll it back
        public = X25519PublicKey.from_public_bytes(b64_to_bytes(message.public_key))
        self._seeds[message.partner] = pair_seed(self.own, self.me, public, message.partner)
        self._keys[message.partner] = message
        self._changed.set()
        log.info("agreement key of %s accepted", message.partner)
        return True

    def seeds_for(self, participants: Iterable[str]) -> dict[str, bytes]:
        """The seed shared with every participant but this partner."""
        others = [p for p in participants if p != self.me]
        missing = [p for p in others if p not in self._seeds]
        if missing:
            raise UnknownPeerError(missing)
        return {p: self._seeds[p] for p in others}

    async def wait_for(self, names: Iterable[str], timeout_s: float) -> list[str]:
        """Wait up to ``timeout_s`` for these peers' keys; returns those still missing."""
        wanted = {n for n in names if n != self.me}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while missing := sorted(wanted - self.known()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return missing
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return sorted(wanted - self.known())
        return []

    async def follow(self, kafka: KafkaSettings) -> None:
        """Read ``fed.agreement-keys.v1`` from the beginning, forever."""

        def handle(_: int, value: bytes | None, __: list[tuple[str, bytes]]) -> None:
            try:
                self.offer(AgreementKey.model_validate_json(value or b""))
            except (ValidationError, SignatureError, ValueError) as exc:
                # Not dead-lettered: the topic is shared and compacted, and a bad key must
                # simply never be used. Logged so an operator sees a substitution attempt.
                log.error("ignoring agreement key: %s", exc)

        await follow_topic(kafka, AGREEMENT_KEYS, handle)


async def publish_agreement_key(
    producer: AIOKafkaProducer,
    partner: str,
    key: X25519PrivateKey,
    signing_key: Ed25519PrivateKey,
) -> None:
    message = announcement(partner, key, signing_key, datetime.now(UTC))
    await producer.send_and_wait(
        AGREEMENT_KEYS, key=partner.encode(), value=message.model_dump_json().encode()
    )

"""Paillier on raw gmpy2 integers.

phe generates the keys; the arithmetic here works on ``mpz`` values directly (no
EncryptedNumber objects, no per-value exponent bookkeeping) because the protocol
packs many fixed-point values into one plaintext and only ever needs raw
encrypt / add / re-randomise / decrypt.

Randomness uses the Damgård–Jurik–Nielsen short-exponent form: a party picks a base
``hs = r0^n mod n^2`` once (r0 uniform in Z*_n) and each fresh random factor is
``hs^x`` with ``x`` uniform in ``[0, 2^k)``. Security argument (docs/crypto.md): under
DCR, ``hs`` is indistinguishable from a random n-th residue; recovering or
distinguishing the short exponent ``x`` is a discrete-log problem in a group of
unknown order whose best known attacks (Pollard lambda / van Oorschot–Wiener) cost
about ``2^(k/2)``; k = 256 therefore gives 128-bit security, above the ~112 bits of a
2048-bit modulus. A fixed-base window table turns ``hs^x`` into k/8 multiplications.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gmpy2
import phe
from gmpy2 import mpz

from services.kernel.crypto.codec import b64_to_int, int_to_b64

MIN_KEY_BITS = 2048
PLAINTEXT_KEY_ID = "plaintext"
"""The key id of a bundle built with crypto off (the benchmark's plaintext mode): the
bank's and the partners' services both recognise it, so it lives here."""
DEFAULT_EXPONENT_BITS = 256


class CiphertextError(ValueError):
    """A ciphertext is not an element of Z*_{n^2}, or belongs to another key."""


def key_id_for(n: int) -> str:
    digest = hashlib.sha256(int(n).to_bytes((int(n).bit_length() + 7) // 8, "big")).hexdigest()
    return f"pk-{digest[:16]}"


def djn_base(n: mpz) -> mpz:
    """A random base with Jacobi symbol +1: -x^2 mod n as in Damgard-Jurik-Nielsen when
    (-1|n) = +1 (p = q mod 4), else x^2. A ciphertext's Jacobi symbol is then +1 whatever
    the exponent, so it leaks nothing about the exponent's parity (a base with symbol -1
    would reveal it in every ciphertext)."""
    while True:
        x = mpz(secrets.randbelow(int(n) - 2) + 2)
        if gmpy2.gcd(x, n) == 1:
            h = (-(x * x)) % n
            return h if gmpy2.jacobi(h, n) == 1 else (x * x) % n


class FixedBase:
    """``base^x mod modulus`` for exponents below 2^exponent_bits, by 8-bit windows.

    Table row i holds base^(d * 256^i) for d in 0..255, so one power costs
    exponent_bits / 8 multiplications instead of ~1.5 * exponent_bits.
    """

    WINDOW = 8

    def __init__(self, base: mpz, modulus: mpz, exponent_bits: int) -> None:
        self.modulus = modulus
        self.exponent_bits = exponent_bits
        self.rows: list[list[mpz]] = []
        step = base % modulus
        for _ in range((exponent_bits + self.WINDOW - 1) // self.WINDOW):
            row = [mpz(1), step]
            for _ in range(2, 1 << self.WINDOW):
                row.append(row[-1] * step % modulus)
            self.rows.append(row)
            step = row[-1] * step % modulus  # step^256
        self._mask = (1 << self.WINDOW) - 1

    def pow(self, exponent: int) -> mpz:
        modulus, mask, window = self.modulus, self._mask, self.WINDOW
        result = mpz(1)
        for row in self.rows:
            digit = exponent & mask
            if digit:
                result = result * row[digit] % modulus
            exponent >>= window
        return result


@dataclass(eq=False)
class PublicKey:
    n: mpz
    nsquare: mpz = field(init=False)
    key_id: str = field(init=False)
    _randomizer: FixedBase | None = field(default=None, init=False, repr=False)
    exponent_bits: int = DEFAULT_EXPONENT_BITS

    def __post_init__(self) -> None:
        self.n = mpz(self.n)
        self.nsquare = self.n * self.n
        self.key_id = key_id_for(int(self.n))

    @property
    def bits(self) -> int:
        return int(self.n.bit_length())

    # -- encoding -------------------------------------------------------------
    def to_b64(self) -> str:
        return int_to_b64(self.n)

    @classmethod
    def from_b64(cls, text: str, *, min_bits: int = MIN_KEY_BITS) -> PublicKey:
        """A key received from the wire; refuses moduli below the minimum size."""
        key = cls(mpz(b64_to_int(text)))
        if key.bits < min_bits:
            raise ValueError(f"a {key.bits}-bit Paillier key is below the {min_bits}-bit minimum")
        return key

    # -- randomness -----------------------------------------------------------
    def randomizer(self) -> FixedBase:
        """This party's own DJN base, drawn once per process and key."""
        if self._randomizer is None:
            hs = gmpy2.powmod(djn_base(self.n), self.n, self.nsquare)
            self._randomizer = FixedBase(hs, self.nsquare, self.exponent_bits)
        return self._randomizer

    def random_factor(self) -> mpz:
        return self.randomizer().pow(secrets.randbits(self.exponent_bits))

    # -- operations -----------------------------------------------------------
    def encrypt(self, plaintext: int) -> mpz:
        """Enc(m) = (1 + m n) * hs^x mod n^2, for 0 <= m < n."""
        m = mpz(plaintext)
        if not 0 <= m < self.n:
            raise ValueError("plaintext out of range [0, n)")
        return (1 + m * self.n) % self.nsquare * self.random_factor() % self.nsquare

    def encrypt_deterministic(self, plaintext: int) -> mpz:
        """(1 + m n) mod n^2: a valid ciphertext with r = 1. Only for values that are
        re-randomised before anyone else sees them."""
        return (1 + mpz(plaintext) * self.n) % self.nsquare

    def rerandomize(self, ciphertext: mpz) -> mpz:
        return ciphertext * self.random_factor() % self.nsquare

    def add(self, ciphertexts: Iterable[mpz]) -> mpz:
        nsquare = self.nsquare
        total = mpz(1)
        for c in ciphertexts:
            total = total * c % nsquare
        return total

    def validate(self, ciphertext: int) -> mpz:
        c = mpz(ciphertext)
        if not 0 < c < self.nsquare:
            raise CiphertextError("ciphertext outside (0, n^2)")
        if gmpy2.gcd(c, self.n) != 1:
            raise CiphertextError("ciphertext not a unit mod n^2")
        return c

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "n": self.to_b64()}


@dataclass(eq=False)
class PrivateKey:
    public: PublicKey
    p: mpz
    q: mpz
    _owner_bases: tuple[FixedBase, FixedBase] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.p, self.q = mpz(self.p), mpz(self.q)
        if self.p * self.q != self.public.n:
            raise ValueError("p * q != n")
        if self.q < self.p:
            self.p, self.q = self.q, self.p
        self.psquare, self.qsquare = self.p * self.p, self.q * self.q
        n = self.public.n
        self.hp = gmpy2.invert(
            self._l(gmpy2.powmod(n + 1, self.p - 1, self.psquare), self.p), self.p
        )
        self.hq = gmpy2.invert(
            self._l(gmpy2.powmod(n + 1, self.q - 1, self.qsquare), self.q), self.q
        )
        self.p_inv_q = gmpy2.invert(self.p, self.q)
        self.psq_inv_qsq = gmpy2.invert(self.psquare, self.qsquare)

    @staticmethod
    def _l(x: mpz, d: mpz) -> mpz:
        return (x - 1) // d

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def decrypt(self, ciphertext: int) -> mpz:
        """CRT decryption: two half-size exponentiations instead of one mod n^2."""
        c = mpz(ciphertext)
        mp = self._l(gmpy2.powmod(c, self.p - 1, self.psquare), self.p) * self.hp % self.p
        mq = self._l(gmpy2.powmod(c, self.q - 1, self.qsquare), self.q) * self.hq % self.q
        return mp + ((mq - mp) * self.p_inv_q % self.q) * self.p

    # -- fast encryption for the key owner --------------------------------------
    def _bases(self) -> tuple[FixedBase, FixedBase]:
        if self._owner_bases is None:
            n, bits = self.public.n, self.public.exponent_bits
            r0 = djn_base(n)
            # hs = r0^n reduced separately mod p^2 and q^2 (exponent reduced mod the group order).
            hp = gmpy2.powmod(r0, n % (self.p * (self.p - 1)), self.psquare)
            hq = gmpy2.powmod(r0, n % (self.q * (self.q - 1)), self.qsquare)
            self._owner_bases = (
                FixedBase(hp, self.psquare, bits),
                FixedBase(hq, self.qsquare, bits),
            )
        return self._owner_bases

    def encrypt_many(self, plaintexts: Sequence[int]) -> list[mpz]:
        """Encrypt with CRT-split randomness: about a quarter of the public-key cost."""
        base_p, base_q = self._bases()
        n, nsquare, psquare = self.public.n, self.public.nsquare, self.psquare
        bits = self.public.exponent_bits
        crt = self.psq_inv_qsq
        out = []
        for m in plaintexts:
            x = secrets.randbits(bits)
            rp, rq = base_p.pow(x), base_q.pow(x)
            r = rp + ((rq - rp) * crt % self.qsquare) * psquare
            out.append((1 + mpz(m) % n * n) * r % nsquare)
        return out

    # -- files ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "n": self.public.to_b64(),
            "p": int_to_b64(self.p),
            "q": int_to_b64(self.q),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrivateKey:
        public = PublicKey(mpz(b64_to_int(data["n"])))
        key = cls(public, mpz(b64_to_int(data["p"])), mpz(b64_to_int(data["q"])))
        if data.get("key_id") not in (None, key.key_id):
            raise ValueError("key file's key_id does not match its modulus")
        return key


def generate_keypair(bits: int = MIN_KEY_BITS, *, allow_small: bool = False) -> PrivateKey:
    if bits < MIN_KEY_BITS and not allow_small:
        raise ValueError(f"Paillier keys must have at least {MIN_KEY_BITS} bits")
    public, private = phe.generate_paillier_keypair(n_length=bits)
    return PrivateKey(PublicKey(mpz(public.n)), mpz(private.p), mpz(private.q))


def save_private_key(key: PrivateKey, path: Path) -> None:
    write_secret(path, json.dumps(key.to_json()).encode())


def write_secret(path: Path, data: bytes) -> None:
    """Write a key file readable by its owner only, from its first byte (also when it
    already exists with looser permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_private_key(path: Path) -> PrivateKey:
    try:
        return PrivateKey.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load Paillier private key from {path}: {exc}") from exc


def load_private_keys(directory: Path) -> dict[str, PrivateKey]:
    """Every ``*.json`` private key in a directory (a mounted Secret), by key id."""
    keys = {}
    for path in sorted(directory.glob("*.json")):
        key = load_private_key(path)
        keys[key.key_id] = key
    if not keys:
        raise ValueError(f"no Paillier private key (*.json) in {directory}")
    return keys

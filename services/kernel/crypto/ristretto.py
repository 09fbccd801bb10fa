"""The ristretto255 group, from libsodium (>= 1.0.18) through ctypes.

PyNaCl (1.6.2, the newest release) bundles libsodium but binds none of its
``crypto_core_ristretto255_*`` functions, and its static build does not export them,
so this module binds the system's libsodium directly (Debian: ``libsodium23``). On a
machine without one it falls back to the libsodium bundled in the ``rbcl`` wheel
(a dependency), which rbcl loads through ctypes too, so one code path serves both.
(rbcl writes its library to a temporary file when imported, hence the system one
first.) The library is loaded on first use, so importing this module never fails;
if neither loads, one :class:`RistrettoUnavailableError` names what to install.

ctypes releases the GIL around each foreign call, so the batch helpers split large
batches over threads and use every core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

POINT_BYTES = 32
SCALAR_BYTES = 32
HASH_BYTES = 64
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
"""L, the order of ristretto255 (and of ed25519's prime-order subgroup)."""

IDENTITY = bytes(POINT_BYTES)
"""The encoding of the neutral element: canonical, so libsodium calls it valid."""

_CANDIDATES = ("libsodium.so.23", "libsodium.so.26", "libsodium.so", "libsodium.dylib")
_PARALLEL_FROM = 1024  # below this, thread start-up costs more than it saves


class RistrettoUnavailableError(RuntimeError):
    """No libsodium with ristretto255 (>= 1.0.18) could be loaded."""


def _rbcl_library(errors: list[str]) -> ctypes.CDLL | None:
    try:
        from rbcl import rbcl as bundled
    except (ImportError, OSError) as exc:
        errors.append(f"rbcl: {exc}")
        return None
    lib: ctypes.CDLL = bundled._sodium
    if not hasattr(lib, "crypto_core_ristretto255_from_hash") or lib.sodium_init() < 0:
        errors.append("rbcl's libsodium lacks ristretto255")
        return None
    return lib


@cache
def _lib() -> ctypes.CDLL:
    names = [name for name in (ctypes.util.find_library("sodium"), *_CANDIDATES) if name]
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        if not hasattr(lib, "crypto_core_ristretto255_from_hash"):
            errors.append(f"{name} predates ristretto255 (libsodium < 1.0.18)")
            continue
        if lib.sodium_init() < 0:
            errors.append(f"{name}: sodium_init failed")
            continue
        return lib
    bundled = _rbcl_library(errors)
    if bundled is not None:
        return bundled
    raise RistrettoUnavailableError(
        "libsodium >= 1.0.18 is needed for ristretto255 (Debian: apt-get install libsodium23): "
        + "; ".join(errors or ["not found"])
    )


def require() -> None:
    """Load libsodium now; raises RistrettoUnavailableError with the reason."""
    _lib()


def scalar_random() -> bytes:
    """A uniform scalar in [0, L); the caller rejects zero (probability 2^-252)."""
    out = ctypes.create_string_buffer(SCALAR_BYTES)
    _lib().crypto_core_ristretto255_scalar_random(out)
    return out.raw


def is_canonical_scalar(scalar: bytes) -> bool:
    return len(scalar) == SCALAR_BYTES and 0 < int.from_bytes(scalar, "little") < GROUP_ORDER


def is_valid_point(point: bytes) -> bool:
    """A canonical encoding of a group element other than the identity.

    libsodium accepts the identity's encoding; it is rejected here because a blinded
    identity stays the identity (scalar multiplication would fail on it anyway).
    """
    if len(point) != POINT_BYTES or point == IDENTITY:
        return False
    return bool(_lib().crypto_core_ristretto255_is_valid_point(point) == 1)


def from_hashes(digests: Sequence[bytes]) -> list[bytes]:
    """Map 64-byte uniform digests to group elements (libsodium's hash-to-group)."""
    if any(len(d) != HASH_BYTES for d in digests):
        raise ValueError(f"hash-to-group takes {HASH_BYTES}-byte digests")
    return _parallel(_from_hashes, digests)


def scalarmult(scalar: bytes, points: Sequence[bytes]) -> list[bytes]:
    """``scalar * P`` for every P (written multiplicatively elsewhere: P^scalar).

    Raises ValueError if a point is invalid or a product is the identity: callers
    validate wire points first, so that means a bug or a zero scalar.
    """
    if len(scalar) != SCALAR_BYTES:
        raise ValueError(f"scalars are {SCALAR_BYTES} bytes")
    if any(len(p) != POINT_BYTES for p in points):
        raise ValueError(f"points are {POINT_BYTES} bytes")

    def run(chunk: Sequence[bytes]) -> list[bytes]:
        return _scalarmult(scalar, chunk)

    return _parallel(run, points)


def _from_hashes(digests: Sequence[bytes]) -> list[bytes]:
    # One output buffer per call and the foreign function bound once: this loop is
    # the protocol's hot path next to _scalarmult.
    fn = _lib().crypto_core_ristretto255_from_hash
    out = ctypes.create_string_buffer(POINT_BYTES)
    result = []
    for digest in digests:
        fn(out, digest)
        result.append(out.raw)
    return result


def _scalarmult(scalar: bytes, points: Sequence[bytes]) -> list[bytes]:
    fn = _lib().crypto_scalarmult_ristretto255
    out = ctypes.create_string_buffer(POINT_BYTES)
    result = []
    for point in points:
        if fn(out, scalar, point) != 0:
            raise ValueError("scalar multiplication failed: invalid point or identity result")
        result.append(out.raw)
    return result


def _parallel(fn: Callable[[Sequence[bytes]], list[bytes]], items: Sequence[bytes]) -> list[bytes]:
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(items) < _PARALLEL_FROM:
        return fn(items)
    size = -(-len(items) // workers)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(workers, thread_name_prefix="ristretto") as pool:
        parts = list(pool.map(fn, chunks))
    return [point for part in parts for point in part]

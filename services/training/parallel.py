"""The bank's bulk Paillier work in worker processes.

While the bank encrypts a round's gradients or decrypts the partners' answers, the
partners wait, so every core can work for the bank. Each worker process loads the
private key once (initializer) and keeps its own randomness base; gmpy2 holds the
GIL, so threads would not help.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType

from gmpy2 import mpz

from services.kernel.crypto.paillier import PrivateKey, PublicKey

_KEY: PrivateKey | None = None
SMALL = 64  # below this, a round trip to the workers costs more than it saves


def _load_key(n: int, p: int, q: int) -> None:
    global _KEY
    _KEY = PrivateKey(PublicKey(mpz(n)), mpz(p), mpz(q))


def _encrypt(plaintexts: Sequence[int]) -> list[int]:
    assert _KEY is not None
    return [int(c) for c in _KEY.encrypt_many(plaintexts)]


def _decrypt(ciphertexts: Sequence[int]) -> list[int]:
    assert _KEY is not None
    return [int(_KEY.decrypt(c)) for c in ciphertexts]


class CryptoPool:
    def __init__(self, key: PrivateKey, workers: int | None = None) -> None:
        self.key = key
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> CryptoPool:
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_key,
            initargs=(int(self.key.public.n), int(self.key.p), int(self.key.q)),
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    async def encrypt(self, plaintexts: Sequence[int]) -> list[int]:
        items = [int(m) for m in plaintexts]
        if self._pool is None or len(items) < SMALL:
            return [int(c) for c in self.key.encrypt_many(items)]
        return await self._map(_encrypt, items)

    async def decrypt(self, ciphertexts: Sequence[int]) -> list[int]:
        items = [int(c) for c in ciphertexts]
        if self._pool is None or len(items) < SMALL:
            return [int(self.key.decrypt(c)) for c in items]
        return await self._map(_decrypt, items)

    async def _map(self, function: Callable[[list[int]], list[int]], items: list[int]) -> list[int]:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        size = -(-len(items) // self.workers)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        parts = await asyncio.gather(
            *(loop.run_in_executor(self._pool, function, chunk) for chunk in chunks)
        )
        return [value for part in parts for value in part]

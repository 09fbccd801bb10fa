"""Re-randomisation that hides from the key owner.

The bank holds p and q, so it can take apart any ciphertext it receives: decrypt it,
then recover its random factor r^n, and from that r itself. A short-exponent factor
``hs^x`` (services/kernel/crypto/paillier.py) is computationally hiding against
outsiders only: the key owner can reduce it mod p and q, where the Legendre symbols of
a ``±y^2`` base never change and the exponent's residues modulo the small factors of
p - 1 and q - 1 are discrete logs it can compute. A bank that chose the randomness of
the ciphertexts a partner multiplies together (gradients, table entries) could then
read which ones were multiplied from the leftover factor.

Every ciphertext leaving a partner therefore carries a factor ``r^n mod n^2`` with r
uniform in Z*_n: an element uniform among the n-th residues, whatever the bank knows,
so the product's random factor is uniform too (statistically, not computationally).
One costs a full exponentiation (8.5 to 16 ms for a 2048-bit n, by machine);
:class:`FactorPool` computes them ahead in a thread at the lowest scheduling priority
(gmpy2 releases the GIL in ``powmod_base_list``): the pool fills while the partner and
whatever shares its machine are idle, the hot path only pops one, and a burst of
requests drains a full pool before it costs the hot path anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable

import gmpy2
from gmpy2 import mpz

log = logging.getLogger(__name__)


def uniform_unit(n: mpz) -> mpz:
    """r uniform in Z*_n (rejection: a non-unit turns up with probability about 2^-1023)."""
    while True:
        r = mpz(secrets.randbelow(int(n) - 1) + 1)
        if gmpy2.gcd(r, n) == 1:
            return r


def uniform_factors(n: mpz, count: int) -> list[mpz]:
    """``count`` independent r^n mod n^2, r uniform in Z*_n, in one C call."""
    if count <= 0:
        return []
    return list(gmpy2.powmod_base_list([uniform_unit(n) for _ in range(count)], n, n * n))


POOL_THREAD_NAME = b"factor-pool"
"""The filler threads' name in the OS (/proc/<pid>/task/<tid>/comm): the bench tells
their CPU from the serving path's by it."""


def name_os_thread(name: bytes) -> None:
    """Python (3.11) names its threads for itself only; Linux learns a name by prctl."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME


class FactorPool:
    """Uniform n-th residues for one key, computed ahead by a daemon thread that keeps
    ``target`` of them ready. Each factor is handed out once."""

    CHUNK = 8

    def __init__(self, n: mpz, target: int = 64) -> None:
        """``target``: how many to keep ready; :meth:`resize` changes it (a partner
        shrinks the pools of the model versions it no longer serves first)."""
        self.n = mpz(n)
        self.target = target
        self._ready: deque[mpz] = deque()
        self._wanted = threading.Condition()
        self._stopped = False
        self.inline = 0
        """Factors computed on the caller's thread because the pool was empty."""
        self._thread = threading.Thread(target=self._fill, name="factor-pool", daemon=True)
        self._thread.start()

    def take(self, on_empty: Callable[[], None] | None = None) -> mpz:
        """The next factor; computed here, after calling ``on_empty``, if none is ready."""
        try:
            factor = self._ready.popleft()
        except IndexError:
            self.inline += 1
            if on_empty is not None:
                on_empty()
            factor = uniform_factors(self.n, 1)[0]
        with self._wanted:
            self._wanted.notify()
        return factor

    def __len__(self) -> int:
        return len(self._ready)

    def resize(self, target: int) -> None:
        with self._wanted:
            self.target = target
            while len(self._ready) > target:
                self._ready.pop()
            self._wanted.notify()

    def close(self) -> None:
        with self._wanted:
            self._stopped = True
            self._wanted.notify()

    def _fill(self) -> None:
        # Off the hot path: the scheduler runs this thread only when nothing else wants
        # the CPU, and a waking thread preempts it at once (Linux's SCHED_IDLE, per
        # thread; elsewhere the lowest nice value). Across processes this holds within
        # one scheduling group: a session under autogroup, a container's cgroup.
        tid = threading.get_native_id()
        name_os_thread(POOL_THREAD_NAME)
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, tid, 19)
        while True:
            with self._wanted:
                while not self._stopped and len(self._ready) >= self.target:
                    self._wanted.wait()
                if self._stopped:
                    return
            try:
                self._ready.extend(uniform_factors(self.n, self.CHUNK))
            except Exception:  # pragma: no cover - keep the pool alive; take() computes inline
                log.exception("factor pool: precomputation failed")
                return

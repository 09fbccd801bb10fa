"""The bank's three exchanges with the partners in one training session
(docs/protocol.md, "Training"), over a :class:`~services.training.coordinator.Channel`:
Kafka in production (``Coordinator``), in memory in the unit tests.

- :meth:`Exchanges.start`: every partner gets the session's key, the blind-training
  parameters and the one shuffled token list; each answers with its bin counts.
- :meth:`Exchanges.round`: the encrypted gradients go out with the previous round's
  step; the partners' masked direction scores come back, and the bank decrypts only
  their product, the per-row sum over partners.
- :meth:`Exchanges.finish`: the partners send their accumulated directions, masked;
  the bank drops their low bits and sends them back to be stored.

Every reply is checked here before it is used: the count of score ciphertexts, each
ciphertext against the key, every decoded slot in range. What the bank does with the
decrypted sums (line search, LightGBM) is the trainer's business
(``services/training/trainer.py``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from gmpy2 import mpz

from schemas import TrainFinish, TrainReady, TrainScores, TrainStart
from schemas.training import (
    BlindTraining,
    ScoreLayout,
    TrainDone,
    TrainRound,
    TrainTruncate,
    TrainTruncated,
)
from services.kernel.crypto.blind import (
    PROVISIONAL_FEATURES,
    decode_scores,
    encode_gradients,
    score_layout,
    truncate,
)
from services.kernel.crypto.codec import b64_to_int, int_to_b64
from services.kernel.crypto.packing import PackingOverflowError
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.crypto.tokens import TokenSource, token_or_decoy
from services.training.coordinator import Channel, TrainingError
from services.training.parallel import CryptoPool
from services.training.trace import TrainingTrace

T = TypeVar("T")


@dataclass(frozen=True)
class ListOrder:
    """The one list of a session's rows that every partner sees.

    ``row_at[position]`` is the row (in the bank's own order: fit, validation, test) at
    that position of the list. The order is unpredictable, so nothing in the list tells
    a partner which rows are held out; it does not change the model."""

    row_at: np.ndarray

    @classmethod
    def shuffled(cls, rows: int) -> ListOrder:
        rng = np.random.default_rng(secrets.randbits(128))
        return cls(rng.permutation(rows))

    def __len__(self) -> int:
        return len(self.row_at)

    def listed(self, per_row: Sequence[T]) -> list[T]:
        """Per-row items in list order."""
        return [per_row[i] for i in self.row_at.tolist()]

    def to_list_order(self, values: np.ndarray) -> np.ndarray:
        """Per-row values in list order."""
        out: np.ndarray = values[self.row_at]
        return out

    def from_list_order(self, values: np.ndarray) -> np.ndarray:
        """Values in list order back in the bank's row order."""
        out = np.empty_like(values)
        out[self.row_at] = values
        return out


class Exchanges:
    """The bank's side of one session's exchanges, in the order the protocol runs
    them: :meth:`start` once, :meth:`round` once per round, :meth:`finish` once."""

    def __init__(
        self,
        channel: Channel,
        key: PrivateKey,
        pool: CryptoPool,
        tokenizers: Mapping[str, TokenSource],
        blind: BlindTraining,
    ) -> None:
        self.channel = channel
        self.key = key
        self.pool = pool
        self.tokenizers = tokenizers
        self.partners = list(tokenizers)
        self.blind = blind
        # Sized as if every partner had PROVISIONAL_FEATURES features: the real counts
        # arrive with TrainReady and are checked against it.
        self.layout: ScoreLayout = score_layout(
            key.public.bits, blind, PROVISIONAL_FEATURES * len(self.partners)
        )
        self.order = ListOrder(np.arange(0))
        self.features = 0
        """Every partner's features together, as the partners' bin counts say."""

    async def start(
        self, order: ListOrder, ids: Sequence[str], max_bins: int
    ) -> dict[str, list[int]]:
        """Open the session on the rows ``ids`` (the bank's row order) listed in
        ``order``; every partner's bin count per feature."""
        self.order = order
        listed = order.listed(ids)
        await self.channel.send_all(
            {
                k: TrainStart(
                    session_id=self.channel.session_id,
                    partner=k,
                    participants=sorted(self.partners),
                    key_id=self.key.key_id,
                    public_key_n=self.key.public.to_b64(),
                    blind=self.blind,
                    layout=self.layout,
                    max_bins=max_bins,
                    tokens=[token_or_decoy(self.tokenizers[k], i) for i in listed],
                )
                for k in self.partners
            }
        )
        ready = await self.channel.collect(TrainReady)
        bins = {k: ready[k].bins_per_feature for k in self.partners}
        for k, counts in bins.items():
            if len(counts) > PROVISIONAL_FEATURES:
                raise TrainingError(
                    f"partner {k} has {len(counts)} features; at most {PROVISIONAL_FEATURES}"
                )
        self.features = sum(len(counts) for counts in bins.values())
        return bins

    async def round(self, round_: int, g: np.ndarray, previous_step: int | None) -> np.ndarray:
        """Send a round's gradients ``g`` (one per row, the bank's row order) with the
        step chosen for the round before; the aggregate direction score of every row
        (the same order)."""
        n = int(self.key.public.n)
        plaintexts = encode_gradients(self.blind, self.order.to_list_order(g), n)
        ciphertexts = [int_to_b64(c) for c in await self.pool.encrypt(plaintexts)]
        message = TrainRound(
            session_id=self.channel.session_id,
            round=round_,
            previous_step=previous_step,
            gradients=ciphertexts,
        )
        await self.channel.send_all(dict.fromkeys(self.partners, message))
        replies = await self.channel.collect(TrainScores, round_)
        # Only the product over partners decodes: each partner's scores are masked.
        plain = await self.pool.decrypt(self._product(replies))
        slots, rows = self.layout.slots, len(self.order)
        scores: list[float] = []
        try:
            for i, m in enumerate(plain):
                count = min(slots, rows - i * slots)
                scores.extend(decode_scores(self.layout, self.blind, m, count, self.features))
        except PackingOverflowError as exc:
            raise TrainingError(
                f"round {round_}: the direction scores do not decode: {exc}"
            ) from exc
        return self.order.from_list_order(np.array(scores))

    def _product(self, replies: Mapping[str, TrainScores]) -> list[mpz]:
        """Every partner's score ciphertexts, checked, multiplied slot-chunk by chunk."""
        public = self.key.public
        expected = -(-len(self.order) // self.layout.slots)
        product = [mpz(1)] * expected
        for k in self.partners:
            if len(replies[k].ciphertexts) != expected:
                raise TrainingError(
                    f"partner {k} sent {len(replies[k].ciphertexts)} score ciphertexts, "
                    f"expected {expected}"
                )
            product = [
                a * public.validate(b64_to_int(c)) % public.nsquare
                for a, c in zip(product, replies[k].ciphertexts, strict=True)
            ]
        return product

    async def finish(
        self, best_round: int, steps: list[int], trace: TrainingTrace | None = None
    ) -> None:
        """The partners' final weights: each sends its accumulated directions, masked;
        the bank drops their low bits and sends them back; each stores the result.
        ``trace`` (``--trace-dir``) keeps what the bank decrypted."""
        await self.channel.send_all(
            {
                k: TrainFinish(
                    session_id=self.channel.session_id,
                    status="done",
                    best_round=best_round,
                    steps=steps,
                )
                for k in self.partners
            }
        )
        replies = await self.channel.collect(TrainTruncate)
        public = self.key.public
        for k in self.partners:
            masked = [public.validate(b64_to_int(c)) for c in replies[k].ciphertexts]
            plain = await self.pool.decrypt(masked)
            if trace is not None:
                trace.truncated[k] = [int(x) for x in plain]
            try:
                dropped = [truncate(self.blind, int(x)) for x in plain]
            except PackingOverflowError as exc:
                raise TrainingError(f"partner {k}: a masked weight is out of range") from exc
            encrypted = await self.pool.encrypt(dropped)
            await self.channel.send(
                k,
                TrainTruncated(
                    session_id=self.channel.session_id,
                    ciphertexts=[int_to_b64(c) for c in encrypted],
                ),
            )
        await self.channel.collect(TrainDone)

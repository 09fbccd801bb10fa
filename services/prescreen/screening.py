"""Join a batch's fragments and screen its candidates: multiply the partners' Paillier
fragments, decrypt the product once, unpack the aggregate partner score and the
blacklist flags, and score each candidate (or take the deadline outcome when a
partner is missing). The joiner (joiner.py) decides when; this says what.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from schemas import BankBundle, EncryptedFragment, PendingBatch
from services.kernel.crypto.codec import b64_to_int
from services.kernel.crypto.packing import PackingOverflowError, combine_plain, unpack
from services.kernel.crypto.paillier import PrivateKey
from services.kernel.metrics import CRYPTO_SECONDS, PARTNER_TIMEOUTS
from services.kernel.model.scoring import BankScorer
from services.prescreen.policy import Screening

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Joined:
    partner_score: np.ndarray | None
    """The aggregate partner score, when every partner of the batch is in the sum."""
    flagged: np.ndarray
    """Per candidate: some partner in the sum flagged it."""


class Screener:
    def __init__(self, private_keys: dict[str, PrivateKey]) -> None:
        self.private_keys = private_keys
        """By key id; shared with the joiner, which adds keys as models roll out."""

    @staticmethod
    def usable(
        pending: PendingBatch,
        fragments: dict[str, EncryptedFragment],
        participants: list[str],
        attempt: int,
        bundle: BankBundle,
    ) -> dict[str, EncryptedFragment]:
        """The fragments that may enter the product: for this batch's model, size and key,
        masked for exactly its participants."""
        n = len(pending.candidates)
        return {
            name: f
            for name, f in fragments.items()
            if name in participants
            and f.model_version == pending.model_version
            and f.slot_count == n
            and (f.mode == "plaintext" or f.key_id == bundle.key_id)
            and f.attempt == attempt
            and sorted(f.participants) == sorted(participants)
            and f.flags_only == (attempt > 1)
        }

    def screen(
        self,
        pending: PendingBatch,
        fragments: dict[str, EncryptedFragment],
        participants: list[str],
        attempt: int,
        bundle: BankBundle,
        scorer: BankScorer,
    ) -> tuple[list[Screening], list[str]]:
        n = len(pending.candidates)
        usable = self.usable(pending, fragments, participants, attempt, bundle)
        missing = [p for p in pending.partners if p not in usable]
        joined = None
        plaintext_mode = bool(usable) and all(f.mode == "plaintext" for f in usable.values())
        # The masks cancel only in the product of every participant's fragment: a partial
        # product decrypts to noise, so it is not even tried (no flags from it apply).
        if usable and (plaintext_mode or set(usable) == set(participants)):
            joined = self._join(pending, usable, attempt > 1, bundle, scorer)
            if joined is None:
                missing = list(pending.partners)  # undecodable: nobody's answer counts
        flagged = joined.flagged if joined is not None else np.zeros(n, dtype=bool)
        for partner in missing:
            PARTNER_TIMEOUTS.labels(partner=partner).inc()
        x_bank = scorer.matrix([c.features for c in pending.candidates])
        if not missing and joined is not None and joined.partner_score is not None:
            pds = scorer.score(x_bank, joined.partner_score)
            return [Screening(float(pd), bool(f)) for pd, f in zip(pds, flagged, strict=True)], []
        if bundle.policy.deadline_outcome == "fallback":
            pds = scorer.score_fallback(x_bank)
            screenings = [
                Screening(float(pd), bool(f), degraded=True, partner_unavailable=True)
                for pd, f in zip(pds, flagged, strict=True)
            ]
        else:
            screenings = [Screening(None, bool(f), partner_unavailable=True) for f in flagged]
        return screenings, missing

    def _join(
        self,
        pending: PendingBatch,
        fragments: dict[str, EncryptedFragment],
        flags_only: bool,
        bundle: BankBundle,
        scorer: BankScorer,
    ) -> Joined | None:
        """Multiply the fragments, decrypt once, unpack; None if the sum does not decode."""
        plaintext_mode = all(f.mode == "plaintext" for f in fragments.values())
        n = len(pending.candidates)
        features = {p: 0 if flags_only else scorer.features_per_partner[p] for p in fragments}
        started = time.perf_counter()
        try:
            if plaintext_mode:
                plaintext = combine_plain(
                    bundle.packing, [f.plain_slots or [] for f in fragments.values()]
                )
            else:
                key = self.private_keys[bundle.key_id]
                nsquare = key.public.nsquare
                product = 1
                for fragment in fragments.values():
                    product = product * b64_to_int(fragment.ciphertext or "") % nsquare
                plaintext = int(key.decrypt(product))
            slots = unpack(bundle.packing, plaintext, n, features)
        except (PackingOverflowError, KeyError) as exc:
            log.error(
                "batch %s: fragments do not decode (%s); treating partners as missing",
                pending.batch_id,
                exc,
                extra={"batch_id": pending.batch_id},
            )
            return None
        finally:
            CRYPTO_SECONDS.labels(service="prescreen", operation="join").observe(
                time.perf_counter() - started
            )
        flagged = np.array([s.flagged for s in slots], dtype=bool)
        complete = not flags_only and set(fragments) == set(pending.partners)
        score = np.array([s.partner_score for s in slots]) if complete else None
        return Joined(score, flagged)

"""The partner side of federated training (DESIGN.md section 3).

Per session: fit private bins on the fit rows; per round, answer the bank's encrypted
weight tables with packed, re-randomised per-row scores, and the bank's encrypted
per-row (g, h) with encrypted per-bin sums. Nothing the partner computes here is in
plaintext except its own features and bins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from gmpy2 import mpz

from schemas import (
    PackingSpec,
    TrainFinish,
    TrainGradients,
    TrainHistograms,
    TrainReady,
    TrainScores,
    TrainStart,
    TrainWeights,
)
from schemas.training import ToBank, ToPartner
from services.kernel.crypto.codec import b64_to_int, int_to_b64
from services.kernel.crypto.packing import FragmentTables
from services.kernel.crypto.paillier import PublicKey
from services.partner.binning import Binning
from services.partner.store import FeatureStore

log = logging.getLogger(__name__)


class TrainingProtocolError(ValueError):
    pass


@dataclass
class Session:
    public_key: PublicKey
    packing: PackingSpec
    fit_bins: np.ndarray
    all_rows: list[list[int]]
    bins_per_feature: list[int]


class TrainingWorker:
    def __init__(self, partner: str, store: FeatureStore, max_bins: int) -> None:
        self.partner = partner
        self.store = store
        self.max_bins = max_bins
        self.sessions: dict[str, Session] = {}

    def handle(self, message: ToPartner) -> ToBank | None:
        """CPU-heavy: the service calls this in a worker thread."""
        if isinstance(message, TrainStart):
            return self.start(message)
        session = self.sessions.get(message.session_id)
        if isinstance(message, TrainFinish):
            self.sessions.pop(message.session_id, None)
            log.info("training session %s finished: %s", message.session_id, message.status)
            return None
        if session is None:
            raise TrainingProtocolError(f"unknown training session {message.session_id}")
        if isinstance(message, TrainWeights):
            return self.scores(message, session)
        return self.histograms(message, session)

    def start(self, message: TrainStart) -> TrainReady:
        if message.partner != self.partner:
            raise TrainingProtocolError(f"session for {message.partner!r}")
        public_key = PublicKey.from_b64(message.public_key_n)
        if public_key.key_id != message.key_id:
            raise TrainingProtocolError("key_id does not match the public key")
        fit_values, _ = self.store.lookup(message.tokens)
        eval_values, _ = self.store.lookup(message.eval_tokens)
        binning = Binning.fit(fit_values, min(self.max_bins, message.max_bins))
        self.store.save_binning(message.session_id, binning)
        fit_bins = binning.transform(fit_values)
        eval_bins = binning.transform(eval_values) if len(message.eval_tokens) else fit_bins[:0]
        self.sessions[message.session_id] = Session(
            public_key=public_key,
            packing=message.packing,
            fit_bins=fit_bins,
            all_rows=np.vstack([fit_bins, eval_bins]).tolist(),
            bins_per_feature=binning.bins_per_feature,
        )
        log.info(
            "training session %s: %d fit rows, %d eval rows, bins %s",
            message.session_id,
            len(message.tokens),
            len(message.eval_tokens),
            binning.bins_per_feature,
        )
        return TrainReady(
            session_id=message.session_id,
            partner=self.partner,
            bins_per_feature=binning.bins_per_feature,
        )

    def scores(self, message: TrainWeights, session: Session) -> TrainScores:
        if [len(row) for row in message.tables] != session.bins_per_feature:
            raise TrainingProtocolError("weight tables do not match this session's bins")
        tables = FragmentTables(
            session.public_key,
            session.packing,
            [[b64_to_int(c) for c in row] for row in message.tables],
        )
        slots = session.packing.slots
        rows = session.all_rows
        ciphertexts = [
            int_to_b64(tables.fragment(rows[i : i + slots], [False] * len(rows[i : i + slots])))
            for i in range(0, len(rows), slots)
        ]
        return TrainScores(
            session_id=message.session_id,
            partner=self.partner,
            round=message.round,
            ciphertexts=ciphertexts,
        )

    def histograms(self, message: TrainGradients, session: Session) -> TrainHistograms:
        if len(message.ciphertexts) != len(session.fit_bins):
            raise TrainingProtocolError(
                f"{len(message.ciphertexts)} gradients for {len(session.fit_bins)} fit rows"
            )
        pk = session.public_key
        nsquare = pk.nsquare
        gradients = [pk.validate(b64_to_int(c)) for c in message.ciphertexts]
        histograms: list[list[str]] = []
        for j, bins in enumerate(session.bins_per_feature):
            sums = [mpz(1)] * bins
            for i, b in enumerate(session.fit_bins[:, j].tolist()):
                sums[b] = sums[b] * gradients[i] % nsquare
            # The bank knows every gradient ciphertext; re-randomising the sums keeps it
            # from testing which subset of rows a bin holds.
            histograms.append([int_to_b64(pk.rerandomize(s)) for s in sums])
        return TrainHistograms(
            session_id=message.session_id,
            partner=self.partner,
            round=message.round,
            ciphertexts=histograms,
        )

"""The partner side of federated training (docs/design.md §3; docs/protocol.md).

Per session: fit private bins on the session's rows (one shuffled list: the partner
cannot tell the rows the bank fits on from those it holds out). Per round: sum the
bank's encrypted gradients per bin, turn each sum into an encrypted Newton direction
with the bin's row count (which only this partner knows), and return the per-row
direction scores, slot-packed, masked pairwise with the session's other partners so
that the bank can decrypt only their sum. At the end: combine the kept rounds'
directions with the bank's steps into the final weights, have the bank drop their low
bits from a statistically masked copy, and store them, encrypted, for serving.

Nothing here is ever in plaintext but this partner's own features, bins and counts,
the bank's step sizes, and random masks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gmpy2
import numpy as np
from gmpy2 import mpz

from schemas import TrainDone, TrainFinish, TrainReady, TrainScores, TrainStart
from schemas.training import (
    BlindTraining,
    ScoreLayout,
    ToBank,
    ToPartner,
    TrainRound,
    TrainTruncate,
    TrainTruncated,
)
from services.kernel.crypto.blind import (
    direction_multipliers,
    direction_offset,
    truncation_mask,
    unmask_constant,
)
from services.kernel.crypto.codec import b64_to_int, int_to_b64
from services.kernel.crypto.masking import TrainingMaskContext, training_mask
from services.kernel.crypto.packing import FragmentTables
from services.kernel.crypto.paillier import PublicKey
from services.kernel.crypto.randomness import FactorPool, uniform_factors
from services.partner.agreement import (
    ParticipantsError,
    PeerDirectory,
    UnknownPeerError,
    acceptable_participants,
)
from services.partner.binning import Binning
from services.partner.store import PartnerStore

log = logging.getLogger(__name__)


class TrainingProtocolError(ValueError):
    pass


class ReplayedMessageError(TrainingProtocolError):
    """A copy of a message this partner already acted on (a Kafka redelivery or a replay):
    ignored, and never answered."""


def encrypted_directions(
    pk: PublicKey,
    bins: np.ndarray,
    bins_per_feature: Sequence[int],
    multipliers: Sequence[int],
    gradients: Sequence[mpz],
) -> list[mpz]:
    """Enc(D_e) = Enc(G_e)^(-q_e) for every bin e, feature by feature: the gradients of
    the rows in each bin multiplied together (their encrypted sum), raised to q_e and
    inverted (the negated product)."""
    nsquare = pk.nsquare
    out: list[mpz] = []
    flat = 0
    for j, size in enumerate(bins_per_feature):
        sums = [mpz(1)] * size
        for i, b in enumerate(bins[:, j].tolist()):
            sums[b] = sums[b] * gradients[i] % nsquare
        for b in range(size):
            scaled = gmpy2.powmod(sums[b], multipliers[flat + b], nsquare)
            out.append(gmpy2.invert(scaled, nsquare))
        flat += size
    return out


def direction_scores(
    pk: PublicKey,
    layout: ScoreLayout,
    blind: BlindTraining,
    bins_per_feature: Sequence[int],
    directions: Sequence[mpz],
    rows: Sequence[Sequence[int]],
    mask: Callable[[int], int],
    factor: Callable[[], mpz],
) -> list[mpz]:
    """Slot-packed Enc(sum_j (D_j[bin_j] + 2^V) + mask(chunk)) for every chunk of
    ``layout.slots`` rows, each re-randomised with ``factor()`` (a uniform r^n: the
    directions were computed from ciphertexts whose randomness the bank chose)."""
    offset = pk.encrypt_deterministic(direction_offset(blind))
    entries = [d * offset % pk.nsquare for d in directions]
    tables, start = [], 0
    for size in bins_per_feature:
        tables.append(entries[start : start + size])
        start += size
    fragments = FragmentTables(pk, layout, tables)
    slots = layout.slots
    return [
        fragments.fragment(rows[begin : begin + slots], addend=mask(chunk), factor=factor())
        for chunk, begin in enumerate(range(0, len(rows), slots))
    ]


@dataclass
class Session:
    public_key: PublicKey
    blind: BlindTraining
    layout: ScoreLayout
    participants: tuple[str, ...]
    bins: np.ndarray  # (rows, features)
    bins_per_feature: list[int]
    multipliers: list[int]  # q_e per flat bin
    factors: FactorPool
    directions: list[list[mpz]] = field(default_factory=list)  # Enc(D_e) per round
    steps: list[int] = field(default_factory=list)  # a_r per round, once the bank chose it
    masks: list[int] | None = None  # truncation masks, once the session finishes

    @property
    def rounds(self) -> int:
        return len(self.directions)


class TrainingWorker:
    def __init__(
        self,
        partner: str,
        store: PartnerStore,
        max_bins: int,
        peers: PeerDirectory,
        *,
        min_participants: int,
    ) -> None:
        self.partner = partner
        self.store = store
        self.max_bins = max_bins
        self.peers = peers
        self.min_participants = min_participants
        self.sessions: dict[str, Session] = {}

    def handle(self, message: ToPartner) -> ToBank | None:
        """CPU-heavy: the service calls this in a worker thread."""
        if isinstance(message, TrainStart):
            return self.start(message)
        session = self.sessions.get(message.session_id)
        if session is None:
            if isinstance(message, TrainFinish):
                return None  # a finish for a session this partner already closed
            raise TrainingProtocolError(f"unknown training session {message.session_id}")
        if isinstance(message, TrainRound):
            return self.round(message, session)
        if isinstance(message, TrainFinish):
            if message.status == "aborted":
                self.sessions.pop(message.session_id).factors.close()
                log.info("training session %s aborted", message.session_id)
                return None
            return self.finish(message, session)
        return self.store_weights(message, session)

    def start(self, message: TrainStart) -> TrainReady:
        if message.partner != self.partner:
            raise TrainingProtocolError(f"session for {message.partner!r}")
        if message.session_id in self.sessions or self.store.binning(message.session_id):
            raise ReplayedMessageError(f"session {message.session_id} was started before")
        try:
            participants = acceptable_participants(
                self.partner, message.participants, self.peers.registered, self.min_participants
            )
        except ParticipantsError as exc:
            raise TrainingProtocolError(str(exc)) from exc
        public_key = PublicKey.from_b64(message.public_key_n)
        if public_key.key_id != message.key_id:
            raise TrainingProtocolError("key_id does not match the public key")
        values, _ = self.store.lookup(message.tokens)
        binning = Binning.fit(values, min(self.max_bins, message.max_bins))
        bins = binning.transform(values)
        counts = [
            int(c)
            for j, size in enumerate(binning.bins_per_feature)
            for c in np.bincount(bins[:, j], minlength=size)
        ]
        self.store.save_binning(message.session_id, binning)
        self.sessions[message.session_id] = Session(
            public_key=public_key,
            blind=message.blind,
            layout=message.layout,
            participants=tuple(participants),
            bins=bins,
            bins_per_feature=binning.bins_per_feature,
            multipliers=direction_multipliers(message.blind, counts),
            # One uniform factor per score ciphertext of a round, ready before it comes.
            factors=FactorPool(public_key.n, target=-(-len(bins) // message.layout.slots)),
        )
        log.info(
            "training session %s: %d rows, bins %s, with %s",
            message.session_id,
            len(message.tokens),
            binning.bins_per_feature,
            ", ".join(participants),
        )
        return TrainReady(
            session_id=message.session_id,
            partner=self.partner,
            bins_per_feature=binning.bins_per_feature,
        )

    def round(self, message: TrainRound, session: Session) -> TrainScores:
        if message.round <= session.rounds:
            raise ReplayedMessageError(f"round {message.round} was answered already")
        if message.round != session.rounds + 1:
            raise TrainingProtocolError(
                f"round {message.round} after round {session.rounds}: out of order"
            )
        if (message.previous_step is None) != (message.round == 1):
            raise TrainingProtocolError("every round but the first carries the previous step")
        if message.previous_step is not None:
            self._check_step(message.previous_step, session)
            session.steps.append(message.previous_step)
        rows = len(session.bins)
        if len(message.gradients) != rows:
            raise TrainingProtocolError(f"{len(message.gradients)} gradients for {rows} rows")
        pk = session.public_key
        gradients = [pk.validate(b64_to_int(c)) for c in message.gradients]
        directions = encrypted_directions(
            pk, session.bins, session.bins_per_feature, session.multipliers, gradients
        )
        session.directions.append(directions)
        return TrainScores(
            session_id=message.session_id,
            partner=self.partner,
            round=message.round,
            ciphertexts=[int_to_b64(c) for c in self._scores(session, message, directions)],
        )

    @staticmethod
    def _check_step(step: int, session: Session) -> None:
        limit = session.blind.max_step << session.blind.step_bits
        if not 0 <= step <= limit:
            raise TrainingProtocolError(f"step {step} outside [0, {limit}]")

    def _scores(self, session: Session, message: TrainRound, directions: list[mpz]) -> list[mpz]:
        pk = session.public_key
        try:
            seeds = self.peers.seeds_for(session.participants)
        except UnknownPeerError as exc:
            raise TrainingProtocolError(f"no agreement key from {exc.names}") from exc

        def mask(chunk: int) -> int:
            context = TrainingMaskContext(
                session_id=message.session_id,
                round=message.round,
                chunk=chunk,
                participants=session.participants,
                modulus=int(pk.n),
            )
            return training_mask(self.partner, seeds, context)

        return direction_scores(
            pk,
            session.layout,
            session.blind,
            session.bins_per_feature,
            directions,
            session.bins.tolist(),
            mask,
            session.factors.take,
        )

    def finish(self, message: TrainFinish, session: Session) -> TrainTruncate:
        """Enc(sum_r a_r D_r + mask) per bin, for the bank to truncate."""
        if session.masks is not None:
            raise ReplayedMessageError("the session is finishing already")
        if message.best_round > session.rounds:
            raise TrainingProtocolError(
                f"best round {message.best_round} of {session.rounds} rounds"
            )
        for r, step in enumerate(message.steps):
            self._check_step(step, session)
            if r < len(session.steps) and session.steps[r] != step:
                raise TrainingProtocolError(f"the step of round {r + 1} changed")
        pk = session.public_key
        nsquare = pk.nsquare
        bins = sum(session.bins_per_feature)
        accumulated = [mpz(1)] * bins
        for r, step in enumerate(message.steps):
            if step:
                powers = gmpy2.powmod_base_list(session.directions[r], step, nsquare)
                accumulated = [a * p % nsquare for a, p in zip(accumulated, powers, strict=True)]
        session.masks = [truncation_mask(session.blind) for _ in range(bins)]
        masked = [
            a * pk.encrypt_deterministic(m) % nsquare * r % nsquare
            for a, m, r in zip(accumulated, session.masks, uniform_factors(pk.n, bins), strict=True)
        ]
        return TrainTruncate(
            session_id=message.session_id,
            partner=self.partner,
            ciphertexts=[int_to_b64(c) for c in masked],
        )

    def store_weights(self, message: TrainTruncated, session: Session) -> TrainDone:
        """Enc(W_e) = Enc(floor((A + mask) / 2^T)) * Enc(-floor(mask / 2^T)), stored."""
        if session.masks is None:
            raise TrainingProtocolError("truncated values before the session finished")
        if len(message.ciphertexts) != len(session.masks):
            raise TrainingProtocolError(
                f"{len(message.ciphertexts)} truncated values for {len(session.masks)} bins"
            )
        pk = session.public_key
        n, nsquare = int(pk.n), pk.nsquare
        weights = [
            pk.rerandomize(
                pk.validate(b64_to_int(c))
                * pk.encrypt_deterministic(unmask_constant(session.blind, m) % n)
                % nsquare
            )
            for c, m in zip(message.ciphertexts, session.masks, strict=True)
        ]
        self.store.save_scorecard(
            message.session_id, pk.key_id, session.bins_per_feature, [int(w) for w in weights]
        )
        self.sessions.pop(message.session_id).factors.close()
        log.info("training session %s: encrypted weights stored", message.session_id)
        return TrainDone(session_id=message.session_id, partner=self.partner)

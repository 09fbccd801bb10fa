"""Answer a fragment request: look tokens up, bin them privately, add the pre-shifted
encrypted table entries slot by slot, add the blacklist tags and the pairwise masks of
secure aggregation, re-randomise, sign."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import EncryptedFragment, FragmentRequest, PartnerBundle
from services.kernel.crypto.codec import int_to_b64
from services.kernel.crypto.masking import (
    MaskContext,
    batch_digest,
    fragment_addend,
    token_list_digest,
)
from services.kernel.crypto.packing import FragmentTables, PlainTables, slot_value
from services.kernel.crypto.paillier import PLAINTEXT_KEY_ID, PublicKey
from services.kernel.crypto.randomness import FactorPool
from services.kernel.crypto.signing import BankKey, SignatureError, sign
from services.kernel.metrics import CRYPTO_SECONDS, PARTNER_FACTORS_INLINE
from services.partner.agreement import (
    ParticipantsError,
    PeerDirectory,
    UnknownPeerError,
    acceptable_participants,
)
from services.partner.binning import Binning
from services.partner.store import PartnerStore

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request this partner cannot answer; ``reason`` is the DLQ reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotClaimed(Exception):  # noqa: N818 (an outcome, not an error)
    """This replica leaves the request alone: not a refusal, nothing to dead-letter.
    ``reason`` is ``sibling`` (another replica claimed it first and answers it) or
    ``stopping`` (this replica is draining; a sibling claims it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def request_digest(request: FragmentRequest) -> str:
    """What makes two requests for the same batch the same question: everything the
    answer depends on (not the timestamps)."""
    body = {
        "batch_id": request.batch_id,
        "partner": request.partner,
        "model_version": request.model_version,
        "tokens": request.tokens,
        "attempt": request.attempt,
        "participants": sorted(request.participants),
        "flags_only": request.flags_only,
        "token_digests": request.token_digests,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class LoadedModel:
    """A partner bundle made ready to serve: its binning, its shifted tables and, under
    Paillier, a pool of uniform random factors for its key."""

    def __init__(
        self,
        bundle: PartnerBundle,
        binning: Binning,
        tables: FragmentTables | PlainTables,
        factors: FactorPool | None = None,
    ) -> None:
        self.bundle = bundle
        self.binning = binning
        self.tables = tables
        self.factors = factors

    def close(self) -> None:
        if self.factors is not None:
            self.factors.close()


def build_model(
    bundle: PartnerBundle, store: PartnerStore, *, allow_plaintext: bool, factor_pool: int = 64
) -> LoadedModel:
    """CPU-heavy (W squarings per slot and entry); call it off the event loop.

    The weights are this partner's own, kept from the training session the bundle
    names: the bundle brings the key and the layout, and adds each feature's offset."""
    binning = store.binning(bundle.binning_id)
    scorecard = store.scorecard(bundle.binning_id)
    if binning is None or scorecard is None:
        raise ValueError(
            f"bundle {bundle.model_version} needs the binning and weights of "
            f"{bundle.binning_id}, unknown here"
        )
    if binning.bins_per_feature != scorecard.bins_per_feature:
        raise ValueError(f"the weights of {bundle.binning_id} do not match its binning")
    if scorecard.key_id != bundle.key_id:
        raise ValueError(
            f"bundle {bundle.model_version} names key {bundle.key_id}; the weights of "
            f"{bundle.binning_id} are under {scorecard.key_id}"
        )
    offset = bundle.packing.entry_offset
    if bundle.key_id == PLAINTEXT_KEY_ID:
        if not allow_plaintext:
            raise ValueError("plaintext bundles are refused (benchmark-only mode is off)")
        entries = [[w + offset for w in row] for row in scorecard.rows()]
        return LoadedModel(bundle, binning, PlainTables(bundle.packing, entries))
    public_key = PublicKey.from_b64(bundle.public_key_n)
    if public_key.key_id != bundle.key_id:
        raise ValueError("bundle key_id does not match its public key")
    shift = public_key.encrypt_deterministic(offset)
    tables = [
        [public_key.validate(w) * shift % public_key.nsquare for w in row]
        for row in scorecard.rows()
    ]
    return LoadedModel(
        bundle,
        binning,
        FragmentTables(public_key, bundle.packing, tables),
        FactorPool(public_key.n, target=factor_pool),
    )


class ModelCache:
    """Loaded models by version. Building happens in a worker thread (gmpy2 releases the
    GIL in batched powmods), so the service keeps answering while a new version loads."""

    def __init__(
        self, store: PartnerStore, *, partner: str, allow_plaintext: bool, factor_pool: int = 64
    ) -> None:
        self.store = store
        self.partner = partner
        self.allow_plaintext = allow_plaintext
        self.factor_pool = factor_pool
        self.models: dict[str, LoadedModel] = {}
        self._building: dict[str, asyncio.Task[LoadedModel]] = {}
        self.failed: dict[str, str] = {}
        """Versions that could not be loaded, and why (for /readyz)."""
        self.on_ready: Callable[[str], Awaitable[None]] | None = None

    KEEP = 4  # the newest versions stay loaded: in-flight batches of the previous ones
    SPARE = 8  # uniform factors kept ready for a version that is no longer the newest

    def offer(self, bundle: PartnerBundle) -> None:
        if bundle.partner != self.partner:
            raise ValueError(f"bundle for {bundle.partner!r} offered to {self.partner!r}")
        for stale in list(self.models)[: max(0, len(self.models) - self.KEEP + 1)]:
            self.models.pop(stale).close()  # dicts keep insertion order: oldest first
        if bundle.model_version in self.models or bundle.model_version in self._building:
            return
        task = asyncio.get_running_loop().create_task(self._build(bundle))
        self._building[bundle.model_version] = task

    async def _build(self, bundle: PartnerBundle) -> LoadedModel:
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(
                build_model,
                bundle,
                self.store,
                allow_plaintext=self.allow_plaintext,
                factor_pool=self.factor_pool,
            )
        except Exception as exc:
            log.exception("cannot load model %s", bundle.model_version)
            self.failed[bundle.model_version] = str(exc) or type(exc).__name__
            raise
        finally:
            self._building.pop(bundle.model_version, None)
        for older in self.models.values():
            if older.factors is not None:
                older.factors.resize(self.SPARE)  # in-flight batches of earlier versions
        self.models[bundle.model_version] = model
        log.info("model %s ready in %.1fs", bundle.model_version, time.perf_counter() - started)
        if self.on_ready is not None:
            await self.on_ready(bundle.model_version)
        return model

    def building(self) -> list[str]:
        """Versions being loaded right now."""
        return list(self._building)

    def factors_ready(self) -> int:
        """Factors ready for the newest loaded version (what a burst can draw on)."""
        for model in reversed(self.models.values()):
            if model.factors is not None:
                return len(model.factors)
        return 0

    async def get(self, version: str, wait_s: float) -> LoadedModel | None:
        deadline = time.monotonic() + wait_s
        while True:
            if version in self.models:
                return self.models[version]
            task = self._building.get(version)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if task is not None:
                try:
                    return await asyncio.wait_for(asyncio.shield(task), remaining)
                except (TimeoutError, Exception):
                    return self.models.get(version)
            await asyncio.sleep(min(0.05, remaining))


class FragmentServer:
    def __init__(
        self,
        partner: str,
        store: PartnerStore,
        cache: ModelCache,
        signing_key: Ed25519PrivateKey,
        peers: PeerDirectory,
        bank_key: BankKey,
        *,
        min_participants: int = 2,
        ledger_s: float = 30 * 86400.0,
        replica: str = "local",
    ) -> None:
        self.partner = partner
        self.replica = replica
        """This process's name in the ledger's claims (unique per start)."""
        self.claiming = True
        """False once the replica drains: it claims nothing more."""
        self._factor_computed_inline = PARTNER_FACTORS_INLINE.labels(partner=partner).inc
        self.store = store
        self.cache = cache
        self.signing_key = signing_key
        self.peers = peers
        self.bank_key = bank_key
        self.min_participants = min_participants
        self.ledger_s = ledger_s
        self._pruned_at = 0.0

    async def answer(
        self, request: FragmentRequest, wait_s: float, source: str = ""
    ) -> EncryptedFragment:
        """``source`` says where the request was read (partition and offset): the same
        record read again is answered again, a copy of it elsewhere is a replay."""
        try:
            self.bank_key.verify(request)
        except SignatureError as exc:
            raise RequestError("bad-signature", str(exc)) from exc
        if request.partner != self.partner:
            raise RequestError("wrong-partner", f"request for {request.partner!r}")
        if request.attempt != 1 or request.flags_only:
            # The bank never asks again: any later attempt could only give it this
            # partner's answer over another set of participants (docs/privacy.md).
            raise RequestError(
                "re-request-refused",
                f"attempt {request.attempt}{' (flags only)' if request.flags_only else ''} "
                f"of batch {request.batch_id}: only first attempts are answered",
            )
        participants = self.participants(request)
        if sorted(request.token_digests) != participants or request.token_digests.get(
            self.partner
        ) != token_list_digest(request.tokens):
            raise RequestError(
                "bad-token-digests",
                f"batch {request.batch_id}: the token digests do not cover the participants "
                "or do not match this partner's tokens",
            )
        # The claim comes last, once this replica can compute the fragment: a replica
        # still loading a version or a peer's key leaves the request to a sibling.
        started = time.monotonic()
        model = await self.cache.get(request.model_version, wait_s)
        if model is None:
            self._claimed_elsewhere(request)
            raise RequestError(
                "unknown-model-version", f"model {request.model_version} is not loaded here"
            )
        if len(request.tokens) > model.bundle.packing.slots:
            raise RequestError(
                "too-many-slots",
                f"{len(request.tokens)} tokens for {model.bundle.packing.slots} slots",
            )
        # A peer's key may still be on its way right after a start: wait, within budget.
        waited = time.monotonic() - started
        missing = await self.peers.wait_for(participants, max(0.0, wait_s - waited))
        if missing:
            self._claimed_elsewhere(request)
            raise RequestError("no-agreement-key", f"no agreement key from {missing} yet")
        self.check_ledger(request, source)
        return self.compute(request, model)

    def _claimed_elsewhere(self, request: FragmentRequest) -> None:
        """Before refusing a request this replica cannot serve, look whether a sibling
        claimed it (it then answers, and there is nothing to refuse)."""
        held = self.store.request_claim(request.batch_id, request.attempt)
        if held is not None and held.owner != self.replica:
            raise NotClaimed("sibling", f"batch {request.batch_id} claimed by {held.owner}")

    def check_ledger(self, request: FragmentRequest, source: str) -> None:
        """Claim the request in the ledger, or say why not.

        Refuse a request for a (batch, attempt) this partner was already asked about with
        other tokens, another model or other participants: answering both would let the
        bank difference them. A copy of the same request written again at another offset
        (a replay) is refused too. The same record read by a sibling replica (every
        replica reads every request) was claimed by that sibling: it answers, this one
        skips. The same record read again by this replica is answered again, with the
        same plaintext."""
        if not self.claiming:
            raise NotClaimed("stopping", f"batch {request.batch_id}: draining, left to a sibling")
        now = time.time()
        digest = request_digest(request)
        claim = self.store.claim_request(
            request.batch_id, request.attempt, digest, source, self.replica, now
        )
        if claim.digest != digest:
            raise RequestError(
                "conflicting-request",
                f"batch {request.batch_id} attempt {request.attempt} was asked before with "
                "other tokens, model or participants",
            )
        if claim.source != source:
            raise RequestError(
                "replayed-request",
                f"batch {request.batch_id} attempt {request.attempt} was read before at "
                f"{claim.source}",
            )
        if not claim.won and claim.owner != self.replica:
            raise NotClaimed("sibling", f"batch {request.batch_id} claimed by {claim.owner}")
        if now - self._pruned_at > 3600:
            self._pruned_at = now
            self.store.forget_requests(now - self.ledger_s)

    def participants(self, request: FragmentRequest) -> list[str]:
        """The request's participants, sorted, once they are acceptable."""
        try:
            return acceptable_participants(
                self.partner, request.participants, self.peers.registered, self.min_participants
            )
        except ParticipantsError as exc:
            raise RequestError(exc.reason, str(exc)) from exc

    def compute(self, request: FragmentRequest, model: LoadedModel) -> EncryptedFragment:
        participants = self.participants(request)
        values, flags = self.store.lookup(request.tokens)
        # A flags-only re-request needs no bins: its score fields stay empty.
        rows = [] if request.flags_only else model.binning.transform(values).tolist()
        hits = flags.tolist()
        spec = model.bundle.packing
        started = time.perf_counter()
        payload: dict[str, object]
        if isinstance(model.tables, FragmentTables):
            context = MaskContext(
                batch_id=request.batch_id,
                attempt=request.attempt,
                participants=tuple(participants),
                flags_only=request.flags_only,
                slot_count=len(request.tokens),
                flag_bits=spec.flag_bits,
                modulus=int(model.tables.public_key.n),
                model_version=request.model_version,
                batch_digest=batch_digest(request.token_digests),
            )
            try:
                seeds = self.peers.seeds_for(participants)
            except UnknownPeerError as exc:
                raise RequestError(
                    "no-agreement-key", f"no agreement key from {exc.names}"
                ) from exc
            addend = fragment_addend(spec, context, self.partner, seeds, self.peers.tag_seed, hits)
            on_empty = self._factor_computed_inline
            factor = model.factors.take(on_empty) if model.factors is not None else None
            ciphertext = model.tables.fragment(rows, addend=addend, factor=factor)
            payload = {"mode": "paillier", "ciphertext": int_to_b64(ciphertext)}
        elif request.flags_only:
            payload = {
                "mode": "plaintext",
                "plain_slots": [slot_value(spec, 0, int(h)) for h in hits],
            }
        else:
            # Benchmark-only crypto-off mode: no masks, hits counted (docs/protocol.md).
            payload = {"mode": "plaintext", "plain_slots": model.tables.fragment(rows, hits)}
        CRYPTO_SECONDS.labels(service="partner", operation="fragment").observe(
            time.perf_counter() - started
        )
        fragment = EncryptedFragment.model_validate(
            {
                "batch_id": request.batch_id,
                "partner": self.partner,
                "model_version": request.model_version,
                "key_id": model.bundle.key_id,
                "slot_count": len(request.tokens),
                "attempt": request.attempt,
                "participants": participants,
                "flags_only": request.flags_only,
                "signed_at": datetime.now(UTC),
                "signature": "",
                **payload,
            }
        )
        return fragment.model_copy(
            update={"signature": sign(self.signing_key, fragment.signing_bytes())}
        )

"""Answer a fragment request: look tokens up, bin them privately, add the pre-shifted
encrypted table entries slot by slot, re-randomise, sign."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import EncryptedFragment, FragmentRequest, PartnerBundle
from services.kernel.crypto.codec import b64_to_int, int_to_b64
from services.kernel.crypto.packing import FragmentTables, PlainTables
from services.kernel.crypto.paillier import PublicKey
from services.kernel.crypto.signing import sign
from services.kernel.metrics import CRYPTO_SECONDS
from services.partner.binning import Binning
from services.partner.store import FeatureStore

log = logging.getLogger(__name__)

PLAINTEXT_KEY_ID = "plaintext"


class RequestError(ValueError):
    """A request this partner cannot answer; ``reason`` is the DLQ reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LoadedModel:
    """A partner bundle made ready to serve: its binning and its shifted tables."""

    def __init__(
        self,
        bundle: PartnerBundle,
        binning: Binning,
        tables: FragmentTables | PlainTables,
    ) -> None:
        self.bundle = bundle
        self.binning = binning
        self.tables = tables


def build_model(
    bundle: PartnerBundle, store: FeatureStore, *, allow_plaintext: bool
) -> LoadedModel:
    """CPU-heavy (W squarings per slot and entry); call it off the event loop."""
    binning = store.binning(bundle.binning_id)
    if binning is None:
        raise ValueError(
            f"bundle {bundle.model_version} needs binning {bundle.binning_id}, unknown"
        )
    if binning.bins_per_feature != [len(row) for row in bundle.tables]:
        raise ValueError(f"bundle {bundle.model_version} tables do not match the binning")
    if bundle.key_id == PLAINTEXT_KEY_ID:
        if not allow_plaintext:
            raise ValueError("plaintext bundles are refused (benchmark-only mode is off)")
        entries = [[b64_to_int(c) for c in row] for row in bundle.tables]
        return LoadedModel(bundle, binning, PlainTables(bundle.packing, entries))
    public_key = PublicKey.from_b64(bundle.public_key_n)
    if public_key.key_id != bundle.key_id:
        raise ValueError("bundle key_id does not match its public key")
    tables = [[b64_to_int(c) for c in row] for row in bundle.tables]
    return LoadedModel(bundle, binning, FragmentTables(public_key, bundle.packing, tables))


class ModelCache:
    """Loaded models by version. Building happens in a worker thread (gmpy2 releases the
    GIL in batched powmods), so the service keeps answering while a new version loads."""

    def __init__(self, store: FeatureStore, *, partner: str, allow_plaintext: bool) -> None:
        self.store = store
        self.partner = partner
        self.allow_plaintext = allow_plaintext
        self.models: dict[str, LoadedModel] = {}
        self._building: dict[str, asyncio.Task[LoadedModel]] = {}
        self.on_ready: Callable[[str], Awaitable[None]] | None = None

    KEEP = 4  # the newest versions stay loaded: in-flight batches of the previous ones

    def offer(self, bundle: PartnerBundle) -> None:
        if bundle.partner != self.partner:
            raise ValueError(f"bundle for {bundle.partner!r} offered to {self.partner!r}")
        for stale in list(self.models)[: max(0, len(self.models) - self.KEEP + 1)]:
            del self.models[stale]  # dicts keep insertion order: oldest first
        if bundle.model_version in self.models or bundle.model_version in self._building:
            return
        task = asyncio.get_running_loop().create_task(self._build(bundle))
        self._building[bundle.model_version] = task

    async def _build(self, bundle: PartnerBundle) -> LoadedModel:
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(
                build_model, bundle, self.store, allow_plaintext=self.allow_plaintext
            )
        except Exception:
            log.exception("cannot load model %s", bundle.model_version)
            raise
        finally:
            self._building.pop(bundle.model_version, None)
        self.models[bundle.model_version] = model
        log.info("model %s ready in %.1fs", bundle.model_version, time.perf_counter() - started)
        if self.on_ready is not None:
            await self.on_ready(bundle.model_version)
        return model

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
        self, partner: str, store: FeatureStore, cache: ModelCache, signing_key: Ed25519PrivateKey
    ) -> None:
        self.partner = partner
        self.store = store
        self.cache = cache
        self.signing_key = signing_key

    async def answer(self, request: FragmentRequest, wait_s: float) -> EncryptedFragment:
        if request.partner != self.partner:
            raise RequestError("wrong-partner", f"request for {request.partner!r}")
        model = await self.cache.get(request.model_version, wait_s)
        if model is None:
            raise RequestError(
                "unknown-model-version", f"model {request.model_version} is not loaded here"
            )
        if len(request.tokens) > model.bundle.packing.slots:
            raise RequestError(
                "too-many-slots",
                f"{len(request.tokens)} tokens for {model.bundle.packing.slots} slots",
            )
        return self.compute(request, model)

    def compute(self, request: FragmentRequest, model: LoadedModel) -> EncryptedFragment:
        values, flags = self.store.lookup(request.tokens)
        rows = model.binning.transform(values).tolist()
        hits = flags.tolist()
        started = time.perf_counter()
        payload: dict[str, object]
        if isinstance(model.tables, FragmentTables):
            payload = {
                "mode": "paillier",
                "ciphertext": int_to_b64(model.tables.fragment(rows, hits)),
            }
        else:
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
                "signed_at": datetime.now(UTC),
                "signature": "",
                **payload,
            }
        )
        return fragment.model_copy(
            update={"signature": sign(self.signing_key, fragment.signing_bytes())}
        )

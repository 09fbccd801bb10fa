"""``fedscreen train``: read the bank's data, run the protocol, write and roll out bundles."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from schemas import BankBundle, PartnerBundle, PolicyConfig
from services.kernel.config import KafkaSettings
from services.kernel.crypto.paillier import generate_keypair, save_private_key
from services.kernel.crypto.signing import PartnerKeyRegistry, load_signing_key
from services.kernel.crypto.tokens import load_token_source
from services.kernel.kafka.topics import ROLLOUT_BANK, rollout_topic
from services.kernel.model.rollout import publish_bundle
from services.training.bundles import build_bundles
from services.training.coordinator import Coordinator
from services.training.parallel import CryptoPool
from services.training.trainer import BankRows, FederatedTrainer, Trained, TrainParams


class DataError(ValueError):
    pass


def read_bank_csv(
    path: Path, id_column: str, features: list[str], label_column: str | None
) -> BankRows:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        wanted = [id_column, *features, *([label_column] if label_column else [])]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"{path} has no column(s) {', '.join(missing)}")
        ids, xs, ys = [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                xs.append([float(row[f]) if row[f] not in ("", "NA") else np.nan for f in features])
                if label_column:
                    ys.append(float(row[label_column]))
            except ValueError as exc:
                raise DataError(f"{path}:{line}: {exc}") from exc
            ids.append(row[id_column])
    y = np.array(ys) if label_column else None
    if y is not None and not set(np.unique(y)) <= {0.0, 1.0}:
        raise DataError(f"{path}: label {label_column} must be 0/1")
    return BankRows(ids, np.array(xs, dtype=np.float64), y)


@dataclass
class TrainJob:
    train: BankRows
    test: BankRows | None
    bank_features: list[str]
    partners: list[str]
    token_keys_dir: Path
    paillier_dir: Path
    signing_key_file: Path
    """The bank's Ed25519 key: every message to a partner and every bundle is signed."""
    partner_keys: str
    """The partners' Ed25519 public keys, name=base64url,...: every reply must verify."""
    policy: PolicyConfig
    out_dir: Path
    params: TrainParams
    key_bits: int = 2048
    model_version: str | None = None
    rollout: bool = True
    trace_dir: Path | None = None
    """Write what the bank holds after the session (trace.npz) for the privacy audit."""
    allow_hmac_tokens: bool = False
    """Opt in to keyed-HMAC tokens where no PSI token map exists (docs/privacy.md)."""
    timeout_s: float = 900.0


@dataclass
class TrainResult:
    model_version: str
    bank: BankBundle
    partners: dict[str, PartnerBundle]
    trained: Trained
    seconds: float
    bytes_sent: dict[str, int]
    bytes_received: dict[str, int]


async def run_training(
    job: TrainJob, kafka: KafkaSettings, progress: Callable[[str, float], None] | None = None
) -> TrainResult:
    started = time.perf_counter()
    tokenizers = {
        p: load_token_source(job.token_keys_dir, p, allow_hmac=job.allow_hmac_tokens)
        for p in job.partners
    }
    version = job.model_version or datetime.now(UTC).strftime("m-%Y%m%dT%H%M%S")
    session_id = f"train-{version}"
    key = generate_keypair(job.key_bits)  # a fresh key per model version
    save_private_key(key, job.paillier_dir / f"{key.key_id}.json")
    signing_key = load_signing_key(job.signing_key_file)
    registry = PartnerKeyRegistry.parse(job.partner_keys)
    coordinator = Coordinator(
        kafka, session_id, job.partners, job.timeout_s, signing_key=signing_key, registry=registry
    )
    async with coordinator:
        with CryptoPool(key) as pool:
            trainer = FederatedTrainer(
                coordinator,
                key,
                tokenizers,
                job.params,
                progress,
                pool,
                trace=job.trace_dir is not None,
            )
            trained = await trainer.fit(job.train, job.test)
        if trainer.trace is not None and job.trace_dir is not None:
            trainer.trace.save(job.trace_dir)
        bytes_sent, bytes_received = coordinator.bytes_sent, coordinator.bytes_received
    bank, partner_bundles = build_bundles(
        trained,
        key,
        model_version=version,
        session_id=session_id,
        bank_features=job.bank_features,
        policy=job.policy,
        signing_key=signing_key,
    )
    directory = job.out_dir / version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bank-bundle.json").write_text(bank.model_dump_json())
    for name, bundle in partner_bundles.items():
        (directory / f"partner-{name}.json").write_text(bundle.model_dump_json())
    seconds = time.perf_counter() - started
    report = {
        "model_version": version,
        "key_id": key.key_id,
        "metrics": trained.metrics,
        "history": trained.history,
        "seconds": seconds,
        "bytes_sent_to_partner": bytes_sent,
        "bytes_received_from_partner": bytes_received,
    }
    (directory / "report.json").write_text(json.dumps(report, indent=2))
    if job.test is not None and trained.test_scores is not None:
        with (directory / "test_scores.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "score"])
            writer.writerows(zip(job.test.ids, trained.test_scores.tolist(), strict=True))
    if job.rollout:
        for name, bundle in partner_bundles.items():
            await publish_bundle(kafka, rollout_topic(name), name, bundle)
        await publish_bundle(kafka, ROLLOUT_BANK, "bank", bank)
    return TrainResult(version, bank, partner_bundles, trained, seconds, bytes_sent, bytes_received)

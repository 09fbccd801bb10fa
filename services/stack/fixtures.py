"""A serving deployment without federated training, for the benchmark and the tests
(the demo and ``fedscreen evaluate`` use its keys and stores, then train for real).

A harness (never a service) sees every party's data, so it can fit bins and a quick
scorecard directly: per-bin log-odds shrunk by the feature count, then a bank
LightGBM on top. Everything else is real: keys, partner SQLite stores keyed by
tokens, private binnings saved in those stores, encrypted tables, bundles, policy,
and each partner's signing and agreement keys (secure aggregation is on).
The demo trains with the real federated protocol instead (``fedscreen train``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np

from schemas import BankBundle, PartnerBundle, PartnerScorecard, PolicyConfig
from services.kernel.crypto.codec import b64_to_bytes, int_to_b64
from services.kernel.crypto.packing import DEFAULT_FLAG_BITS, DEFAULT_FRAC_BITS, packing_for
from services.kernel.crypto.paillier import (
    PLAINTEXT_KEY_ID,
    PrivateKey,
    generate_keypair,
    save_private_key,
    write_secret,
)
from services.kernel.crypto.signing import (
    PartnerKeyRegistry,
    load_signing_key,
    new_signing_key,
    public_key_b64,
    save_signing_key,
)
from services.kernel.crypto.tokens import Tokenizer, new_token_key
from services.partner.agreement import (
    PeerDirectory,
    announcement,
    load_agreement_key,
    new_agreement_key,
    save_agreement_key,
)
from services.partner.binning import Binning
from services.partner.store import PartnerStore, StoreError, open_store, sqlite_url


@dataclass
class PartnerData:
    name: str
    features: list[str]
    values: np.ndarray  # (n, J), aligned with BankData.ids
    blacklisted: np.ndarray  # (n,) bool


@dataclass
class BankData:
    ids: list[str]
    features: list[str]
    values: np.ndarray  # (n, F)
    labels: np.ndarray  # (n,) 0/1


@dataclass
class Deployment:
    """Files a run's processes read, under one directory."""

    root: Path
    paillier_dir: Path
    token_dir: Path
    partner_dbs: dict[str, Path] = field(default_factory=dict)
    store_urls: dict[str, str] = field(default_factory=dict)
    """Partners whose store is not the SQLite file under ``root`` (PostgreSQL)."""
    signing_keys: dict[str, Path] = field(default_factory=dict)
    partner_public_keys: dict[str, str] = field(default_factory=dict)
    agreement_keys: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def at(cls, root: Path) -> Deployment:
        return cls(
            root=root, paillier_dir=root / "keys" / "paillier", token_dir=root / "keys" / "tokens"
        )

    @property
    def bank_signing_key(self) -> Path:
        """The bank's Ed25519 key (made on first use): it signs requests, bundles,
        training and PSI messages; every partner is given its public half."""
        path = self.root / "keys" / "bank-signing.pem"
        if not path.exists():
            save_signing_key(new_signing_key(), path)
        return path

    @property
    def bank_public_key(self) -> str:
        return public_key_b64(load_signing_key(self.bank_signing_key))

    @property
    def registry_spec(self) -> str:
        return ",".join(f"{n}={k}" for n, k in self.partner_public_keys.items())

    @property
    def hmac_tokens(self) -> bool:
        """Whether this deployment's tokens are keyed HMAC (the fixtures' shortcut) rather
        than PSI token maps: the services must then be told to accept them."""
        return any(self.token_dir.glob("*.key")) and not any(self.token_dir.glob("*.csv"))

    def new_partner_keys(self, partner: str) -> Tokenizer:
        """Token key shared by bank and partner (keyed HMAC: test and benchmark data only,
        whose ids are synthetic), and the partner's signing key."""
        self.token_dir.mkdir(parents=True, exist_ok=True)
        token_path = self.token_dir / f"{partner}.key"
        if not token_path.exists():
            write_secret(token_path, (new_token_key() + "\n").encode())
        self.new_signing_key(partner)
        return Tokenizer(b64_to_bytes(token_path.read_text().strip()))

    def new_signing_key(self, partner: str) -> Path:
        """The partner's signing key (made on first use); the bank registers its public half."""
        path = self.root / "partners" / partner / "signing.pem"
        if not path.exists():
            save_signing_key(new_signing_key(), path)
        self.signing_keys[partner] = path
        self.partner_public_keys[partner] = public_key_b64(load_signing_key(path))
        return path

    def agreement_key(self, partner: str) -> Path:
        """The partner's X25519 key file for secure aggregation, made on first use."""
        if partner not in self.agreement_keys:
            path = self.root / "partners" / partner / "agreement.pem"
            save_agreement_key(new_agreement_key(), path)
            self.agreement_keys[partner] = path
        return self.agreement_keys[partner]

    def peer_directory(self, partner: str) -> PeerDirectory:
        """What ``partner``'s process would hold once it has read every other partner's
        signed agreement key from fed.agreement-keys.v1 (for in-process tests)."""
        directory = PeerDirectory(
            partner,
            load_agreement_key(self.agreement_key(partner)),
            PartnerKeyRegistry.parse(self.registry_spec),
        )
        now = datetime.now(UTC)
        for peer, signing_path in self.signing_keys.items():
            key = load_agreement_key(self.agreement_key(peer))
            directory.offer(announcement(peer, key, load_signing_key(signing_path), now))
        return directory

    def write_partner_csv(self, data: PartnerData, ids: Sequence[str]) -> Path:
        """The partner's own data as it would export it: its ids, features, blacklist."""
        directory = self.root / "partners" / data.name
        directory.mkdir(parents=True, exist_ok=True)
        csv_path = directory / "features.csv"
        with csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ID", *data.features, "BLACKLISTED"])
            for i, customer in enumerate(ids):
                row = ["" if np.isnan(v) else repr(float(v)) for v in data.values[i]]
                writer.writerow([customer, *row, int(data.blacklisted[i])])
        return csv_path

    def store_url(self, partner: str) -> str:
        """Where the partner's store is: its URL, or its SQLite file under ``root``."""
        if partner in self.store_urls:
            return self.store_urls[partner]
        return sqlite_url(self.partner_dbs[partner])

    def load_partner_store(self, data: PartnerData, ids: Sequence[str]) -> PartnerStore:
        tokenizer = self.new_partner_keys(data.name)
        csv_path = self.write_partner_csv(data, ids)
        db = csv_path.parent / "features.sqlite"
        store = open_store(self.store_urls.get(data.name) or sqlite_url(db), create=True)
        store.load_csv(
            csv_path,
            id_column="ID",
            features=data.features,
            tokenizer=tokenizer,
            blacklist_column="BLACKLISTED",
        )
        if data.name not in self.store_urls:
            self.partner_dbs[data.name] = db
        return store


def quick_scorecard(
    bins: np.ndarray, bins_per_feature: list[int], y: np.ndarray
) -> list[list[float]]:
    """Per-bin log-odds against the base rate, divided by the feature count."""
    base = np.log((y.mean() + 1e-9) / (1 - y.mean() + 1e-9))
    weights = []
    for j, count in enumerate(bins_per_feature):
        row = []
        for b in range(count):
            mask = bins[:, j] == b
            pos, neg = y[mask].sum() + 0.5, (1 - y[mask]).sum() + 0.5
            row.append(float(np.clip((np.log(pos / neg) - base) / len(bins_per_feature), -2, 2)))
        weights.append(row)
    return weights


def install_model(
    store: PartnerStore,
    scorecard_id: str,
    binning: Binning,
    weights: Sequence[Sequence[float]],
    key: PrivateKey | None,
) -> None:
    """What a training session leaves with a partner: its bins and its weights,
    encrypted under the model's key (fixed point, no offset), or in plaintext for the
    benchmark's crypto-off mode. For tests and benchmarks that skip training."""
    fixed = [round(w * (1 << DEFAULT_FRAC_BITS)) for row in weights for w in row]
    if key is not None:
        n = int(key.public.n)
        fixed = [int(c) for c in key.encrypt_many([w % n for w in fixed])]
    store.save_binning(scorecard_id, binning)
    store.save_scorecard(
        scorecard_id, key.key_id if key else PLAINTEXT_KEY_ID, binning.bins_per_feature, fixed
    )


def stored_weights(db: Path | str, scorecard_id: str, key: PrivateKey | None) -> list[list[float]]:
    """A partner's stored weights in plaintext, decrypted with the bank's key: the test
    harness's view of both parties, never a service's. ``db``: a SQLite file or a URL."""
    store = open_store(db if isinstance(db, str) else sqlite_url(db))
    try:
        scorecard = store.scorecard(scorecard_id)
    finally:
        store.close()
    if scorecard is None:
        raise StoreError(f"{store.location} holds no weights {scorecard_id}")
    scale = float(1 << DEFAULT_FRAC_BITS)
    if key is None:
        return [[w / scale for w in row] for row in scorecard.rows()]
    n = int(key.public.n)
    out = []
    for row in scorecard.rows():
        plain = [int(key.decrypt(c)) for c in row]
        out.append([(m - n if m > n // 2 else m) / scale for m in plain])
    return out


def build_quick_model(
    deployment: Deployment,
    bank: BankData,
    partners: Sequence[PartnerData],
    policy: PolicyConfig,
    *,
    model_version: str,
    key_bits: int = 2048,
    plaintext: bool = False,
    max_bins: int = 16,
    trees: int = 60,
    flag_bits: int = DEFAULT_FLAG_BITS,
) -> tuple[BankBundle, dict[str, PartnerBundle], PrivateKey | None]:
    key = None if plaintext else generate_keypair(key_bits)
    if key is not None:
        save_private_key(key, deployment.paillier_dir / f"{key.key_id}.json")
    key_id = key.key_id if key else PLAINTEXT_KEY_ID
    cards, partner_scores = [], np.zeros(len(bank.ids))
    for data in partners:
        store = deployment.load_partner_store(data, bank.ids)
        binning = Binning.fit(data.values, max_bins)
        bins = binning.transform(data.values)
        weights = quick_scorecard(bins, binning.bins_per_feature, bank.labels)
        install_model(store, model_version, binning, weights, key)
        store.close()
        partner_scores += np.array(
            [sum(weights[j][b] for j, b in enumerate(row)) for row in bins.tolist()]
        )
        cards.append(PartnerScorecard(partner=data.name, bins_per_feature=binning.bins_per_feature))
    packing = packing_for(
        key.public.bits if key else key_bits,
        [len(p.features) for p in partners],
        flag_bits=flag_bits,
    )
    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1, "verbose": -1}
    booster = lgb.train(
        params, lgb.Dataset(bank.values, bank.labels, init_score=partner_scores), trees
    )
    fallback = lgb.train(params, lgb.Dataset(bank.values, bank.labels), trees)
    now = datetime.now(UTC)
    public_n = key.public.to_b64() if key else int_to_b64(1)
    bank_bundle = BankBundle(
        model_version=model_version,
        created_at=now,
        key_id=key_id,
        public_key_n=public_n,
        packing=packing,
        bank_features=bank.features,
        partners=cards,
        booster=booster.model_to_string(),
        stacked=False,
        fallback_booster=fallback.model_to_string(),
        policy=policy,
    )
    partner_bundles = {
        data.name: PartnerBundle(
            model_version=model_version,
            created_at=now,
            partner=data.name,
            binning_id=model_version,
            key_id=key_id,
            public_key_n=public_n,
            packing=packing,
        )
        for data in partners
    }
    return bank_bundle, partner_bundles, key


def partner_data_from_columns(
    name: str, columns: Mapping[str, np.ndarray], blacklisted: np.ndarray
) -> PartnerData:
    names = list(columns)
    return PartnerData(name, names, np.column_stack([columns[n] for n in names]), blacklisted)

"""Partner settings (env prefix ``PARTNER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.config import InstanceId, MetricsHost
from services.partner.store import check_store_url, read_store_url, sqlite_url


class PartnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARTNER_", extra="ignore")

    name: str = Field(default="partner", pattern=r"^[a-z0-9-]+$")
    db: Path = Field(
        default=Path("partner.sqlite"),
        description="The feature store as a SQLite file, when PARTNER_STORE_URL is not set.",
    )
    store_url: str = Field(
        default="",
        description="The feature store: sqlite:///path/features.sqlite (one replica, or "
        "several on one machine sharing the file) or "
        "postgresql://user:password@host:port/database (every replica of this partner on one "
        "database; the ledger's claims make exactly one answer each request). Empty: "
        "sqlite:// of PARTNER_DB.",
    )
    store_url_file: Path | None = Field(
        default=None,
        description="A file holding PARTNER_STORE_URL (a mounted Secret: the URL carries the "
        "database password), if not PARTNER_STORE_URL.",
    )
    signing_key_file: Path = Field(
        default=Path("partner-signing.pem"),
        description="Ed25519 key that signs fragments and this partner's agreement key.",
    )
    agreement_key_file: Path = Field(
        default=Path("partner-agreement.pem"),
        description="X25519 key for the pairwise masks of secure aggregation "
        "(`fedscreen keys agreement`).",
    )
    instance_id: InstanceId = ""
    bank_key: str = Field(
        default="",
        description="The bank's Ed25519 public key, base64url (printed by `fedscreen keys "
        "signing` for the bank's key), obtained from the bank out of band. Every request, "
        "bundle, training and PSI message must verify under it; a Paillier key is trusted "
        "only inside a signed bundle or training start. Required (or PARTNER_BANK_KEY_FILE).",
    )
    bank_key_file: Path | None = Field(
        default=None, description="A file holding the bank's public key, if not PARTNER_BANK_KEY."
    )
    peer_signing_keys: str = Field(
        default="",
        description="The other partners' Ed25519 signing keys, name=base64url,... (obtained "
        "from each partner, not through the bank): only agreement keys they sign are used, "
        "and only these partners may appear in a request's participants.",
    )
    min_participants: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Refuse requests and training sessions with fewer participants. With 1 "
        "(a one-partner federation: an explicit opt-in), nothing masks this partner's answers: "
        "the bank reads its own aggregate score and its blacklist bit per candidate, and per "
        "training row its direction scores, all under weights only this partner holds "
        "(docs/privacy.md).",
    )
    deadline_margin_ms: float = Field(
        default=250.0,
        ge=0,
        description="Skip a request, and drop its fragment, when less than this is left before "
        "its deadline: an answer that could arrive after the bank decided without it is never "
        "sent.",
    )
    request_ledger_days: float = Field(
        default=30.0,
        gt=0,
        description="How long the digest of every answered (batch, attempt) is kept: a second, "
        "different request for the same batch is refused within this time.",
    )
    factor_pool: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Uniform re-randomisation factors (one per fragment, about 8.5-16 ms of "
        "CPU each, 512 bytes) kept ready for the newest model, computed at the lowest "
        "priority while the machine is idle: a burst of this many batches costs the hot "
        "path nothing.",
    )
    max_bins: int = Field(default=32, ge=2, le=255, description="Cap on bins per feature.")
    allow_plaintext: bool = Field(
        default=False, description="Benchmark only: answer plaintext bundles without encryption."
    )
    metrics_port: int = Field(default=0, description="0 disables /metrics, /healthz, /readyz.")
    metrics_host: MetricsHost = "0.0.0.0"
    bundle_wait_s: float = Field(
        default=5.0, description="How long a request may wait for its model version to load."
    )

    @field_validator("store_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return check_store_url(value) if value else value

    @model_validator(mode="after")
    def _one_store(self) -> PartnerSettings:
        given = [
            name
            for name, is_set in (
                ("PARTNER_STORE_URL", bool(self.store_url)),
                ("PARTNER_STORE_URL_FILE", self.store_url_file is not None),
                ("PARTNER_DB", "db" in self.model_fields_set),
            )
            if is_set
        ]
        if len(given) > 1:
            raise ValueError(f"set one of {' and '.join(given)}, not both")
        return self

    def store(self) -> str:
        """The store's URL: PARTNER_STORE_URL, the one in PARTNER_STORE_URL_FILE, or the
        SQLite file PARTNER_DB."""
        if self.store_url_file is not None:
            return read_store_url(self.store_url_file)
        return self.store_url or sqlite_url(self.db)

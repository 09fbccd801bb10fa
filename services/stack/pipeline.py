"""The serving pipeline as real processes (partners, intake, prescreen, and optionally
webhooks with a receiver), for the demo, the benchmark and the integration tests, and
a rolling restart of the partner replicas."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from schemas import BankBundle, PartnerBundle
from services.kernel.crypto.signing import load_signing_key, signed
from services.kernel.kafka.broker import EmbeddedBroker, free_port
from services.kernel.kafka.topics import ROLLOUT_BANK, rollout_topic
from services.kernel.model.rollout import publish_bundle
from services.kernel.procs import Fleet, ServiceProcess
from services.stack.fixtures import Deployment


@dataclass
class PipelineOptions:
    plaintext: bool = False
    linger_ms: float = 20.0
    deadline_ms: float = 3000.0
    webhooks: bool = False
    webhook_secret: str | None = None
    receiver_port: int = field(default_factory=free_port)
    log_level: str = "INFO"
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    prescreen_workers: int = 1
    """Prescreen processes with the same app id: the first is ``prescreen``, the others
    ``prescreen-2``, ``prescreen-3``, ...; they split the partitions between them."""
    partner_replicas: int = 1
    """Processes per partner: ``partner-<name>``, then ``partner-<name>-r2``, ...; more
    than one needs a store every replica shares (``Deployment.store_urls``)."""


class Pipeline:
    def __init__(
        self,
        broker: EmbeddedBroker,
        deployment: Deployment,
        partners: list[str],
        options: PipelineOptions | None = None,
    ) -> None:
        self.broker = broker
        self.deployment = deployment
        self.partners = partners
        self.options = options or PipelineOptions()
        self.fleet = Fleet()
        self.logs = deployment.root / "logs"

    @property
    def deliveries_path(self) -> Path:
        return self.deployment.root / "receiver" / "deliveries.jsonl"

    def _service(self, name: str, args: list[str], env: dict[str, str]) -> ServiceProcess:
        service = ServiceProcess(
            name=name,
            args=[*args, "--log-level", self.options.log_level],
            env={},
            log_path=self.logs / f"{name}.log",
        )
        port_var = {
            "intake": "INTAKE_METRICS_PORT",
            "prescreen": "PRESCREEN_METRICS_PORT",
            "webhooks": "WEBHOOKS_METRICS_PORT",
        }.get(name.split("-")[0], "PARTNER_METRICS_PORT")
        service.env = {
            **self.broker.env(),
            **env,
            port_var: str(service.metrics_port),
            **self.options.extra_env.get(name, {}),
        }
        return self.fleet.add(service)

    @staticmethod
    def replica_name(partner: str, replica: int) -> str:
        return f"partner-{partner}" if replica == 1 else f"partner-{partner}-r{replica}"

    def build(self) -> None:
        d, o = self.deployment, self.options
        for partner, replica in itertools.product(self.partners, range(1, o.partner_replicas + 1)):
            store = (
                {"PARTNER_STORE_URL": d.store_urls[partner]}
                if partner in d.store_urls
                else {"PARTNER_DB": str(d.partner_dbs[partner])}
            )
            self._service(
                self.replica_name(partner, replica),
                ["partner", "run"],
                {
                    "PARTNER_NAME": partner,
                    **store,
                    "PARTNER_SIGNING_KEY_FILE": str(d.signing_keys[partner]),
                    # Secure aggregation: each partner's X25519 key, and the signing keys
                    # its peers' agreement keys must verify under.
                    "PARTNER_AGREEMENT_KEY_FILE": str(d.agreement_key(partner)),
                    "PARTNER_PEER_SIGNING_KEYS": d.registry_spec,
                    # The bank's key, pinned: only what it signs is acted on.
                    "PARTNER_BANK_KEY": d.bank_public_key,
                    "PARTNER_ALLOW_PLAINTEXT": str(o.plaintext).lower(),
                    # One per replica, stable across restarts: a restarted replica
                    # replaces its readiness announcement instead of leaving one to expire.
                    "PARTNER_INSTANCE_ID": self.replica_name(partner, replica),
                },
            )
        self._service(
            "intake",
            ["intake", "run"],
            {
                "INTAKE_TOKEN_KEYS_DIR": str(d.token_dir),
                "INTAKE_SIGNING_KEY_FILE": str(d.bank_signing_key),
                # Readiness announcements count only under their party's key.
                "INTAKE_PARTNER_KEYS": d.registry_spec,
                "INTAKE_ALLOW_HMAC_TOKENS": str(d.hmac_tokens).lower(),
                "INTAKE_LINGER_MS": str(o.linger_ms),
                "INTAKE_DEADLINE_MS": str(o.deadline_ms),
            },
        )
        for n in range(1, o.prescreen_workers + 1):
            name = "prescreen" if n == 1 else f"prescreen-{n}"
            self._service(
                name,
                ["prescreen", "run"],
                {
                    "PRESCREEN_PRIVATE_KEYS_DIR": str(d.paillier_dir),
                    "PRESCREEN_PARTNER_KEYS": d.registry_spec,
                    "PRESCREEN_ALLOW_PLAINTEXT": str(o.plaintext).lower(),
                    # Each worker its own: faust's data dir is per process.
                    "PRESCREEN_DATA_DIR": str(d.root / f"{name}-data"),
                    # Signs its readiness announcements (intake verifies them).
                    "PRESCREEN_SIGNING_KEY_FILE": str(d.bank_signing_key),
                    # Stable across restarts: a restarted worker replaces its announcement.
                    "PRESCREEN_INSTANCE_ID": name,
                },
            )
        if o.webhooks:
            self._build_webhooks()

    def _build_webhooks(self) -> None:
        d, o = self.deployment, self.options
        assert o.webhook_secret is not None
        subscriptions = d.root / "webhooks" / "subscriptions.json"
        subscriptions.parent.mkdir(parents=True, exist_ok=True)
        subscriptions.write_text(
            json.dumps(
                {
                    "endpoints": [
                        {
                            "name": "demo-campaign-tool",
                            "url": f"http://127.0.0.1:{o.receiver_port}/webhooks",
                            "secret": o.webhook_secret,
                            "campaigns": ["*"],
                        }
                    ]
                }
            )
        )
        self._service(
            "webhooks", ["webhooks", "run"], {"WEBHOOKS_SUBSCRIPTIONS_FILE": str(subscriptions)}
        )
        receiver = ServiceProcess(
            name="receiver",
            args=["receiver", "run"],
            env={
                "RECEIVER_PORT": str(o.receiver_port),
                "RECEIVER_SECRET": o.webhook_secret,
                "RECEIVER_OUT": str(self.deliveries_path),
                **self.options.extra_env.get("receiver", {}),
            },
            log_path=self.logs / "receiver.log",
            metrics_port=o.receiver_port,
            ready_path="/stats",
        )
        self.deliveries_path.parent.mkdir(parents=True, exist_ok=True)
        self.fleet.add(receiver)

    async def start(
        self, bank: BankBundle | None = None, partners: dict[str, PartnerBundle] | None = None
    ) -> None:
        """Roll the model out first when given one (services become ready only once they
        have a model), then start every process and wait until each is ready."""
        if bank is not None:
            await self.publish(bank, partners or {})
        if not self.fleet.services:
            self.build()
        await self.fleet.start()

    async def start_partners(self, timeout_s: float = 60.0) -> None:
        """Start only the partner processes (they take part in training before any model
        exists, so they are waited for as alive, not ready)."""
        if not self.fleet.services:
            self.build()
        partners = [s for name, s in self.fleet.services.items() if name.startswith("partner-")]
        for service in partners:
            service.start()
        await asyncio.gather(*(s.wait_alive(timeout_s) for s in partners))

    async def receiver_stats(self) -> dict[str, int]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.options.receiver_port}/stats") as response,
        ):
            stats: dict[str, int] = await response.json()
            return stats

    async def publish(self, bank: BankBundle, partners: dict[str, PartnerBundle]) -> None:
        """As the bank's rollout does: each partner bundle signed with the bank's key."""
        settings = self.broker.settings()
        key = load_signing_key(self.deployment.bank_signing_key)
        partners = {name: signed(bundle, key) for name, bundle in partners.items()}
        # Partner bundles first: by the time intake stamps a new version on a batch,
        # partners have had the longest possible time to load theirs.
        await asyncio.gather(
            *(publish_bundle(settings, rollout_topic(n), n, b) for n, b in partners.items())
        )
        await publish_bundle(settings, ROLLOUT_BANK, "bank", bank)

    def stop(self) -> dict[str, int | None]:
        return self.fleet.stop()


async def rolling_restart(
    fleet: Fleet, partners: Sequence[str], replicas: int, *, stop_timeout_s: float = 30.0
) -> tuple[dict[str, int], dict[str, float]]:
    """SIGTERM each partner replica in turn, start it again and wait until it is ready
    before the next; each one's exit code (-999: it had to be killed) and the seconds
    from SIGTERM to ready."""
    exits: dict[str, int] = {}
    took: dict[str, float] = {}
    for partner in partners:
        for replica in range(1, replicas + 1):
            service = fleet[Pipeline.replica_name(partner, replica)]
            started = time.monotonic()
            code = await asyncio.to_thread(service.stop, stop_timeout_s)
            exits[service.name] = -999 if code is None else code
            service.start()
            await service.wait_ready(timeout_s=120.0)
            took[service.name] = time.monotonic() - started
    return exits, took

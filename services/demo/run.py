"""``fedscreen demo``: the whole product on one machine.

The demo process plays "the world": it holds every party's slice of the public data
and hands each party only its own. Every party runs as its own OS process: two
partners, the bank's training coordinator (``fedscreen train``), intake, prescreen,
webhooks, and a campaign tool that verifies every webhook with the independent
``standardwebhooks`` library. Nothing crosses between parties except over Kafka
(and the webhooks over HTTP).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
from aiokafka import TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable
from sklearn.metrics import roc_auc_score

from schemas import CandidateEvent, Decision
from services.candidates.events import send as send_candidates
from services.demo.campaigns import apply_campaigns, print_quota_change, wait_applied
from services.demo.outcome import print_outcome
from services.kernel.config import KafkaSettings
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.clients import make_consumer, partitions_of
from services.kernel.kafka.topics import DECISIONS, all_topics
from services.stack import dataset as ds
from services.stack.alignment import PartnerInput, align_and_load
from services.stack.fixtures import Deployment, PartnerData
from services.stack.pipeline import Pipeline, PipelineOptions
from services.training.policy_file import load_policy

# How much of the bank's customer base each partner holds, and how many customers it
# has that the bank does not: the PSI keeps the first, hides the second.
PARTNER_COVERAGE = {"repayments": 0.97, "payments": 0.94}
PARTNER_ONLY_CUSTOMERS = 300
CHANGED_CAMPAIGN = "card-upgrade"
"""The campaign whose quota the demo raises mid-stream (fedscreen campaigns apply)."""

REFERENCE_LGB = {
    "objective": "binary",
    "num_leaves": 15,
    "learning_rate": 0.05,
    "min_child_samples": 50,
    "verbose": -1,
    "seed": 0,
}


@dataclass
class DemoOptions:
    workdir: Path
    rows: int | None = None
    rounds: int = 8
    duplicates: int = 50
    repeat_customers: int = 200
    malformed: int = 5
    timeout_s: float = 600.0


@dataclass
class DemoResult:
    ok: bool
    problems: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, options: DemoOptions, console: Console | None = None) -> None:
        self.options = options
        self.console = console or Console()
        self.root = options.workdir
        self.quotas: dict[int, int] = {}  # the changed campaign's quota by config version

    # -- the data each party gets -------------------------------------------------
    def prepare(self) -> tuple[ds.Table, ds.Table, ds.Table, Deployment]:
        """Each party's own files. Partners know most, not all, of the bank's customers,
        and some the bank does not: the PSI finds the shared ones."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        table = ds.load()
        if self.options.rows is not None:
            table, _ = ds.split(table, test_size=1 - self.options.rows / len(table.rows), seed=7)
        train, test = ds.split(table)
        bank_dir = self.root / "bank"
        bank_columns = [ds.ID, *ds.BANK_FEATURES, ds.LABEL]
        ds.write_csv(bank_dir / "train.csv", bank_columns, train.select(bank_columns))
        ds.write_csv(bank_dir / "test.csv", bank_columns, test.select(bank_columns))
        ds.write_csv(bank_dir / "customers.csv", [ds.ID], table.select([ds.ID]))
        deployment = Deployment.at(self.root)
        rng = np.random.default_rng(11)
        all_ids = table.ids  # a property that builds the list: once, not per customer
        for name, columns in ds.REFERENCE_PARTNERS.items():
            known = np.sort(
                rng.permutation(len(table.rows))[: int(len(table.rows) * PARTNER_COVERAGE[name])]
            )
            extra = rng.integers(0, len(table.rows), size=PARTNER_ONLY_CUSTOMERS)
            values = np.vstack([table.select(columns)[known], table.select(columns)[extra]])
            flags = np.concatenate([ds.blacklist(table, name)[known], np.zeros(len(extra), bool)])
            ids = [all_ids[i] for i in known] + [f"{name}-only-{i}" for i in range(len(extra))]
            deployment.write_partner_csv(PartnerData(name, columns, values, flags), ids)
            deployment.new_signing_key(name)
        return table, train, test, deployment

    async def align(self, broker: EmbeddedBroker, deployment: Deployment) -> dict[str, int]:
        """ECDH-PSI between the bank and each partner (every side its own process), then
        each partner loads only the shared customers under their PSI tokens."""
        self.console.rule("private set intersection (ECDH on ristretto255, over Kafka)")
        partners = [
            PartnerInput(name, self._partner_dir(name) / "features.csv", columns, "BLACKLISTED")
            for name, columns in ds.REFERENCE_PARTNERS.items()
        ]
        return await align_and_load(
            broker,
            deployment,
            self.root / "bank" / "customers.csv",
            ds.ID,
            partners,
            self.root / "logs",
        )

    def _partner_dir(self, name: str) -> Path:
        return self.root / "partners" / name

    # -- the run ------------------------------------------------------------------
    async def run(self) -> DemoResult:
        c = self.console
        c.rule("[bold]fedscreen demo")
        table, train, test, deployment = self.prepare()
        c.print(
            f"data: {len(table.rows)} card holders (UCI credit default, CC BY 4.0); "
            f"bank trains on {len(train.rows)}, {len(test.rows)} held out become candidates"
        )
        c.print(
            "parties: bank (LIMIT_BAL, SEX, EDUCATION, MARRIAGE, AGE, label), "
            "repayments (PAY_*, BILL_AMT*), payments (PAY_AMT*)"
        )
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        partners = list(ds.REFERENCE_PARTNERS)
        async with EmbeddedBroker(
            partitions=4, topics=all_topics(partners), log_path=self.root / "broker.log"
        ) as broker:
            c.print(f"embedded Kafka (Tansu) on {broker.bootstrap_servers}, topics created")
            pipeline = Pipeline(
                broker,
                deployment,
                partners,
                PipelineOptions(webhooks=True, webhook_secret=secret),
            )
            try:
                shared = await self.align(broker, deployment)
                c.print(
                    "shared customers found by PSI: "
                    + ", ".join(
                        f"{name} {count:,} of the bank's {len(table.rows):,}"
                        f" (+{PARTNER_ONLY_CUSTOMERS} only theirs)"
                        for name, count in shared.items()
                    )
                )
                await pipeline.start_partners()
                c.print("partners up: " + ", ".join(partners))
                report = self.train(broker, deployment)
                c.print("starting intake, prescreen, webhooks and the campaign tool")
                await pipeline.start()
                return await self.stream(broker, pipeline, train, test, report)
            finally:
                codes = pipeline.stop()
                c.print(
                    "stopped: "
                    + ", ".join(f"{n} ({'ok' if r in (0, -15) else r})" for n, r in codes.items())
                )

    def train(self, broker: EmbeddedBroker, deployment: Deployment) -> dict[str, object]:
        """The bank's coordinator is its own process, like in production."""
        self.console.rule("federated training (Paillier 2048, over Kafka)")
        models = self.root / "bank" / "models"
        command = [
            sys.executable,
            "-m",
            "services.cli",
            "train",
            "--data",
            str(self.root / "bank" / "train.csv"),
            "--eval-data",
            str(self.root / "bank" / "test.csv"),
            "--bank-features",
            ",".join(ds.BANK_FEATURES),
            "--partner",
            "repayments",
            "--partner",
            "payments",
            "--token-keys-dir",
            str(self.root / "keys" / "tokens"),
            "--paillier-dir",
            str(self.root / "keys" / "paillier"),
            "--signing-key",
            str(deployment.bank_signing_key),
            "--partner-keys",
            deployment.registry_spec,
            "--out",
            str(models),
            "--rounds",
            str(self.options.rounds),
            "--model-version",
            "m-demo-1",
        ]
        env = {**os.environ, **broker.env()}
        completed = subprocess.run(command, env=env, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"fedscreen train failed with exit code {completed.returncode}")
        report: dict[str, object] = json.loads((models / "m-demo-1" / "report.json").read_text())
        return report

    async def stream(
        self,
        broker: EmbeddedBroker,
        pipeline: Pipeline,
        train: ds.Table,
        test: ds.Table,
        report: dict[str, object],
    ) -> DemoResult:
        c = self.console
        c.rule("pre-screening the held-out customers")
        events = self.candidates(test)
        settings = broker.settings()
        retried = events[: self.options.duplicates]  # bank systems retry
        junk = [(b"junk", f'{{"broken": {i}'.encode()) for i in range(self.options.malformed)]
        # Marketing runs the campaigns at run time: card-upgrade starts with a small quota,
        # raised to the policy's once half the candidates are decided.
        env = {**os.environ, **broker.env()}
        policy = load_policy()
        card = policy.campaign(CHANGED_CAMPAIGN)
        assert card is not None and card.quota is not None
        small = max(10, sum(e.campaign_id == CHANGED_CAMPAIGN for e in events) // 8)
        smaller = card.model_copy(update={"quota": small})
        first = [smaller if x is card else x for x in policy.campaigns]
        apply_campaigns(c, self.root / "campaigns" / "v1.toml", first, env)
        await wait_applied(pipeline.logs, 1, ["intake", "prescreen"], timeout_s=60.0)
        half = len(events) // 2
        await send_candidates(settings, events[:half])
        await self.collect(settings, {e.event_id for e in events[:half]})
        c.print(f"mid-stream: {CHANGED_CAMPAIGN}'s quota {small:,} -> {card.quota:,}")
        apply_campaigns(c, self.root / "campaigns" / "v2.toml", policy.campaigns, env)
        await wait_applied(pipeline.logs, 2, ["intake", "prescreen"], timeout_s=60.0)
        await send_candidates(settings, [*events[half:], *retried], junk)
        decisions = await self.collect(settings, {e.event_id for e in events})
        delivered = await self.await_deliveries(pipeline, decisions)
        self.quotas = {1: small, 2: card.quota}
        return self.summarise(train, test, events, decisions, delivered, report, pipeline)

    def candidates(self, test: ds.Table) -> list[CandidateEvent]:
        consent = ds.consent(test)
        campaigns = ds.campaigns(test)
        features = test.select(ds.BANK_FEATURES)
        ids = test.ids
        now = datetime.now(UTC)
        events = [
            CandidateEvent(
                event_id=f"ev-{cid}",
                customer_id=cid,
                campaign_id=campaigns[i],
                consent_marketing=bool(consent[i]),
                occurred_at=now,
                features=dict(zip(ds.BANK_FEATURES, map(float, features[i]), strict=True)),
            )
            for i, cid in enumerate(ids)
        ]
        # The same customers proposed again for the other campaign: the frequency cap.
        repeats = [
            e.model_copy(
                update={
                    "event_id": f"ev-{e.customer_id}-again",
                    "campaign_id": "personal-loan"
                    if e.campaign_id == "card-upgrade"
                    else "card-upgrade",
                }
            )
            for e in events
            if e.consent_marketing
        ][: self.options.repeat_customers]
        return events + repeats

    async def collect(self, settings: KafkaSettings, wanted: set[str]) -> dict[str, list[Decision]]:
        # No consumer group: every call reads the topic from the start, and no group join
        # (which the embedded broker holds for seconds, and longer for a group that had a
        # member before) delays the demo.
        consumer = make_consumer(settings, group_id=None)
        await consumer.start()
        decisions: dict[str, list[Decision]] = {}
        try:
            tps = [TopicPartition(DECISIONS, p) for p in await partitions_of(consumer, DECISIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            with self._progress() as bar:
                task = bar.add_task("decisions", total=len(wanted))
                deadline = time.monotonic() + self.options.timeout_s
                while len(decisions) < len(wanted) and time.monotonic() < deadline:
                    batches = await consumer.getmany(timeout_ms=500)
                    for records in batches.values():
                        for record in records:
                            decision = Decision.model_validate_json(record.value)
                            if decision.event_id in wanted:
                                decisions.setdefault(decision.event_id, []).append(decision)
                    bar.update(task, completed=len(decisions))
                # A short grace period catches any duplicate decision that trails behind.
                for _ in range(4):
                    for records in (await consumer.getmany(timeout_ms=250)).values():
                        for record in records:
                            decision = Decision.model_validate_json(record.value)
                            if decision.event_id in wanted:
                                decisions.setdefault(decision.event_id, []).append(decision)
        finally:
            await consumer.stop()
        return decisions

    async def await_deliveries(
        self, pipeline: Pipeline, decisions: dict[str, list[Decision]]
    ) -> dict[str, int]:
        released = {d[0].decision_id for d in decisions.values() if d[0].outcome == "released"}
        stats: dict[str, int] = {}
        with self._progress() as bar:
            task = bar.add_task("webhooks delivered", total=len(released))
            deadline = time.monotonic() + self.options.timeout_s
            while time.monotonic() < deadline:
                stats = await pipeline.receiver_stats()
                bar.update(task, completed=min(stats.get("unique", 0), len(released)))
                if stats.get("unique", 0) >= len(released):
                    break
                await asyncio.sleep(0.5)
        return stats

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )

    # -- the report -----------------------------------------------------------------
    def summarise(
        self,
        train: ds.Table,
        test: ds.Table,
        events: list[CandidateEvent],
        decisions: dict[str, list[Decision]],
        receiver: dict[str, int],
        report: dict[str, object],
        pipeline: Pipeline,
    ) -> DemoResult:
        c = self.console
        problems: list[str] = []
        missing = [e.event_id for e in events if e.event_id not in decisions]
        doubled = [k for k, v in decisions.items() if len({d.decision_id for d in v}) != 1]
        if missing:
            problems.append(f"{len(missing)} candidates got no decision")
        if doubled:
            problems.append(f"{len(doubled)} candidates got conflicting decisions")
        final = {k: v[0] for k, v in decisions.items()}
        print_quota_change(c, list(final.values()), CHANGED_CAMPAIGN, self.quotas)
        released = {d.decision_id for d in final.values() if d.outcome == "released"}
        delivered_ids = self._delivered_ids(pipeline)
        if not released <= delivered_ids:
            problems.append(f"{len(released - delivered_ids)} releases were not delivered")
        if receiver.get("rejected", 0):
            problems.append(f"{receiver['rejected']} webhooks failed signature verification")

        consented = [d for d in final.values() if ReasonFilter.consented(d)]
        capped = [d for d in consented if ReasonFilter.passed_cap(d)]
        scored = [d for d in capped if d.pd is not None]
        funnel = RichTable(title="Funnel")
        funnel.add_column("stage")
        funnel.add_column("candidates", justify="right")
        for stage, count in [
            ("candidate events (unique)", len(events)),
            ("  duplicates ignored", self.options.duplicates),
            ("  malformed -> bank.candidates.v1.dlq", self.options.malformed),
            ("consented (others never reach a partner)", len(consented)),
            ("within frequency cap", len(capped)),
            ("scored (federated)", len(scored)),
            ("released", len(released)),
            ("webhooks delivered, signature verified", len(released & delivered_ids)),
        ]:
            funnel.add_row(stage, str(count))
        c.print(funnel)

        reasons = Counter((d.campaign_id, d.outcome, d.reasons[0].value) for d in final.values())
        by_reason = RichTable(title="Decisions by campaign and reason")
        for column in ("campaign", "outcome", "reason", "count"):
            by_reason.add_column(column, justify="right" if column == "count" else "left")
        for (campaign, outcome, reason), count in sorted(reasons.items()):
            by_reason.add_row(campaign, outcome, reason, str(count))
        c.print(by_reason)

        metrics = report.get("metrics", {})
        assert isinstance(metrics, dict)
        floor_scores, ceiling_scores = self.reference_scores(train, test)
        floor = float(roc_auc_score(test.column(ds.LABEL), floor_scores))
        ceiling = float(roc_auc_score(test.column(ds.LABEL), ceiling_scores))
        labels = dict(zip(test.ids, test.column(ds.LABEL), strict=True))
        protocol = self._protocol_scores()
        served = [
            (labels[d.customer_id], float(d.pd or 0.0), protocol[d.customer_id])
            for d in scored
            if d.customer_id in labels and d.customer_id in protocol
        ]
        y_served = [y for y, _, _ in served]
        served_auc = float(roc_auc_score(y_served, [p for _, p, _ in served]))
        same_rows_auc = float(roc_auc_score(y_served, [q for _, _, q in served]))
        # Serving (fixed point, encrypted) and training (floats) score the same model.
        drift = float(np.median([abs(p - q) for _, p, q in served])) if served else 1.0
        if drift > 0.005:
            problems.append(f"served pd differs from the trained model's by {drift:.4f} (median)")
        quality = RichTable(title="Model quality on the held-out rows (AUC)")
        quality.add_column("model")
        quality.add_column("AUC", justify="right")
        quality.add_row("bank only (floor, LightGBM)", f"{floor:.4f}")
        quality.add_row(
            "federated v1 (via the protocol)", f"{metrics.get('test_auc', float('nan')):.4f}"
        )
        quality.add_row(
            f"  the same model on the {len(served)} rows prescreen scored", f"{same_rows_auc:.4f}"
        )
        quality.add_row("  served decisions' pd on those rows", f"{served_auc:.4f}")
        quality.add_row("all features pooled (ceiling, LightGBM)", f"{ceiling:.4f}")
        c.print(quality)
        c.print(f"median |served pd - trained score| on the same rows: {drift:.5f}")
        print_outcome(c, test, final, protocol, floor_scores, ceiling_scores)
        c.print(
            f"training: {report.get('seconds', 0):.0f}s, "
            f"{metrics.get('rounds', 0):.0f} rounds kept (early stopping on validation)"
        )
        if problems:
            for problem in problems:
                c.print(f"[red]problem:[/red] {problem}")
        else:
            c.print(
                "[green]every candidate decided exactly once; every release delivered and verified"
            )
        return DemoResult(ok=not problems, problems=problems)

    def _protocol_scores(self) -> dict[str, float]:
        """The trained model's test scores, as the training run computed them."""
        path = self.root / "bank" / "models" / "m-demo-1" / "test_scores.csv"
        rows = path.read_text().splitlines()[1:]
        return {cid: float(score) for cid, score in (row.split(",") for row in rows)}

    def _delivered_ids(self, pipeline: Pipeline) -> set[str]:
        path = pipeline.deliveries_path
        if not path.exists():
            return set()
        ids = set()
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):  # a line a crash cut short
                ids.add(str(json.loads(line)["webhook_id"]))
        return ids

    @staticmethod
    def reference_scores(train: ds.Table, test: ds.Table) -> tuple[np.ndarray, np.ndarray]:
        """data/README.md's references on the demo's own split: LightGBM on the bank's
        features (floor) and on every feature pooled (ceiling), their test scores."""
        pooled = [c for c in train.columns if c not in (ds.ID, ds.LABEL)]
        out = []
        for columns in (ds.BANK_FEATURES, pooled):
            model = lgb.train(
                REFERENCE_LGB, lgb.Dataset(train.select(columns), train.column(ds.LABEL)), 300
            )
            out.append(np.asarray(model.predict(test.select(columns)), dtype=np.float64))
        return out[0], out[1]


class ReasonFilter:
    @staticmethod
    def consented(decision: Decision) -> bool:
        return decision.reasons[0].value != "NO_CONSENT"

    @staticmethod
    def passed_cap(decision: Decision) -> bool:
        return decision.reasons[0].value not in {"FREQUENCY_CAP", "UNKNOWN_CAMPAIGN"}


def run_demo(options: DemoOptions) -> int:
    result = asyncio.run(Demo(options).run())
    return 0 if result.ok else 1

"""The evaluation run: split the data, give each party only its own columns, run the
real federated protocol (embedded broker, one ``fedscreen partner run`` process per
partner, the bank's ``fedscreen train`` as its own process), then score the result
against the floor and the ceiling on the same test rows.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.audit.report import Audit
from services.evaluate import metrics
from services.evaluate.audit import Auditor
from services.evaluate.outcome import PerModel, outcome
from services.evaluate.report import CEILING, FEDERATED, FLOOR, Evaluation, ModelScore, Training
from services.evaluate.report_html import render
from services.evaluate.spec import EvaluateSpec
from services.evaluate.split import (
    Dataset,
    PartyFiles,
    Split,
    read_dataset,
    split,
    write_parties,
)
from services.kernel.errors import CliError
from services.kernel.kafka.broker import EmbeddedBroker, stop_process_group
from services.kernel.kafka.topics import all_topics
from services.stack.alignment import PartnerInput, align_and_load
from services.stack.fixtures import Deployment
from services.stack.pipeline import Pipeline, PipelineOptions
from services.training.policy_file import load_policy

MODEL_VERSION = "m-evaluate"


class EvaluateError(CliError):
    """The run failed after the input checks passed; the message is one line."""


@dataclass
class Outputs:
    predictions: Path
    report_json: Path
    report_html: Path
    evaluation: Evaluation
    audit: Audit | None = None
    # The floor's and the ceiling's test scores (id, bank_only_floor, pooled_ceiling).
    reference_predictions: Path | None = None


Say = Callable[[str], None]


def _one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def prepare_workdir(spec: EvaluateSpec) -> tuple[Path, bool]:
    """The scratch directory and whether this run made it (then it is removed on success)."""
    if spec.out_dir.exists() and not spec.out_dir.is_dir():
        raise CliError(f"--out {spec.out_dir} exists and is not a directory")
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    if spec.workdir is None:
        return Path(tempfile.mkdtemp(prefix=".evaluate-", dir=spec.out_dir)).resolve(), True
    if spec.workdir.exists() and (not spec.workdir.is_dir() or any(spec.workdir.iterdir())):
        raise CliError(f"--workdir {spec.workdir} must be an empty or new directory")
    spec.workdir.mkdir(parents=True, exist_ok=True)
    return spec.workdir.resolve(), False


def train_command(spec: EvaluateSpec, workdir: Path, deployment: Deployment) -> list[str]:
    bank = workdir / "bank"
    command = [
        sys.executable,
        "-m",
        "services.cli",
        "train",
        "--data",
        str(bank / "bank_train.csv"),
        "--eval-data",
        str(bank / "bank_test.csv"),
        "--id-column",
        spec.id_column,
        "--label-column",
        spec.label_column,
        "--bank-features",
        ",".join(spec.bank_columns),
    ]
    for name in spec.partners:
        command += ["--partner", name]
    return [  # the policy: the packaged default (an evaluation never serves)
        *command,
        "--token-keys-dir",
        str(deployment.token_dir),
        "--paillier-dir",
        str(deployment.paillier_dir),
        "--signing-key",
        str(deployment.bank_signing_key),
        *(["--trace-dir", str(bank / "trace")] if spec.audit else []),
        "--partner-keys",
        deployment.registry_spec,
        "--out",
        str(bank / "models"),
        "--rounds",
        str(spec.rounds),
        "--model-version",
        MODEL_VERSION,
        "--no-rollout",
    ]


def _failure(log: Path) -> str:
    """The training process's own one-line error if it printed one, else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("fedscreen: error:")]
    return (errors or lines or ["no output"])[-1]


AfterTraining = Callable[[Path], Awaitable[None]]


async def train(
    spec: EvaluateSpec,
    workdir: Path,
    deployment: Deployment,
    broker: EmbeddedBroker,
    after: AfterTraining | None = None,
) -> Path:
    """Start the partners, run the bank's training process, watch both; returns the
    directory the training run wrote its report and test scores to. ``after`` runs with
    that directory while the partners are still up (the audit's forger needs them)."""
    # A one-partner federation is an explicit opt-in on the partner's side: the
    # evaluation stands in for its operator (docs/privacy.md).
    alone = {"PARTNER_MIN_PARTICIPANTS": "1"} if len(spec.partners) == 1 else {}
    options = PipelineOptions(extra_env={f"partner-{name}": alone for name in spec.partners})
    pipeline = Pipeline(broker, deployment, list(spec.partners), options)
    log = workdir / "logs" / "train.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        try:
            await pipeline.start_partners()
        except (RuntimeError, TimeoutError) as exc:
            raise EvaluateError(f"a partner did not start: {_one_line(exc)}") from exc
        with log.open("ab") as handle:
            process = subprocess.Popen(
                train_command(spec, workdir, deployment),
                env={**os.environ, **broker.env(), "COLUMNS": "100", "PYTHONUNBUFFERED": "1"},
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        partners = [pipeline.fleet[f"partner-{name}"] for name in spec.partners]
        while process.poll() is None:
            for partner in partners:
                if not partner.alive:
                    raise EvaluateError(
                        f"{partner.name} exited during training (see {partner.log_path})"
                    )
            await asyncio.sleep(0.5)
        if process.returncode != 0:
            raise EvaluateError(
                f"fedscreen train failed with exit code {process.returncode}: "
                f"{_failure(log)} (log: {log})"
            )
        if after is not None:
            await after(workdir / "bank" / "models" / MODEL_VERSION)
    finally:
        if process is not None:
            stop_process_group(process, 10.0)
        pipeline.stop()
    return workdir / "bank" / "models" / MODEL_VERSION


def read_test_scores(path: Path, test_ids: list[str]) -> np.ndarray:
    """The training run's test scores, in ``test_ids`` order; every id exactly once."""
    if not path.is_file():
        raise EvaluateError(f"the training run wrote no test scores ({path})")
    scores: dict[str, float] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            if row["id"] in scores:
                raise EvaluateError(f"{path}: id {row['id']} is scored twice")
            scores[row["id"]] = float(row["score"])
    missing = [i for i in test_ids if i not in scores]
    extra = len(scores) - (len(test_ids) - len(missing))
    if missing or extra:
        raise EvaluateError(
            f"{path}: {len(missing)} test ids have no score and {extra} scores are not test ids"
        )
    values = np.array([scores[i] for i in test_ids], dtype=np.float64)
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise EvaluateError(f"{path}: scores outside [0, 1]")
    return values


def training_summary(report: dict[str, Any], rounds_max: int) -> Training:
    m = report.get("metrics", {})
    return Training(
        model_version=str(report["model_version"]),
        seconds=float(report["seconds"]),
        rounds_max=rounds_max,
        rounds_run=int(m.get("rounds_run", 0)),
        rounds_kept=int(m.get("rounds", 0)),
        validation_auc=float(m.get("validation_auc", math.nan)),
        test_auc=float(m["test_auc"]) if "test_auc" in m else None,
        bytes_sent_to_partner={k: int(v) for k, v in report["bytes_sent_to_partner"].items()},
        bytes_received_from_partner={
            k: int(v) for k, v in report["bytes_received_from_partner"].items()
        },
        metrics={k: float(v) for k, v in m.items()},
    )


def write_predictions(
    path: Path, ids: list[str], scores: np.ndarray, *more: np.ndarray, header: tuple[str, ...] = ()
) -> None:
    """``id, score`` (or ``id, *header``), every score written exactly (``repr``)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *(header or ("score",))])
        columns = [list(map(repr, column.tolist())) for column in (scores, *more)]
        writer.writerows(zip(ids, *columns, strict=True))


async def evaluate(
    spec: EvaluateSpec, data: Dataset | None = None, say: Say | None = None
) -> Outputs:
    """The whole run; ``data`` is ``read_dataset(spec)`` when the caller already read it."""
    say = say or (lambda _message: None)
    started = time.perf_counter()
    if data is None:
        data = read_dataset(spec)
    parts: Split = split(data.labels, spec.test_size, spec.seed)
    test_ids = [data.ids[i] for i in parts.test]
    y_train, y_test = data.labels[parts.train], data.labels[parts.test]
    say(
        f"{len(data.ids)} rows: {len(parts.train)} to train, {len(parts.test)} to test "
        f"(stratified on {spec.label_column}, seed {spec.seed})"
    )
    workdir, temporary = prepare_workdir(spec)
    out = spec.out_dir
    targets = (out / "predictions.csv", out / "report.json", out / "report.html")
    reference = out / "predictions_reference.csv"
    for stale in (*targets, reference, out / "audit.json", out / "audit.html"):
        stale.unlink(missing_ok=True)  # a failed run must not leave older results looking current
    try:
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        bank_dir = workdir / "bank"
        files = PartyFiles(
            bank_dir / "bank_train.csv",
            bank_dir / "bank_test.csv",
            bank_dir / "customers.csv",
            {name: workdir / "partners" / name / "features.csv" for name in spec.partners},
        )
        write_parties(data, spec, parts, files)
        partners = [
            PartnerInput(name, files.partners[name], own) for name, own in spec.partners.items()
        ]
        deployment = Deployment.at(workdir)
        broker = EmbeddedBroker(
            partitions=4, topics=all_topics(spec.partners), log_path=workdir / "logs" / "broker.log"
        )
        try:
            await broker.start()
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise EvaluateError(f"the embedded broker did not start: {_one_line(exc)}") from exc
        auditor = Auditor(spec, deployment, broker) if spec.audit else None
        try:
            say("ID alignment: ECDH-PSI between the bank and each partner")
            try:
                await align_and_load(
                    broker,
                    deployment,
                    bank_dir / "customers.csv",
                    spec.id_column,
                    partners,
                    workdir / "logs",
                )
            except RuntimeError as exc:
                raise EvaluateError(_one_line(exc)) from exc
            say(
                f"federated training: bank + {', '.join(spec.partners)} "
                f"(rounds: {spec.rounds} at most)"
            )
            model_dir = await train(
                spec, workdir, deployment, broker, auditor.forge if auditor else None
            )
        finally:
            await asyncio.to_thread(broker.stop)
        if auditor is not None:
            say("privacy audit: the attacks on this run's transcript")
            audit = auditor.finish(model_dir)
        report = json.loads((model_dir / "report.json").read_text())
        training = training_summary(report, spec.rounds)
        federated = read_test_scores(model_dir / "test_scores.csv", test_ids)

        say("reference LightGBM models: bank columns (floor), all columns (ceiling)")
        scores = {FEDERATED: federated}
        columns = {FEDERATED: spec.all_columns, FLOOR: spec.bank_columns, CEILING: spec.all_columns}
        for key in (FLOOR, CEILING):
            scores[key] = metrics.reference_scores(
                data.matrix(columns[key], parts.train),
                y_train,
                data.matrix(columns[key], parts.test),
                spec.seed,
            )
        models = {
            key: ModelScore(
                metrics.auc(y_test, scores[key]), metrics.ks(y_test, scores[key]), columns[key]
            )
            for key in (FEDERATED, FLOOR, CEILING)
        }
        evaluation = Evaluation(
            data=str(spec.data),
            id_column=spec.id_column,
            label_column=spec.label_column,
            seed=spec.seed,
            test_size=spec.test_size,
            rows=len(data.ids),
            train_rows=len(parts.train),
            test_rows=len(parts.test),
            train_positive_rate=float(y_train.mean()),
            test_positive_rate=float(y_test.mean()),
            bank_columns=spec.bank_columns,
            partner_columns=spec.partners,
            models=models,
            training=training,
            reference_lightgbm={
                **metrics.reference_params(spec.seed),
                "num_trees": metrics.REFERENCE_TREES,
            },
            outcome=outcome(
                y_test,
                PerModel(scores[FEDERATED], scores[FLOOR], scores[CEILING]),
                load_policy().campaigns,  # the policy the training run embedded
                spec.quota_candidates,
            ),
        )
        outputs = Outputs(*targets, evaluation, reference_predictions=reference)
        write_predictions(outputs.predictions, test_ids, federated)
        write_predictions(
            reference, test_ids, scores[FLOOR], scores[CEILING], header=(FLOOR, CEILING)
        )
        evaluation.wall_seconds = time.perf_counter() - started
        outputs.report_json.write_text(json.dumps(evaluation.to_json(), indent=2) + "\n")
        outputs.report_html.write_text(render(evaluation, y_test, scores))
        if auditor is not None:
            outputs.audit = audit
            audit.write(out)
    except CliError as exc:
        if temporary:  # keep the logs, and say where they are
            raise EvaluateError(f"{exc} (scratch kept in {workdir})", exc.exit_code) from exc
        raise
    if temporary:
        shutil.rmtree(workdir, ignore_errors=True)
    return outputs

"""The Grafana dashboard and the Prometheus alerts, against the code and the runbook.

Every ``fedscreen_*`` series a query names must exist once ``services.kernel.metrics`` is
imported, with the labels the query groups and filters by; label values must be ones the
code emits. Alerts need a summary, a description and a runbook anchor that exists. Where
``promtool`` is installed, the rules are also checked and unit-tested with synthetic series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import services.kernel.metrics  # noqa: F401  (registers the collectors)
from schemas.common import ReasonCode
from services.kernel.kafka.topics import all_topics
from services.webhooks.delivery import AttemptResult

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "fedscreen.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRIC = re.compile(r"\bfedscreen_[a-z0-9_]+")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    found = []
    for panel in items:
        found.append(panel)
        found += panels(panel.get("panels", []))
    return found


def dashboard_queries() -> list[str]:
    return [
        target["expr"]
        for panel in panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def all_queries() -> list[str]:
    return dashboard_queries() + [rule["expr"] for rule in rules()]


def series_names() -> dict[str, Any]:
    """Every sample name the registry can expose, mapped to its collector."""
    names: dict[str, Any] = dict(REGISTRY._names_to_collectors)
    return {name: collector for name, collector in names.items() if name.startswith("fedscreen_")}


def label_names(collector: Any) -> set[str]:
    return set(getattr(collector, "_labelnames", ()))


def test_every_metric_the_queries_name_exists() -> None:
    known = series_names()
    for query in all_queries():
        missing = sorted(set(METRIC.findall(query)) - set(known))
        assert not missing, f"not in the registry: {missing} (in {query!r})"


def test_histograms_are_queried_by_bucket_and_counters_by_total() -> None:
    known = series_names()
    for query in all_queries():
        for name in METRIC.findall(query):
            kind = getattr(known.get(name), "_type", "")
            if kind == "histogram":
                assert name.endswith(("_bucket", "_sum", "_count")), name
            if kind == "counter":
                assert name.endswith("_total"), name


def test_the_dashboard_covers_every_metric() -> None:
    bases = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in series_names()}
    queried = {
        re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        for query in dashboard_queries()
        for name in METRIC.findall(query)
    }
    assert bases <= queried, f"not on the dashboard: {sorted(bases - queried)}"


def emitted_values() -> dict[str, set[str]]:
    """Label values the code emits, for the labels queries filter on."""
    dlq_reasons = set()
    for path in (ROOT / "services").rglob("*.py"):
        dlq_reasons |= set(re.findall(r'"([a-z]+(?:-[a-z]+)+)"', path.read_text()))
    partners = {f"partner-{p}" for p in ("repayments", "payments")}
    return {
        "result": set(typing.get_args(AttemptResult)),
        "topic": {spec.name for spec in all_topics(["repayments", "payments"])},
        "service": {"intake", "prescreen", "webhooks", *partners},
        "decision_reason": {code.value for code in ReasonCode},
        "dlq_reason": dlq_reasons,
    }


def test_labels_exist_and_filtered_values_are_emitted() -> None:
    known = series_names()
    values = emitted_values()
    for query in all_queries():
        names = METRIC.findall(query)
        if not names:
            continue
        labels = set().union(*(label_names(known[n]) for n in names))
        if any(n.endswith("_bucket") for n in names):
            labels.add("le")
        for group in GROUPING.findall(query):
            unknown = {g.strip() for g in group.split(",") if g.strip()} - labels
            assert not unknown, f"grouping by {unknown}, not labels of {names}: {query!r}"
        for label, operator, value in MATCHER.findall(query):
            if label == "job":
                continue
            assert label in labels, f"{label} is not a label of {names}: {query!r}"
            kind = label
            if label == "reason":
                kind = "dlq_reason" if "fedscreen_dlq_total" in names else "decision_reason"
            for alternative in value.split("|"):
                if "~" in operator and re.search(r"[.*+?\[\](){}^$\\]", alternative):
                    continue  # a pattern, not a value (faust's internal topics)
                assert alternative in values[kind], f"{label}={alternative!r} is never emitted"


def test_the_dashboard_is_valid_and_uses_the_datasource_variable() -> None:
    board = dashboard()
    everything = panels(board["panels"])
    ids = [panel["id"] for panel in everything]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    occupied: set[tuple[int, int]] = set()
    for panel in everything:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells


def runbook_anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            heading = re.sub(r"[`*]", "", match.group(1).strip().lower())
            anchors.add(re.sub(r"[^\w\- ]", "", heading).replace(" ", "-"))
    return anchors


def test_every_alert_is_annotated_and_has_a_runbook_section() -> None:
    anchors = runbook_anchors()
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules():
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbook.md", annotations["runbook_url"]
        assert anchor in anchors, f"{rule['alert']}: docs/runbook.md has no #{anchor}"


def test_the_alerts_cover_what_the_operators_need() -> None:
    expressions = " ".join(rule["expr"] for rule in rules())
    for metric in (
        "fedscreen_dlq_total",
        "fedscreen_partner_timeouts_total",
        "fedscreen_consumer_lag",
        "fedscreen_webhook_attempts_total",
        "fedscreen_webhook_subscriptions_file_valid",
        "fedscreen_decisions_total",
        "fedscreen_crypto_seconds_bucket",
        "up",
    ):
        assert re.search(rf"\b{metric}\b", expressions), f"no alert on {metric}"


# --- promtool (optional: the Debian/Ubuntu "prometheus" package ships it) ---------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


@pytest.mark.integration
@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    rendered = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def histogram(name: str, labels: dict[str, str], le_counts: dict[str, int]) -> list[dict[str, str]]:
    """A histogram whose per-minute increments put every observation in one bucket."""
    return [
        series(name + "_bucket", {**labels, "le": le}, f"0+{step}x60")
        for le, step in le_counts.items()
    ]


PENDING = {"service": "prescreen", "topic": "prescreen.pending.v1"}
CANDIDATES_IN = {"service": "intake", "topic": "bank.candidates.v1"}
HEALTHY: list[dict[str, str]] = [
    series("fedscreen_messages_in_total", CANDIDATES_IN, "0+600x60"),
    series("fedscreen_messages_in_total", PENDING, "0+60x60"),
    series("fedscreen_decisions_total", {"outcome": "released", "reason": "ELIGIBLE"}, "0+500x60"),
    series("fedscreen_webhook_attempts_total", {"result": "delivered"}, "0+300x60"),
    series(
        "fedscreen_consumer_lag",
        {"service": "intake", "topic": "bank.candidates.v1", "partition": "0"},
        "3x60",
    ),
    # prescreen's own changelogs only ever "lag": they are read back only to recover
    series(
        "fedscreen_consumer_lag",
        {"service": "prescreen", "topic": "fedscreen-prescreen-quota-changelog", "partition": "1"},
        "6000+50x60",
    ),
    series("up", {"job": "fedscreen", "instance": "intake:9100"}, "1x60"),
    *histogram(
        "fedscreen_partner_latency_seconds",
        {"partner": "payments"},
        {"0.05": 60, "1.0": 60, "2.5": 60, "+Inf": 60},
    ),
    *histogram(
        "fedscreen_crypto_seconds",
        {"service": "prescreen", "operation": "join"},
        {"0.005": 60, "0.1": 60, "0.5": 60, "+Inf": 60},
    ),
]
# alert -> (series that should trigger it, labels of the expected alert besides severity)
SCENARIOS: dict[str, tuple[list[dict[str, str]], list[dict[str, str]]]] = {
    "FedscreenDeadLetters": (
        [
            series(
                "fedscreen_dlq_total",
                {"topic": "bank.candidates.v1", "reason": "invalid-schema"},
                "0+5x60",
            ),
            series(
                "fedscreen_dlq_total",
                {"topic": "fed.fragments.v1", "reason": "late-fragment"},
                "0+5x60",
            ),
        ],
        [{"topic": "bank.candidates.v1", "reason": "invalid-schema"}],
    ),
    "FedscreenNoDecisions": (
        [
            series("fedscreen_messages_in_total", CANDIDATES_IN, "0+600x60"),
            series(
                "fedscreen_decisions_total",
                {"outcome": "suppressed", "reason": "NO_CONSENT"},
                "0+50x60",
            ),
        ],
        [{}],
    ),
    "FedscreenTargetDown": (
        [series("up", {"job": "fedscreen", "instance": "prescreen:9102"}, "0x60")],
        [{"job": "fedscreen", "instance": "prescreen:9102"}],
    ),
    "FedscreenPartnerTimeouts": (
        [
            series("fedscreen_messages_in_total", PENDING, "0+60x60"),
            series("fedscreen_partner_timeouts_total", {"partner": "repayments"}, "0+6x60"),
        ],
        [{"partner": "repayments"}],
    ),
    "FedscreenPartnerSlow": (
        histogram(
            "fedscreen_partner_latency_seconds",
            {"partner": "repayments"},
            {"0.05": 0, "1.0": 0, "2.5": 60, "+Inf": 60},
        ),
        [{"partner": "repayments"}],
    ),
    "FedscreenConsumerLagHigh": (
        [
            series(
                "fedscreen_consumer_lag",
                {"service": "prescreen", "topic": "fed.fragments.v1", "partition": "1"},
                "8000x60",
            )
        ],
        [{"service": "prescreen", "topic": "fed.fragments.v1"}],
    ),
    "FedscreenConsumerLagGrowing": (
        [
            series(
                "fedscreen_consumer_lag",
                {"service": "webhooks", "topic": "campaign.released.v1", "partition": "2"},
                "600+20x60",
            )
        ],
        [{"service": "webhooks", "topic": "campaign.released.v1"}],
    ),
    "FedscreenWebhookFailures": (
        [
            series("fedscreen_webhook_attempts_total", {"result": "delivered"}, "0+60x60"),
            series("fedscreen_webhook_attempts_total", {"result": "retryable"}, "0+60x60"),
        ],
        [{}],
    ),
    "FedscreenCryptoSlow": (
        histogram(
            "fedscreen_crypto_seconds",
            {"service": "partner", "operation": "fragment"},
            {"0.005": 0, "0.1": 0, "0.5": 60, "+Inf": 60},
        ),
        [{"service": "partner", "operation": "fragment"}],
    ),
}


@pytest.mark.integration
@needs_promtool
def test_each_alert_fires_on_its_symptom_and_none_on_a_healthy_pipeline(
    tmp_path: Path,
) -> None:
    assert PROMTOOL is not None
    # Annotations are templates checked by `promtool check rules`; the unit test compares
    # labels only, so they are left out of the copy it runs on.
    loaded = yaml.safe_load(ALERTS.read_text())
    severity = {}
    for group in loaded["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
            severity[rule["alert"]] = rule["labels"]["severity"]
    assert set(SCENARIOS) == set(severity), "one scenario per alert"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(loaded))
    tests: list[dict[str, Any]] = [
        {
            "interval": "1m",
            "input_series": HEALTHY,
            "alert_rule_test": [
                {"eval_time": "45m", "alertname": name, "exp_alerts": []} for name in SCENARIOS
            ],
        }
    ]
    for name, (inputs, expected) in SCENARIOS.items():
        tests.append(
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {
                        "eval_time": "45m",
                        "alertname": name,
                        "exp_alerts": [
                            {"exp_labels": {**labels, "severity": severity[name]}}
                            for labels in expected
                        ],
                    }
                ],
            }
        )
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "test.yaml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr

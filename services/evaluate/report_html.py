"""``report.html``: ROC curves and the federated score distributions as PNGs embedded
as base64 data URIs (one self-contained file), plus the numbers of ``report.json``."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from services.evaluate.metrics import roc
from services.evaluate.outcome import RANKING, Outcome, PerModel, bad_rate_curve
from services.evaluate.report import CEILING, FEDERATED, FLOOR, TITLES, Evaluation

COLORS = {FEDERATED: "#1f77b4", FLOOR: "#7f7f7f", CEILING: "#2ca02c"}
CURVE_FROM = 0.02  # the bad-rate curve starts at 2 % released: before that it is noise
_MODEL = {FEDERATED: "federated", FLOOR: "bank_only", CEILING: "pooled"}


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)  # the Agg backend renders it: no display, no pyplot state
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def roc_png(labels: np.ndarray, scores: Mapping[str, np.ndarray], evaluation: Evaluation) -> str:
    figure = Figure(figsize=(5.6, 5.2), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="#bbbbbb", linewidth=1)
    for key in (CEILING, FEDERATED, FLOOR):
        if key not in scores:
            continue
        fpr, tpr = roc(labels, scores[key])
        auc = evaluation.models[key].auc
        ax.plot(fpr, tpr, color=COLORS[key], linewidth=1.6, label=f"{TITLES[key]}: {auc:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC on the {evaluation.test_rows} test rows (legend: AUC)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(figure)


def distribution_png(labels: np.ndarray, scores: np.ndarray, ks: float) -> str:
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    hist, ecdf = figure.subplots(1, 2)
    bins = np.linspace(0.0, max(1e-9, float(scores.max())), 41)
    for label, color in ((0, "#1f77b4"), (1, "#d62728")):
        part = scores[labels == label]
        hist.hist(
            part,
            bins=bins,
            density=True,
            alpha=0.55,
            color=color,
            label=f"label {label} ({len(part)})",
        )
        ordered = np.sort(part)
        ecdf.step(
            ordered,
            np.arange(1, len(ordered) + 1) / len(ordered),
            where="post",
            color=color,
            label=f"label {label}",
        )
    hist.set_xlabel("federated score (predicted probability)")
    hist.set_ylabel("density")
    hist.set_title("federated scores by label")
    hist.legend(fontsize=8)
    ecdf.set_xlabel("federated score (predicted probability)")
    ecdf.set_ylabel("cumulative share")
    ecdf.set_title(f"score ECDFs by label (KS {ks:.4f})")
    ecdf.legend(fontsize=8, loc="lower right")
    for ax in (hist, ecdf):
        ax.grid(alpha=0.3)
    return _png(figure)


def outcome_png(labels: np.ndarray, scores: Mapping[str, np.ndarray], outcome: Outcome) -> str:
    """Left: the bad rate among released customers against the share released, each
    model releasing its least risky first (the campaigns' volumes marked). Right: the
    gains chart, the share of all defaulters kept out against the share declined."""
    figure = Figure(figsize=(10, 4.4), dpi=100, layout="constrained")
    rates, gains = figure.subplots(1, 2)
    for key in (FLOOR, FEDERATED, CEILING):
        share, rate = bad_rate_curve(labels, scores[key])
        start = int(np.ceil(CURVE_FROM * len(share)))
        rates.plot(share[start:], rate[start:], color=COLORS[key], linewidth=1.6, label=TITLES[key])
        declined = [g.share_declined for g in outcome.gains]
        caught = [getattr(g.caught_share, _MODEL[key]) for g in outcome.gains]
        gains.plot(
            declined, caught, color=COLORS[key], marker=".", linewidth=1.6, label=TITLES[key]
        )
    rates.axhline(outcome.bad_rate_all, color="#bbbbbb", linestyle=":", linewidth=1)
    rates.annotate(
        f"everyone: {outcome.bad_rate_all:.1%}",
        (1.0, outcome.bad_rate_all),
        textcoords="offset points",
        xytext=(-4, 4),
        ha="right",
        fontsize=8,
        color="#666666",
    )
    for volume in outcome.campaigns:
        rates.axvline(volume.share, color="#d62728", linestyle="--", linewidth=0.8)
        rates.annotate(
            f"{volume.campaign} ({volume.released:,})",
            (volume.share, 0.0),
            textcoords="offset points",
            xytext=(3, 4),
            rotation=90,
            fontsize=8,
            color="#d62728",
        )
    rates.set_xlim(0, 1)
    rates.set_ylim(bottom=0)
    rates.xaxis.set_major_formatter(PercentFormatter(1.0))
    rates.yaxis.set_major_formatter(PercentFormatter(1.0))
    rates.set_xlabel("customers released, least risky first (share of the test rows)")
    rates.set_ylabel("default rate among the released")
    rates.set_title("bad rate at equal release volume (from 2 % released)")
    rates.legend(fontsize=8, loc="upper left")
    gains.plot([0, 1], [0, 1], linestyle=":", color="#bbbbbb", linewidth=1, label="random")
    perfect = outcome.defaulters / outcome.rows
    gains.plot([0, perfect, 1], [0, 1, 1], linestyle="--", color="#bbbbbb", linewidth=1)
    gains.set_xlim(0, 1)
    gains.set_ylim(0, 1.02)
    gains.xaxis.set_major_formatter(PercentFormatter(1.0))
    gains.yaxis.set_major_formatter(PercentFormatter(1.0))
    gains.set_xlabel("customers declined, riskiest first (share of the test rows)")
    gains.set_ylabel("share of all defaulters kept out")
    gains.set_title("gains (dashed: a perfect ranking)")
    gains.legend(fontsize=8, loc="lower right")
    for ax in (rates, gains):
        ax.grid(alpha=0.3)
    return _png(figure)


def _rates(rates: PerModel[float] | PerModel[float | None]) -> list[str]:
    return [f"{r:.2%}" if r is not None else "–" for _, r in rates.items()]


def outcome_section(labels: np.ndarray, scores: Mapping[str, np.ndarray], outcome: Outcome) -> str:
    """report.html's "Outcome" section: the risk head's question, answered."""
    models = ["federated", "bank only", "pooled"]
    volumes = _table(
        [
            "volume",
            "released",
            "share of test rows",
            *(f"bad rate: {m}" for m in models),
            "defaulters avoided per 10,000 released (vs bank only)",
            "federated short of pooled, per 10,000",
        ],
        [
            [
                f"{v.campaign} (quota {v.quota:,})" if v.campaign else "sweep",
                f"{v.released:,}",
                f"{v.share:.1%}",
                *_rates(v.bad_rate),
                f"{v.avoided_per_10k:,.0f}",
                f"{v.short_of_pooled_per_10k:,.0f}",
            ]
            for v in outcome.volumes
        ],
    )
    by_band = _table(
        [
            "campaign",
            "band",
            "pd",
            *(f"customers: {m}" for m in models),
            *(f"bad rate: {m}" for m in models),
        ],
        [
            [
                b.campaign,
                b.band or "suppressed (above max_pd)",
                f"({b.pd_above:.2f}, {b.pd_at_most:.2f}]",
                *(f"{n:,} ({n / outcome.rows:.1%})" for _, n in b.customers.items()),
                *_rates(b.bad_rate),
            ]
            for b in outcome.bands
        ],
    )
    chart = outcome_png(labels, scores, outcome)
    return f"""<h2>Outcome: defaulters among the released customers</h2>
<p class="answer">{html.escape(outcome.answer())}</p>
<p>Each model releases the customers it scores least risky ({html.escape(RANKING)}); at the
same number released, the bad rate is the share of them who defaulted. Everyone released:
{outcome.bad_rate_all:.2%} ({outcome.defaulters:,} defaulters in {outcome.rows:,} test rows).
A campaign's quota is released as the same share of the {outcome.rows:,} test rows as of the
{outcome.quota_candidates:,} candidates it is sized for (<code>--quota-candidates</code>),
rounded and capped at the test rows.</p>
{volumes}
<img alt="bad rate at equal release volume, and gains chart" src="{chart}">
<h3>Bad rate by score band (each campaign's bands, by each model's pd)</h3>
{by_band}
"""


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mb(n: int) -> str:
    return f"{n:,} B ({n / 1e6:.1f} MB)"


def render(evaluation: Evaluation, labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> str:
    e, t = evaluation, evaluation.training
    models = _table(
        ["model", "AUC", "KS", "columns"],
        [
            [TITLES[key], f"{m.auc:.4f}", f"{m.ks:.4f}", ", ".join(m.columns)]
            for key, m in e.models.items()
        ],
    )
    training = _table(
        ["", ""],
        [
            ["training time (training report)", f"{t.seconds:.1f} s"],
            ["rounds run / kept / at most", f"{t.rounds_run} / {t.rounds_kept} / {t.rounds_max}"],
            ["validation AUC of the kept round", f"{t.validation_auc:.4f}"],
            ["model version", t.model_version],
            ["evaluation wall clock", f"{e.wall_seconds:.1f} s"],
        ],
    )
    traffic = _table(
        ["party", "bytes sent", "bytes received"],
        [[p, _mb(b["sent"]), _mb(b["received"])] for p, b in t.bytes_per_party().items()],
    )
    split = _table(
        ["", ""],
        [
            ["data", e.data],
            ["rows", f"{e.rows:,}"],
            ["training rows", f"{e.train_rows:,} ({e.train_positive_rate:.1%} positive)"],
            ["test rows", f"{e.test_rows:,} ({e.test_positive_rate:.1%} positive)"],
            ["test size, seed", f"{e.test_size}, {e.seed} (stratified on {e.label_column})"],
            ["id column", e.id_column],
        ],
    )
    columns = _table(
        ["party", "columns"],
        [["bank", ", ".join([*e.bank_columns, f"(label {e.label_column})"])]]
        + [[name, ", ".join(cols)] for name, cols in e.partner_columns.items()],
    )
    outcome = outcome_section(labels, scores, e.outcome) if e.outcome is not None else ""
    roc_uri = roc_png(labels, scores, e)
    dist_uri = distribution_png(labels, scores[FEDERATED], e.models[FEDERATED].ks)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fedscreen evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1050px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }}
td:nth-child(n+2) {{ font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; }}
.answer {{ font-size: 1.1em; font-weight: 600; }}
</style></head><body>
<h1>fedscreen evaluation</h1>
<p>Federated model trained through the real protocol (one process per party, Paillier over
Kafka), against LightGBM on the bank's columns alone (floor) and on all columns pooled
(ceiling), on the same stratified split.</p>
<h2>Models on the test rows</h2>
{models}
{outcome}
<h2>ROC curves</h2>
<img alt="ROC curves" src="{roc_uri}">
<h2>Federated scores by label</h2>
<img alt="federated score distributions" src="{dist_uri}">
<h2>Training</h2>
{training}
<h2>Bytes on Kafka per party (training session)</h2>
{traffic}
<h2>Split</h2>
{split}
<h2>Columns</h2>
{columns}
</body></html>
"""

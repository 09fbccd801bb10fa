"""The audit's result: ``audit.json`` for machines, ``audit.html`` for a compliance
officer. An attack *holds* (the privacy claim it tests holds) when it does no better
than ``baseline_fraction + 0.01``: what guessing achieves without it."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

MARGIN = 0.01


@dataclass(frozen=True)
class AttackResult:
    name: str
    adversary: str
    target: str
    rows: int
    recovered_fraction: float
    baseline_fraction: float
    how: str = ""
    """What the adversary held and did, in a sentence (audit.html only)."""

    @property
    def verdict(self) -> str:
        return "holds" if self.recovered_fraction <= self.baseline_fraction + MARGIN else "broken"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "adversary": self.adversary,
            "target": self.target,
            "rows": self.rows,
            "recovered_fraction": round(self.recovered_fraction, 6),
            "baseline_fraction": round(self.baseline_fraction, 6),
            "verdict": self.verdict,
        }


@dataclass
class Audit:
    model_version: str
    partners: list[str]
    attacks: list[AttackResult] = field(default_factory=list)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def holds(self) -> bool:
        return all(a.verdict == "holds" for a in self.attacks)

    def to_json(self) -> dict[str, object]:
        return {
            "model_version": self.model_version,
            "partners": self.partners,
            "generated_at": self.generated_at.isoformat(),
            "margin": MARGIN,
            "attacks": [a.to_json() for a in self.attacks],
        }

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path, html_path = directory / "audit.json", directory / "audit.html"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        html_path.write_text(render(self))
        return json_path, html_path


ADVERSARIES = {
    "curious bank": "Follows the protocol, keeps everything it holds (its private key, every "
    "message it can read, its own computations) and runs any computation on it.",
    "Kafka principal": "Can write to every topic (an operator, a leaked credential), but "
    "holds neither the bank's nor a partner's signing key.",
    "curious partner": "Follows the protocol and reads what it is sent, plus what another "
    "partner sends the bank (as if the ACLs had a hole).",
}


def render(audit: Audit) -> str:
    """One self-contained page: the verdict, then one row per attack."""
    rows = []
    for a in audit.attacks:
        colour = "#1b7f3b" if a.verdict == "holds" else "#b3261e"
        rows.append(
            "<tr>"
            f"<td>{html.escape(a.adversary)}</td>"
            f"<td>{html.escape(a.name)}</td>"
            f"<td>{html.escape(a.target)}</td>"
            f"<td class=n>{a.rows:,}</td>"
            f"<td class=n>{a.recovered_fraction:.2%}</td>"
            f"<td class=n>{a.baseline_fraction:.2%}</td>"
            f"<td style='color:{colour};font-weight:bold'>{a.verdict}</td>"
            f"<td>{html.escape(a.how)}</td>"
            "</tr>"
        )
    adversaries = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>"
        for name, text in ADVERSARIES.items()
    )
    overall = (
        "Every attack did no better than guessing: the privacy claims hold on this run."
        if audit.holds
        else "At least one attack did better than guessing: a privacy claim does not hold."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fedscreen privacy audit: {html.escape(audit.model_version)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 80rem; color: #222 }}
table {{ border-collapse: collapse; width: 100% }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4rem .6rem; text-align: left;
  vertical-align: top }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums }}
dt {{ font-weight: bold; margin-top: .5rem }}
</style></head><body>
<h1>Privacy audit of model {html.escape(audit.model_version)}</h1>
<p>Partners: {html.escape(", ".join(audit.partners))}. Generated
{audit.generated_at:%Y-%m-%d %H:%M} UTC by <code>fedscreen evaluate --audit</code>, on
the transcript of the very run it evaluated.</p>
<p><strong>{html.escape(overall)}</strong></p>
<p>Each attack is the adversary's own code, run with what that adversary holds. It
<em>holds</em> (the claim survives) when it recovers no more than the baseline, what
guessing achieves without the attack (for bin vectors: guessing the most common one for
every row), plus {MARGIN:.0%}.</p>
<table><thead><tr><th>adversary</th><th>attack</th><th>target</th><th>rows</th>
<th>recovered</th><th>baseline</th><th>verdict</th><th>what it held and did</th></tr>
</thead><tbody>{"".join(rows)}</tbody></table>
<h2>The adversaries</h2><dl>{adversaries}</dl>
<p>The threat model, each bound and the test that proves it:
<code>docs/privacy.md</code>.</p>
</body></html>
"""

"""The demo's campaigns, as the marketing operator runs them: a campaigns file applied
with ``fedscreen campaigns apply`` (its own process) before the stream, and a quota
changed mid-stream, with no restart and no new model (docs/campaigns.md)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from schemas import CampaignPolicy, Decision, ReasonCode


def _toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def campaigns_toml(campaigns: Sequence[CampaignPolicy]) -> str:
    """The file an operator would write: one [[campaigns]] table each, unset fields left out."""
    tables = []
    for campaign in campaigns:
        fields = campaign.model_dump(mode="json", exclude_none=True)
        lines = ["[[campaigns]]", *(f"{k} = {_toml_value(v)}" for k, v in fields.items())]
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


def apply_campaigns(
    console: Console,
    path: Path,
    campaigns: Sequence[CampaignPolicy],
    env: Mapping[str, str],
) -> None:
    """Write the file and run ``fedscreen campaigns apply`` on it; print what it says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(campaigns_toml(campaigns))
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "campaigns", "apply", str(path), "--by", "demo"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"fedscreen campaigns apply {path} failed: {done.stderr.strip()}")
    console.print(f"$ fedscreen campaigns apply {path.name}")
    for line in done.stdout.strip().splitlines():
        console.print(f"  {line}", markup=False, highlight=False)


async def wait_applied(logs: Path, version: int, services: Sequence[str], timeout_s: float) -> None:
    """Until each service logged that it applies this configuration version (they follow
    the topic on their own; the demo streams once both do)."""
    needle = f"campaign configuration version {version} applied"
    deadline = time.monotonic() + timeout_s
    waiting = list(services)
    while waiting:
        waiting = [s for s in waiting if needle not in _read(logs / f"{s}.log")]
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(waiting)} did not apply campaign version {version}")
        await asyncio.sleep(0.2)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def print_quota_change(
    console: Console, decisions: Sequence[Decision], campaign_id: str, quotas: Mapping[int, int]
) -> None:
    """Per configuration version: the campaign's quota, releases and quota refusals."""
    table = Table(title=f"{campaign_id}: its quota changed mid-stream (no restart, no retraining)")
    for column in ("configuration version", "quota", "decided", "released", "QUOTA_EXHAUSTED"):
        table.add_column(column, justify="right")
    mine = [d for d in decisions if d.campaign_id == campaign_id and d.decided_by == "prescreen"]
    versions = Counter(d.campaign_config_version for d in mine)
    for version in sorted(versions):
        under = [d for d in mine if d.campaign_config_version == version]
        table.add_row(
            str(version),
            f"{quotas[version]:,}" if version in quotas else "bundle's",
            f"{len(under):,}",
            f"{sum(d.outcome == 'released' for d in under):,}",
            f"{sum(ReasonCode.QUOTA_EXHAUSTED in d.reasons for d in under):,}",
        )
    console.print(table)

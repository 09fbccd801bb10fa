"""``fedscreen campaigns list``: the campaigns in force and their quotas."""

from __future__ import annotations

import sys
from datetime import datetime

from rich.console import Console
from rich.table import Table

from schemas import CampaignConfig
from services.campaigns.topic import Usage


def _used(used: int, quota: int | None) -> str:
    return f"{used:,}" if quota is None else f"{used:,} / {quota:,} ({max(0, quota - used):,} left)"


def print_campaigns(config: CampaignConfig, usage: Usage, now: datetime) -> None:
    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(
        title=f"Campaigns, configuration version {config.version} "
        f"({config.published_at:%Y-%m-%d %H:%M} UTC"
        + (f", by {config.published_by}" if config.published_by else "")
        + ")"
    )
    columns = ("campaign", "state", "dates", "max pd", "released / quota", "today / daily")
    # prescreen's own count, shown when it differs from the releases found: it is what
    # its quotas apply, and a difference means a release counted twice or not at all.
    differs = any(
        usage.counted[c.campaign_id] != usage.total[c.campaign_id] for c in config.campaigns
    )
    for column in columns + (("counted by prescreen",) if differs else ()):
        left = column in ("campaign", "state", "dates")
        table.add_column(column, justify="left" if left else "right")
    for c in config.campaigns:
        today = c.day_of(now)
        closed = c.closed_reason(now)
        state = c.state if closed is None or c.state != "active" else "waiting (outside its dates)"
        dates = f"{c.starts_on or '...'} to {c.ends_on or '...'} ({c.timezone})"
        row = [
            c.campaign_id,
            state,
            dates,
            f"{c.max_pd:g}",
            _used(usage.total[c.campaign_id], c.quota),
            _used(usage.by_day[(c.campaign_id, today)], c.daily_quota),
        ]
        table.add_row(*row, *((f"{usage.counted[c.campaign_id]:,}",) if differs else ()))
    console.print(table)

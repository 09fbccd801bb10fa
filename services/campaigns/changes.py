"""What a new campaign configuration changes against the one in force, line by line,
and the state changes ``pause``, ``resume`` and ``end`` make."""

from __future__ import annotations

from schemas import CampaignPolicy
from services.kernel.errors import CliError


def describe_changes(old: list[CampaignPolicy], new: list[CampaignPolicy]) -> list[str]:
    """One line per campaign added or removed, and per field changed (old -> new)."""
    before = {c.campaign_id: c for c in old}
    after = {c.campaign_id: c for c in new}
    lines = []
    for cid in sorted(set(before) | set(after)):
        if cid not in before:
            lines.append(f"+ {cid}: added ({_summary(after[cid])})")
        elif cid not in after:
            lines.append(f"- {cid}: removed (its candidates become UNKNOWN_CAMPAIGN)")
        else:
            a, b = before[cid].model_dump(mode="json"), after[cid].model_dump(mode="json")
            lines += [f"~ {cid}: {k}: {a[k]} -> {b[k]}" for k in sorted(a) if a[k] != b[k]]
    return lines


def _summary(c: CampaignPolicy) -> str:
    parts = [f"max_pd {c.max_pd}", f"quota {c.quota if c.quota is not None else 'none'}"]
    if c.daily_quota is not None:
        parts.append(f"daily {c.daily_quota} ({c.timezone})")
    if c.starts_on or c.ends_on:
        parts.append(f"{c.starts_on or '...'} to {c.ends_on or '...'}")
    parts.append(c.state)
    return ", ".join(parts)


TRANSITIONS = {
    "pause": ({"active"}, "paused"),
    "resume": ({"paused"}, "active"),
    "end": ({"active", "paused"}, "ended"),
}


def with_state(
    campaigns: list[CampaignPolicy], campaign_id: str, action: str
) -> list[CampaignPolicy]:
    """The campaigns with one campaign paused, resumed or ended; an impossible change
    (an unknown id, resuming an ended campaign) is a one-line error."""
    allowed, target = TRANSITIONS[action]
    found = [c for c in campaigns if c.campaign_id == campaign_id]
    if not found:
        known = ", ".join(c.campaign_id for c in campaigns) or "none"
        raise CliError(f"no campaign {campaign_id!r} in the configuration (campaigns: {known})")
    state = found[0].state
    if state not in allowed:
        why = " (an ended one stays ended; apply a new campaign id)" if state == "ended" else ""
        raise CliError(f"campaign {campaign_id} is {state}: it cannot be {target}{why}")
    return [
        c.model_copy(update={"state": target}) if c.campaign_id == campaign_id else c
        for c in campaigns
    ]

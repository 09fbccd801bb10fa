"""The campaigns file marketing edits (TOML, the ``[[campaigns]]`` tables of the policy
file, with the run-time fields): read and checked, one line per problem."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from schemas import CampaignPolicy
from services.kernel.errors import CliError


class CampaignFileError(CliError):
    """The file cannot be applied; the message has one line per problem."""


def load_campaigns(path: Path) -> list[CampaignPolicy]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CampaignFileError(f"{path}: cannot read it: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CampaignFileError(f"{path}: not TOML: {exc}") from exc
    entries = raw.get("campaigns")
    unknown = sorted(set(raw) - {"campaigns"})
    problems = [f"{path}: unknown top-level key {k!r} (only [[campaigns]])" for k in unknown]
    if not isinstance(entries, list) or not entries:
        problems.append(f"{path}: no [[campaigns]] table")
        raise CampaignFileError("\n".join(problems))
    campaigns: list[CampaignPolicy] = []
    for i, entry in enumerate(entries):
        name = entry.get("campaign_id", f"#{i + 1}") if isinstance(entry, dict) else f"#{i + 1}"
        try:
            # The policy file's JSON-like values: TOML dates arrive as dates, which the
            # strict wire model takes from Python.
            campaigns.append(CampaignPolicy.model_validate(entry))
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(part) for part in error["loc"]) or "campaign"
                problems.append(f"{path}: campaign {name}: {where}: {error['msg']}")
    # Every entry's id, valid or not: a duplicate is a problem of its own.
    ids = [e.get("campaign_id") for e in entries if isinstance(e, dict)]
    twice = sorted({str(i) for i in ids if i is not None and ids.count(i) > 1})
    problems += [f"{path}: campaign {i} is listed twice" for i in twice]
    if problems:
        raise CampaignFileError("\n".join(problems))
    return campaigns

"""The demo summary's outcome table: at each demo campaign's volume, the default rate
among the customers each model would release (docs/model.md, "The outcome report").

A campaign's candidates are the held-out customers the demo proposes to it and who
consented (the others never reach scoring). Its volume is its quota applied as in
``fedscreen evaluate`` (the same share of the held-out rows as of the 9,000 the policy
is sized for: the quota itself on the full data), capped at its candidates. Each model
releases its least risky candidates; the pipeline's own releases (first come, under
``max_pd`` and the quota) are shown beside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table as RichTable

from schemas import CampaignPolicy, Decision
from services.evaluate.outcome import PerModel, Volume, quota_volume, release
from services.stack import dataset as ds
from services.training.policy_file import load_policy


@dataclass(frozen=True)
class CampaignOutcome:
    campaign: str
    candidates: int
    volume: Volume
    served_released: int  # what the pipeline released for the campaign
    served_defaulters: int

    @property
    def served_bad_rate(self) -> float | None:
        return self.served_defaulters / self.served_released if self.served_released else None


def campaign_outcomes(
    campaigns: list[CampaignPolicy],
    held_out: int,
    candidates: Mapping[str, np.ndarray],
    labels: np.ndarray,
    scores: PerModel[np.ndarray],
    served: Mapping[str, list[int]],
) -> list[CampaignOutcome]:
    """``candidates[c]``: row indices (into ``labels`` and ``scores``) of campaign c's
    candidates; ``served[c]``: the labels of the customers the pipeline released."""
    out = []
    for campaign in campaigns:
        rows = candidates.get(campaign.campaign_id, np.array([], dtype=np.int64))
        if not campaign.quota or len(rows) == 0:
            continue
        volume = min(quota_volume(campaign.quota, held_out), len(rows))
        mine = PerModel(*(np.asarray(s)[rows] for _, s in scores.items()))
        released = served.get(campaign.campaign_id, [])
        out.append(
            CampaignOutcome(
                campaign.campaign_id,
                len(rows),
                release(labels[rows], mine, volume, campaign),
                len(released),
                sum(released),
            )
        )
    return out


def outcome_table(outcomes: list[CampaignOutcome]) -> RichTable:
    table = RichTable(
        title="Outcome: default rate among released customers, at each campaign's volume"
    )
    for column in (
        "campaign",
        "candidates",
        "released",
        "federated",
        "bank only",
        "pooled",
        "defaulters avoided per 10,000 (vs bank only)",
        "pipeline released (bad rate)",
    ):
        table.add_column(column, justify="left" if column == "campaign" else "right")
    for o in outcomes:
        rate = o.volume.bad_rate
        served = f"{o.served_bad_rate:.2%}" if o.served_bad_rate is not None else "-"
        table.add_row(
            o.campaign,
            f"{o.candidates:,}",
            f"{o.volume.released:,}",
            f"{rate.federated:.2%}",
            f"{rate.bank_only:.2%}",
            f"{rate.pooled:.2%}",
            f"{o.volume.avoided_per_10k:,.0f}",
            f"{o.served_released:,} ({served})",
        )
    return table


def print_outcome(
    console: Console,
    test: ds.Table,
    final: Mapping[str, Decision],
    protocol: Mapping[str, float],
    floor: np.ndarray,
    ceiling: np.ndarray,
) -> list[CampaignOutcome]:
    """The demo's outcome table, from its own scores: the trained federated model's test
    scores (``protocol``, by customer id), the floor's and the ceiling's (test order),
    and the pipeline's final decisions."""
    ids, y = test.ids, test.column(ds.LABEL).astype(np.int64)
    scored = np.array([cid in protocol for cid in ids])
    federated = np.array([protocol.get(cid, 1.0) for cid in ids])
    consent, proposed = ds.consent(test), np.array(ds.campaigns(test))
    candidates = {
        name: np.flatnonzero(consent & scored & (proposed == name)) for name in ds.CAMPAIGNS
    }
    label = dict(zip(ids, y.tolist(), strict=True))
    served: dict[str, list[int]] = {}
    for decision in final.values():
        if decision.outcome == "released" and decision.customer_id in label:
            served.setdefault(decision.campaign_id, []).append(label[decision.customer_id])
    scores = PerModel(federated, floor, ceiling)
    outcomes = campaign_outcomes(load_policy().campaigns, len(ids), candidates, y, scores, served)
    console.print(outcome_table(outcomes))
    for o in outcomes[:1]:
        rate, avoided = o.volume.bad_rate, o.volume.avoided_per_10k
        console.print(
            f"at {o.campaign}'s volume ({o.volume.released:,} released), the federated model "
            f"contacts {abs(avoided):,.0f} {'fewer' if avoided >= 0 else 'more'} defaulters "
            f"per 10,000 released than the bank-only model "
            f"({rate.federated:.1%} against {rate.bank_only:.1%})"
        )
    return outcomes

"""The outcome report: what the federation buys, in the risk team's terms.

A campaign releases a fixed number of customers (its quota). At that volume, the
question is not the AUC but how many defaulters the released customers hold. Each
model releases the ``V`` customers it scores least risky (pd lowest first; equal
scores in the held-out set's row order, so every run gives the same answer), and the
report compares, at the same ``V``, the bad rate among the released customers of the
federated model, the bank-only model (floor) and the pooled model (ceiling).

Pure functions over labels (1 = default) and the three models' scores on the same
rows; ``report.json``'s ``outcome`` object is :meth:`Outcome.to_json`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:  # the CLI reads the spec (and this constant) before heavy imports
    from schemas.rollout import CampaignPolicy

T = TypeVar("T")
U = TypeVar("U")

# The sweep of release volumes, as shares of the held-out rows.
SWEEP_SHARES = (0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00)
# The gains table: every 5 % of the rows declined, riskiest first.
GAINS_STEPS = 20
# The packaged policy's quotas are sized for the demo's stream of candidates: the
# 9,000 customers held out of the 30,000 reference rows (docs/model.md).
QUOTA_CANDIDATES = 9_000
PER = 10_000  # "defaulters avoided per 10,000 released"
MODELS = ("federated", "bank_only", "pooled")
RANKING = "lowest pd first; equal scores in the held-out rows' order"


@dataclass(frozen=True)
class PerModel(Generic[T]):
    """One value per model: federated, bank-only (floor), pooled (ceiling)."""

    federated: T
    bank_only: T
    pooled: T

    def items(self) -> list[tuple[str, T]]:
        return [(name, getattr(self, name)) for name in MODELS]

    def map(self, function: Callable[[T], U]) -> PerModel[U]:
        return PerModel(function(self.federated), function(self.bank_only), function(self.pooled))


def _round(value: float) -> int:
    return math.floor(value + 0.5)


def release_order(scores: np.ndarray) -> np.ndarray:
    """Row indices in release order: lowest pd first, ties in row order (stable)."""
    return np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")


def defaulters_released(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Element ``V`` (0..n): how many defaulters the ``V`` least risky customers hold."""
    ordered = np.asarray(labels, dtype=np.int64)[release_order(scores)]
    return np.concatenate([[0], np.cumsum(ordered)])


def quota_volume(quota: int, rows: int, candidates: int = QUOTA_CANDIDATES) -> int:
    """A campaign's quota on ``rows`` held-out customers: the same share of them as of
    the ``candidates`` the quota was sized for, rounded, at least 1, at most ``rows``."""
    if quota < 1 or rows < 1 or candidates < 1:
        raise ValueError("quota, rows and candidates must be positive")
    return min(rows, max(1, _round(quota * rows / candidates)))


def sweep_volumes(rows: int, shares: Sequence[float] = SWEEP_SHARES) -> list[int]:
    """Release volumes for ``shares`` of ``rows`` (rounded, at least 1, no repeats)."""
    volumes = [min(rows, max(1, _round(share * rows))) for share in shares]
    return sorted(set(volumes))


@dataclass(frozen=True)
class Volume:
    """Each model releases its ``released`` least risky customers."""

    released: int
    rows: int
    defaulters: PerModel[int]
    campaign: str | None = None  # when the volume is a campaign's quota
    quota: int | None = None  # that campaign's quota, as the policy states it

    @property
    def share(self) -> float:
        return self.released / self.rows

    @property
    def bad_rate(self) -> PerModel[float]:
        return self.defaulters.map(lambda bad: bad / self.released)

    @property
    def avoided_per_10k(self) -> float:
        """Defaulters the federated model keeps out per 10,000 released, against the
        bank-only model (negative: it contacts more)."""
        return (self.bad_rate.bank_only - self.bad_rate.federated) * PER

    @property
    def short_of_pooled_per_10k(self) -> float:
        """How many more defaulters per 10,000 released the federated model contacts
        than the pooled ceiling (what pooling the data would add)."""
        return (self.bad_rate.federated - self.bad_rate.pooled) * PER

    def to_json(self) -> dict[str, Any]:
        rates = self.bad_rate
        return {
            "released": self.released,
            "volume_share": self.share,
            "campaign": self.campaign,
            "quota": self.quota,
            "bad_rate_federated": rates.federated,
            "bad_rate_bank_only": rates.bank_only,
            "bad_rate_pooled": rates.pooled,
            **{f"defaulters_{name}": bad for name, bad in self.defaulters.items()},
            "defaulters_avoided_per_10k": self.avoided_per_10k,
            "short_of_pooled_per_10k": self.short_of_pooled_per_10k,
        }


@dataclass(frozen=True)
class Band:
    """Customers a model scores into one of a campaign's score bands, and how many of
    them default. ``band`` is ``None`` for pd above the campaign's ``max_pd``."""

    campaign: str
    band: str | None
    pd_above: float
    pd_at_most: float
    customers: PerModel[int]
    defaulters: PerModel[int]

    @property
    def bad_rate(self) -> PerModel[float | None]:
        rates = [
            bad / n if n else None
            for (_, n), (_, bad) in zip(
                self.customers.items(), self.defaulters.items(), strict=True
            )
        ]
        return PerModel(*rates)

    def to_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "band": self.band,
            "released_by_policy": self.band is not None,
            "pd_above": self.pd_above,
            "pd_at_most": self.pd_at_most,
            **{f"customers_{name}": n for name, n in self.customers.items()},
            **{f"defaulters_{name}": bad for name, bad in self.defaulters.items()},
            **{f"bad_rate_{name}": rate for name, rate in self.bad_rate.items()},
        }


def band_edges(campaign: CampaignPolicy) -> list[tuple[str | None, float, float]]:
    """(band, pd above, pd at most), as prescreen assigns them (services/prescreen/
    policy.py): bands by ``max_pd``; pd past the last band but within the campaign's
    ``max_pd`` takes the last band; above ``max_pd`` is suppressed (band ``None``)."""
    bands = sorted(campaign.score_bands, key=lambda b: b.max_pd)
    edges: list[tuple[str | None, float, float]] = []
    low = 0.0
    for band in bands:
        if low >= campaign.max_pd:
            break
        high = min(band.max_pd, campaign.max_pd)
        edges.append((band.band, low, high))
        low = high
    if low < campaign.max_pd:  # the last band stretches to max_pd
        name, above, _ = edges[-1]
        edges[-1] = (name, above, campaign.max_pd)
    edges.append((None, campaign.max_pd, 1.0))
    return edges


def _between(low: float, high: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda s: np.asarray((s > low) & (s <= high))


def bands(labels: np.ndarray, scores: PerModel[np.ndarray], campaign: CampaignPolicy) -> list[Band]:
    """The customers each model scores into each of ``campaign``'s bands."""
    y = np.asarray(labels, dtype=np.int64)
    rows = []
    edges = band_edges(campaign)
    for i, (name, above, at_most) in enumerate(edges):
        low = -math.inf if i == 0 else above  # the first band takes pd 0 itself
        high = math.inf if i == len(edges) - 1 else at_most
        inside = scores.map(_between(low, high))
        rows.append(
            Band(
                campaign.campaign_id,
                name,
                above,
                at_most,
                inside.map(lambda mask: int(mask.sum())),
                inside.map(lambda mask: int(y[mask].sum())),
            )
        )
    return rows


@dataclass(frozen=True)
class GainsPoint:
    """The ``declined`` riskiest customers of each model, and the defaulters among them."""

    declined: int
    rows: int
    defaulters_total: int
    caught: PerModel[int]

    @property
    def share_declined(self) -> float:
        return self.declined / self.rows

    @property
    def caught_share(self) -> PerModel[float]:
        total = self.defaulters_total
        return self.caught.map(lambda bad: bad / total if total else 0.0)

    @property
    def lift(self) -> PerModel[float | None]:
        share = self.share_declined
        return self.caught_share.map(lambda caught: caught / share if share else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "declined": self.declined,
            "share_declined": self.share_declined,
            **{f"defaulters_caught_share_{n}": s for n, s in self.caught_share.items()},
            **{f"lift_{name}": lift for name, lift in self.lift.items()},
        }


@dataclass(frozen=True)
class Outcome:
    rows: int
    defaulters: int
    quota_candidates: int
    campaigns: list[Volume]  # each campaign's quota on the held-out rows
    sweep: list[Volume]
    bands: list[Band]
    gains: list[GainsPoint]

    @property
    def bad_rate_all(self) -> float:
        """Everyone released: the held-out rows' default rate, the same for every model."""
        return self.defaulters / self.rows

    @property
    def volumes(self) -> list[Volume]:
        return [*self.campaigns, *self.sweep]

    def answer(self) -> str:
        """One sentence for the risk head: at the same volume released, how many fewer
        defaulters the federated model contacts than the bank-only model."""
        volumes = self.campaigns or [min(self.sweep, key=lambda v: abs(v.share - 0.5))]
        parts = []
        for i, v in enumerate(volumes):
            rate, avoided = v.bad_rate, v.avoided_per_10k
            where = f"{v.campaign}'s volume" if v.campaign else f"{v.share:.0%} released"
            who = "the federated model contacts " if i == 0 else ""
            than = " than the bank-only model" if i == 0 else ""
            parts.append(
                f"at {where} ({v.released:,} of {self.rows:,} customers released), {who}"
                f"{abs(avoided):,.0f} {'fewer' if avoided >= 0 else 'more'} defaulters per "
                f"10,000 released{than} (bad rate {rate.federated:.1%} against "
                f"{rate.bank_only:.1%}; pooled ceiling {rate.pooled:.1%})"
            )
        sentence = "; ".join(parts)
        return sentence[0].upper() + sentence[1:] + "."

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "defaulters": self.defaulters,
            "bad_rate_all": self.bad_rate_all,
            "ranking": RANKING,
            "quota_candidates": self.quota_candidates,
            "quota_rule": (
                f"a campaign's quota is released as the same share of the held-out rows "
                f"as of the {self.quota_candidates:,} candidates it is sized for "
                f"(rounded, capped at the held-out rows)"
            ),
            "volumes": [v.to_json() for v in self.volumes],
            "by_band": [b.to_json() for b in self.bands],
            "gains": [g.to_json() for g in self.gains],
            "answer": self.answer(),
        }


def _checked(labels: np.ndarray, scores: PerModel[np.ndarray]) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError("labels must be a non-empty 1-d array")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    for name, s in scores.items():
        if np.shape(s) != y.shape:
            raise ValueError(f"{name} scores and labels differ in length")
        if not np.isfinite(np.asarray(s, dtype=np.float64)).all():
            raise ValueError(f"{name} scores must be finite")
    return y.astype(np.int64)


def _caught(total: int, released: int) -> Callable[[np.ndarray], int]:
    return lambda cumulative: total - int(cumulative[released])


def outcome(
    labels: np.ndarray,
    scores: PerModel[np.ndarray],
    campaigns: Sequence[CampaignPolicy],
    quota_candidates: int = QUOTA_CANDIDATES,
    shares: Sequence[float] = SWEEP_SHARES,
) -> Outcome:
    """The outcome report on one set of held-out rows. A campaign without a quota has
    no volume of its own (it releases whoever passes ``max_pd``), only its bands."""
    y = _checked(labels, scores)
    rows, total = len(y), int(y.sum())
    cumulative = scores.map(lambda s: defaulters_released(y, s))

    def at(volume: int, campaign: CampaignPolicy | None = None) -> Volume:
        return Volume(
            volume,
            rows,
            cumulative.map(lambda c: int(c[volume])),
            campaign.campaign_id if campaign else None,
            campaign.quota if campaign else None,
        )

    quotas = [c for c in campaigns if c.quota]
    gains = [
        GainsPoint(
            declined,
            rows,
            total,
            cumulative.map(_caught(total, rows - declined)),
        )
        for declined in sorted({_round(rows * k / GAINS_STEPS) for k in range(GAINS_STEPS + 1)})
    ]
    return Outcome(
        rows=rows,
        defaulters=total,
        quota_candidates=quota_candidates,
        campaigns=[at(quota_volume(c.quota or 0, rows, quota_candidates), c) for c in quotas],
        sweep=[at(v) for v in sweep_volumes(rows, shares)],
        bands=[band for c in campaigns for band in bands(y, scores, c)],
        gains=gains,
    )


def release(
    labels: np.ndarray,
    scores: PerModel[np.ndarray],
    released: int,
    campaign: CampaignPolicy | None = None,
) -> Volume:
    """One volume on its own: each model releases its ``released`` least risky rows."""
    y = _checked(labels, scores)
    if not 1 <= released <= len(y):
        raise ValueError(f"cannot release {released} of {len(y)} customers")
    return Volume(
        released,
        len(y),
        scores.map(lambda s: int(defaulters_released(y, s)[released])),
        campaign.campaign_id if campaign else None,
        campaign.quota if campaign else None,
    )


def bad_rate_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the chart: share released (V/n, V = 1..n) and the bad rate among released."""
    cumulative = defaulters_released(labels, scores)[1:]
    volumes = np.arange(1, len(cumulative) + 1)
    return volumes / len(cumulative), cumulative / volumes

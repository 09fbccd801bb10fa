"""The outcome report (``services/evaluate/outcome.py``): bad rates among the released
customers at equal volume, on small sets whose answers are worked out by hand."""

from __future__ import annotations

import html
import itertools
import json
from datetime import UTC, datetime

import numpy as np
import pytest
from rich.console import Console

from schemas import Decision, ReasonCode
from schemas.rollout import CampaignPolicy, ScoreBand
from services.demo.outcome import print_outcome
from services.evaluate.outcome import (
    QUOTA_CANDIDATES,
    PerModel,
    Volume,
    bad_rate_curve,
    band_edges,
    bands,
    defaulters_released,
    outcome,
    quota_volume,
    release,
    sweep_volumes,
)
from services.evaluate.report import CEILING, FEDERATED, FLOOR, Evaluation, ModelScore, Training
from services.evaluate.report_html import render
from services.prescreen.policy import score_band
from services.stack import dataset as ds
from services.training.policy_file import load_policy

# Ten customers, four defaulters (rows 1, 4, 6, 9).
LABELS = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 1])
PERFECT = LABELS * 0.5 + np.arange(10) / 100  # every defaulter above every good
INVERTED = 1.0 - PERFECT
FLAT = np.full(10, 0.2)  # one tie: released in row order


def _campaign(quota: int | None, max_pd: float = 0.3, *edges: float) -> CampaignPolicy:
    cuts = edges or (0.08, 0.15, 0.3)
    return CampaignPolicy(
        campaign_id="c",
        max_pd=max_pd,
        quota=quota,
        score_bands=[ScoreBand(band=chr(65 + i), max_pd=m) for i, m in enumerate(cuts)],
    )


def _scores(
    federated: np.ndarray, bank_only: np.ndarray, pooled: np.ndarray
) -> PerModel[np.ndarray]:
    return PerModel(federated, bank_only, pooled)


def test_a_perfect_model_releases_no_defaulter_until_the_goods_run_out() -> None:
    result = outcome(LABELS, _scores(PERFECT, INVERTED, FLAT), [], shares=[0.6, 0.7, 1.0])
    six, seven, everyone = result.sweep
    assert (six.released, seven.released, everyone.released) == (6, 7, 10)
    assert six.bad_rate == PerModel(0.0, 4 / 6, 2 / 6)  # flat: rows 0..5 hold 1 and 4
    assert seven.bad_rate.federated == pytest.approx(1 / 7)
    # everyone released: the same defaulters whatever the model
    assert everyone.bad_rate == PerModel(0.4, 0.4, 0.4) and result.bad_rate_all == 0.4
    assert everyone.avoided_per_10k == 0.0
    # the risk head's number: (4/6 - 0) * 10,000 fewer defaulters per 10,000 released
    assert six.avoided_per_10k == pytest.approx(10_000 * 4 / 6)
    assert six.short_of_pooled_per_10k == pytest.approx(-10_000 * 2 / 6)


def test_equal_scores_are_released_in_row_order() -> None:
    assert defaulters_released(LABELS, FLAT).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4]
    # a tie inside a better ranking: rows 2 and 4 share a score, row 2 goes first
    scores = np.array([0.1, 0.9, 0.3, 0.5, 0.3, 0.2, 0.8, 0.05, 0.6, 0.7])
    assert defaulters_released(LABELS, scores)[:5].tolist() == [0, 0, 0, 0, 0]
    assert defaulters_released(LABELS, scores)[5] == 1  # row 4, the defaulter, is fifth
    # the same scores in another order give the same answer once re-ordered the same way
    shuffled = np.random.default_rng(0).permutation(10)
    assert defaulters_released(LABELS[shuffled], PERFECT[shuffled])[6] == 0


def test_a_quota_is_the_same_share_of_the_held_out_rows_as_of_the_stream_it_was_sized_for() -> None:
    assert QUOTA_CANDIDATES == 9_000
    assert quota_volume(3000, 9000) == 3000  # the reference split: the quota itself
    assert quota_volume(3000, 900) == 300 and quota_volume(1200, 900) == 120
    assert quota_volume(20_000, 900) == 900  # more than the set: everyone, no more
    assert quota_volume(1, 900) == 1  # never rounded away to nothing
    assert quota_volume(1200, 900, candidates=900) == 900
    with pytest.raises(ValueError, match="positive"):
        quota_volume(0, 900)


def test_the_sweep_rounds_half_up_and_never_repeats_a_volume() -> None:
    assert sweep_volumes(900) == [45, 90, 180, 270, 360, 450, 540, 630, 720, 810, 900]
    assert sweep_volumes(10) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # 5 % of 10 rounds to 1
    assert sweep_volumes(3, [0.5, 1.0, 2.0]) == [2, 3]


def test_the_packaged_policys_campaigns_get_their_volumes_and_bands() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(900) < 0.22).astype(int)
    risk = np.clip(0.22 + 0.2 * (y - 0.22) + rng.normal(0, 0.1, 900), 0, 1)
    noisy = np.clip(risk + rng.normal(0, 0.2, 900), 0, 1)
    policy = load_policy()
    result = outcome(y, _scores(risk, noisy, risk), policy.campaigns)
    card, loan = result.campaigns
    assert (card.campaign, card.quota, card.released) == ("card-upgrade", 3000, 300)
    assert (loan.campaign, loan.quota, loan.released) == ("personal-loan", 1200, 120)
    # better ranking, fewer defaulters at the same volume
    assert card.bad_rate.federated < card.bad_rate.bank_only
    assert card.avoided_per_10k > 0 and card.short_of_pooled_per_10k == 0.0
    # every customer lands in exactly one band of each campaign, for every model
    for campaign in ("card-upgrade", "personal-loan"):
        mine = [b for b in result.bands if b.campaign == campaign]
        for name, _ in PerModel(0, 0, 0).items():
            assert sum(getattr(b.customers, name) for b in mine) == 900
            assert sum(getattr(b.defaulters, name) for b in mine) == int(y.sum())
    text = json.dumps(result.to_json())  # plain JSON: no numpy numbers
    volumes = json.loads(text)["volumes"]
    assert [v["campaign"] for v in volumes[:2]] == ["card-upgrade", "personal-loan"]
    for volume in volumes:
        assert {"released", "bad_rate_federated", "bad_rate_bank_only", "bad_rate_pooled"} <= set(
            volume
        )
    sentence = result.answer()
    assert f"{card.avoided_per_10k:,.0f} fewer defaulters per 10,000 released" in sentence
    assert sentence.startswith(
        "At card-upgrade's volume (300 of 900 customers released), the federated model contacts"
    )
    assert "; at personal-loan's volume (120 of 900 customers released), " in sentence
    assert f"{card.bad_rate.federated:.1%} against {card.bad_rate.bank_only:.1%}" in sentence


def test_bands_match_prescreens_band_assignment() -> None:
    campaign = _campaign(3000)
    scores = np.array([0.0, 0.08, 0.081, 0.15, 0.3, 0.31, 0.9])
    labels = np.array([0, 0, 1, 0, 1, 1, 1])
    rows = bands(labels, _scores(scores, scores, scores), campaign)
    assert [(b.band, b.customers.federated, b.defaulters.federated) for b in rows] == [
        ("A", 2, 0),
        ("B", 2, 1),
        ("C", 1, 1),
        (None, 2, 2),  # above max_pd: suppressed
    ]
    assert rows[1].bad_rate.federated == 0.5 and rows[0].bad_rate.federated == 0.0
    # the band table and prescreen agree on every pd the campaign releases
    pds = np.random.default_rng(1).random(2000)
    for odd in (_campaign(5, 0.2, 0.1), _campaign(5, 0.3, 0.1, 0.5), _campaign(5, 0.5, 0.1, 0.2)):
        edges = band_edges(odd)
        for pd in pds[pds <= odd.max_pd]:
            [name] = [n for n, low, high in edges if low < pd <= high or (pd == 0 and low == 0)]
            assert name == score_band(odd, float(pd))
    assert band_edges(_campaign(5, 0.2, 0.1)) == [("A", 0.0, 0.2), (None, 0.2, 1.0)]


def test_an_empty_band_has_no_bad_rate() -> None:
    scores = np.full(4, 0.01)
    [a, b, _, above] = bands(np.array([0, 1, 0, 0]), _scores(scores, scores, scores), _campaign(9))
    assert a.bad_rate.federated == 0.25 and b.bad_rate.federated is None
    assert (
        above.to_json()["bad_rate_pooled"] is None
        and above.to_json()["released_by_policy"] is False
    )


def test_gains_rise_from_nothing_to_every_defaulter() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random(500) < 0.2).astype(int)
    scores = _scores(y + rng.normal(0, 0.5, 500), rng.random(500), y + rng.normal(0, 0.1, 500))
    result = outcome(y, scores, [])
    assert result.gains[0].declined == 0 and result.gains[-1].declined == 500
    for name in ("federated", "bank_only", "pooled"):
        shares = [getattr(g.caught_share, name) for g in result.gains]
        assert shares[0] == 0.0 and shares[-1] == 1.0
        assert all(a <= b for a, b in itertools.pairwise(shares))
    assert len(result.gains) == 21 and result.gains[1].share_declined == 0.05
    # declining the riskiest 5 % catches the defaulters the released 95 % do not hold
    volume = outcome(y, scores, [], shares=[0.95]).sweep[0]
    assert result.gains[1].caught.federated == int(y.sum()) - volume.defaulters.federated
    share, rate = bad_rate_curve(y, scores.federated)
    assert share[-1] == 1.0 and rate[-1] == pytest.approx(y.mean())
    assert rate[474] == pytest.approx(volume.bad_rate.federated)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        outcome(np.array([0, 2]), _scores(FLAT[:2], FLAT[:2], FLAT[:2]), [])
    with pytest.raises(ValueError, match="differ in length"):
        outcome(LABELS, _scores(FLAT, FLAT[:3], FLAT), [])
    with pytest.raises(ValueError, match="finite"):
        outcome(LABELS[:1], _scores(np.array([np.nan]), FLAT[:1], FLAT[:1]), [])
    # a campaign without a quota gets bands but no volume of its own
    result = outcome(LABELS, _scores(FLAT, FLAT, FLAT), [_campaign(None)])
    assert result.campaigns == [] and len(result.bands) == 4


def _evaluation(y: np.ndarray, scores: dict[str, np.ndarray]) -> Evaluation:
    training = Training("m", 1.0, 1, 1, 1, 0.7, None, {"p": 1}, {"p": 1})
    return Evaluation(
        data="d.csv",
        id_column="ID",
        label_column="y",
        seed=0,
        test_size=0.3,
        rows=3 * len(y),
        train_rows=2 * len(y),
        test_rows=len(y),
        train_positive_rate=0.2,
        test_positive_rate=float(y.mean()),
        bank_columns=["A"],
        partner_columns={"p": ["B"]},
        models={k: ModelScore(0.7, 0.3, ["A"]) for k in scores},
        training=training,
        reference_lightgbm={},
        outcome=outcome(
            y, PerModel(scores[FEDERATED], scores[FLOOR], scores[CEILING]), load_policy().campaigns
        ),
    )


def test_report_json_and_html_carry_the_outcome() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(900) < 0.22).astype(int)
    scores = {
        FEDERATED: np.clip(0.15 + 0.2 * y + rng.normal(0, 0.1, 900), 0, 1),
        FLOOR: np.clip(0.2 + 0.05 * y + rng.normal(0, 0.1, 900), 0, 1),
        CEILING: np.clip(0.15 + 0.22 * y + rng.normal(0, 0.1, 900), 0, 1),
    }
    evaluation = _evaluation(y, scores)
    block = json.loads(json.dumps(evaluation.to_json()))["outcome"]
    assert block["rows"] == 900 and block["quota_candidates"] == QUOTA_CANDIDATES
    assert [v["released"] for v in block["volumes"][:2]] == [300, 120]
    assert {b["campaign"] for b in block["by_band"]} == {"card-upgrade", "personal-loan"}
    assert block["gains"][-1]["defaulters_caught_share_federated"] == 1.0
    page = render(evaluation, y, scores)
    assert "<h2>Outcome: defaulters among the released customers</h2>" in page
    assert html.escape(block["answer"]) in page
    assert 'alt="bad rate at equal release volume, and gains chart"' in page
    assert "card-upgrade (quota 3,000)" in page and "suppressed (above max_pd)" in page
    assert page.count('src="data:image/png;base64,') == 3


def test_one_volume_on_its_own_matches_the_report() -> None:
    scores = _scores(PERFECT, INVERTED, FLAT)
    one = release(LABELS, scores, 6, _campaign(3000))
    assert one.bad_rate == PerModel(0.0, 4 / 6, 2 / 6) and one.campaign == "c"
    assert one == Volume(6, 10, PerModel(0, 4, 2), "c", 3000)
    assert outcome(LABELS, scores, [], shares=[0.6]).sweep[0] == Volume(6, 10, PerModel(0, 4, 2))
    with pytest.raises(ValueError, match="cannot release 11 of 10"):
        release(LABELS, scores, 11)


def test_the_demo_prints_the_outcome_at_each_campaigns_volume() -> None:
    """900 held-out customers: the demo's seeded consent and campaign draws pick each
    campaign's candidates; its volume is the quota's share of 9,000, capped."""
    rng = np.random.default_rng(2)
    y = (rng.random(900) < 0.22).astype(float)
    test = ds.Table([ds.ID, ds.LABEL], np.column_stack([np.arange(1, 901), y]))
    risk = np.clip(0.15 + 0.3 * y + rng.normal(0, 0.1, 900), 0, 1)
    protocol = {cid: float(r) for cid, r in zip(test.ids, risk, strict=True)}
    now = datetime.now(UTC)
    final = {
        f"e{i}": Decision(
            decision_id=f"d{i}",
            event_id=f"e{i}",
            customer_id=test.ids[i],
            campaign_id="card-upgrade",
            outcome="released" if i < 10 else "suppressed",
            reasons=[ReasonCode.ELIGIBLE if i < 10 else ReasonCode.RISK_TOO_HIGH],
            occurred_at=now,
            decided_at=now,
            decided_by="prescreen",
        )
        for i in range(20)
    }
    console = Console(record=True, width=200)
    card, loan = print_outcome(console, test, final, protocol, rng.random(900), risk)
    consent, proposed = ds.consent(test), np.array(ds.campaigns(test))
    assert card.candidates == int((consent & (proposed == "card-upgrade")).sum())
    assert (card.volume.released, loan.volume.released) == (300, 120)
    assert card.volume.short_of_pooled_per_10k == 0.0  # pooled got the same scores here
    assert card.volume.bad_rate.federated < card.volume.bad_rate.bank_only
    assert (card.served_released, card.served_defaulters) == (10, int(y[:10].sum()))
    assert loan.served_released == 0 and loan.served_bad_rate is None
    text = console.export_text()
    assert "Outcome: default rate among released customers" in text
    assert f"{card.volume.bad_rate.federated:.2%}" in text
    assert f"contacts {card.volume.avoided_per_10k:,.0f} fewer defaulters" in text

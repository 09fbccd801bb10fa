"""Secure aggregation in the running pipeline: three partners as processes, each masking
its fragments pairwise with the others, then one killed for good.

Before the kill every candidate is scored on the exact aggregate (the masks cancel); one
fragment taken off the topic decrypts to nothing that unpacks. After it, no batch is
asked of anyone again (the survivors' flags over a subset would tell, set against a
complete batch, which partner flagged a customer): every candidate still gets exactly
one decision, the bank-only fallback score, with no partner's flag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from pydantic import ValidationError

from schemas import Decision, EncryptedFragment, FragmentRequest, ReasonCode
from services.kernel.crypto.codec import b64_to_int
from services.kernel.crypto.packing import PackingOverflowError, unpack
from services.kernel.crypto.paillier import load_private_keys
from services.kernel.kafka.topics import FRAGMENTS, requests_topic
from services.kernel.model.scoring import BankScorer, sigmoid
from services.partner.store import FeatureStore
from services.stack import dataset as ds
from services.stack.fixtures import PartnerData
from services.stack.pipeline import PipelineOptions
from services.training.policy_file import load_policy
from tests.integration.harness import (
    POLICY_FILE,
    Running,
    read_all,
    send_candidates,
    start_pipeline,
    stop_pipeline,
    wait_for_decisions,
)

pytestmark = pytest.mark.integration

ROWS = 240
KILLED = "payments"
SURVIVORS = ["bills", "repayments"]


def three_partners(table: ds.Table) -> list[PartnerData]:
    """The reference repayments partner split in two, plus payments. Bills flags every
    ninth customer, so some candidates are flagged by two partners."""
    bills = np.zeros(len(table.rows), dtype=bool)
    bills[::9] = True
    return [
        PartnerData(
            "repayments",
            ds.PAY_STATUS,
            table.select(ds.PAY_STATUS),
            ds.blacklist(table, "repayments"),
        ),
        PartnerData("bills", ds.BILLS, table.select(ds.BILLS), bills),
        PartnerData(
            "payments", ds.PAYMENTS, table.select(ds.PAYMENTS), ds.blacklist(table, "payments")
        ),
    ]


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    policy = load_policy(POLICY_FILE)
    policy = policy.model_copy(
        update={
            "deadline_outcome": "fallback",
            "campaigns": [c.model_copy(update={"quota": None}) for c in policy.campaigns],
            "frequency_cap": policy.frequency_cap.model_copy(update={"max_screenings": 1000}),
        }
    )
    options = PipelineOptions(deadline_ms=2000.0)
    running = await start_pipeline(
        tmp_path_factory.mktemp("secure-aggregation"), ROWS, policy, options, three_partners
    )
    try:
        yield running
    finally:
        stop_pipeline(running)


def partner_scores(running: Running, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Plaintext recomputation from the harness's view of every party (never a service's):
    the partners' summed scores and whether any of them flags each row."""
    total = np.zeros(ROWS)
    flagged = np.zeros(ROWS, dtype=bool)
    for data in running.partners:
        if data.name not in names:
            continue
        store = FeatureStore(running.pipeline.deployment.partner_dbs[data.name])
        binning = store.binning("m-test")
        store.close()
        assert binning is not None
        weights = running.weights(data.name)
        bins = binning.transform(data.values).tolist()
        total += [sum(weights[j][b] for j, b in enumerate(row)) for row in bins]
        flagged |= data.blacklisted
    return total, flagged


async def fragments(running: Running) -> list[EncryptedFragment]:
    """Every fragment on fed.fragments.v1 (prescreen's deadline ticks travel there too)."""
    found = []
    for value in await read_all(running.settings, FRAGMENTS):
        try:
            found.append(EncryptedFragment.model_validate_json(value))
        except ValidationError:
            continue
    return found


async def decide(running: Running, rows: range, tag: str) -> dict[int, Decision]:
    events = [running.candidate(i, event_id=f"{tag}-{i}") for i in rows]
    await send_candidates(running.settings, events)
    found = await wait_for_decisions(running.settings, [e.event_id for e in events], 90)
    assert set(found) == {e.event_id for e in events}
    assert all(len(d) == 1 for d in found.values()), "a candidate got two decisions"
    return {i: found[f"{tag}-{i}"][0] for i in rows}


async def test_with_every_partner_up_the_masks_cancel_exactly(running: Running) -> None:
    rows = range(0, 120)
    decisions = await decide(running, rows, "sa-full")
    scorer = BankScorer(running.bank_bundle)
    score, flagged = partner_scores(running, ["repayments", "bills", "payments"])
    raw = np.asarray(scorer.booster.predict(running.bank.values, raw_score=True))
    expected_pd = sigmoid(raw + score)
    for i, decision in decisions.items():
        assert decision.decided_by == "prescreen" and not decision.degraded
        assert decision.pd == pytest.approx(expected_pd[i], abs=2e-3)
        assert (decision.reasons[0] == ReasonCode.BLACKLISTED) == flagged[i]
    assert sum(flagged[i] for i in rows) >= 10, "fixture has too few blacklist hits"

    # One fragment off the topic, decrypted alone with the bank's key: noise.
    key = next(iter(load_private_keys(running.pipeline.deployment.paillier_dir).values()))
    mine = [f for f in await fragments(running) if f.attempt == 1 and len(f.participants) == 3]
    assert mine
    for fragment in mine[:5]:
        plaintext = int(key.decrypt(b64_to_int(fragment.ciphertext or "")))
        with pytest.raises(PackingOverflowError):
            unpack(
                running.bank_bundle.packing, plaintext, fragment.slot_count, {fragment.partner: 6}
            )


async def test_a_killed_partner_leaves_the_others_unasked_and_their_flags_unread(
    running: Running,
) -> None:
    running.pipeline.fleet[f"partner-{KILLED}"].kill()
    rows = range(120, ROWS)
    decisions = await decide(running, rows, "sa-drop")
    scorer = BankScorer(running.bank_bundle)
    fallback_pd = scorer.score_fallback(
        scorer.matrix([running.candidate(i, event_id="x").features for i in rows])
    )
    _, flagged = partner_scores(running, SURVIVORS)
    assert sum(flagged[i] for i in rows) >= 10, "fixture has too few blacklist hits"
    for k, decision in enumerate(decisions.values()):
        assert decision.degraded and decision.missing_partners == [KILLED]
        assert decision.pd == pytest.approx(float(fallback_pd[k]), abs=1e-9)
        assert ReasonCode.BLACKLISTED not in decision.reasons  # no survivor's flag is read
        assert ReasonCode.SCORED_DEGRADED in decision.reasons
    # Nothing was asked again, and nothing answered a second attempt.
    for partner in SURVIVORS:
        requests = [
            FragmentRequest.model_validate_json(v)
            for v in await read_all(running.settings, requests_topic(partner))
        ]
        assert requests and all(r.attempt == 1 and not r.flags_only for r in requests)
    assert all(f.attempt == 1 for f in await fragments(running))

"""The curious bank against serving: every customer screened under two model versions,
and the bank reads back its pending records and the fragments and decrypts their
products with its own keys (services/audit/curious_bank.py, ``serving_view``). In a
one-partner federation each decrypted score is that partner's own.

With the weights of both versions, as the earlier protocol's bank bundles carried
them in plaintext, one equation per version recovers nearly every customer's bins;
with what this protocol's bundles carry (bin counts, no weight) there is no equation
to solve.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest

from services.audit.curious_bank import (
    PartnerTruth,
    ServingView,
    recover,
    serving_knowledge,
    serving_view,
)
from services.kernel.crypto.packing import DEFAULT_FRAC_BITS
from services.kernel.crypto.paillier import generate_keypair, load_private_keys, save_private_key
from services.partner.store import FeatureStore
from services.stack import dataset as ds
from services.stack.fixtures import PartnerData, install_model, stored_weights
from services.stack.pipeline import PipelineOptions
from tests.integration.harness import (
    Running,
    send_candidates,
    start_pipeline,
    stop_pipeline,
    uncapped_policy,
    wait_for_decisions,
)

pytestmark = pytest.mark.integration

PARTNER = "bureau"
COLUMNS = ["PAY_0", "PAY_2", "PAY_AMT1", "BILL_AMT1"]
ROWS = 200


def one_small_partner(table: ds.Table) -> list[PartnerData]:
    return [PartnerData(PARTNER, COLUMNS, table.select(COLUMNS), ds.blacklist(table, PARTNER))]


@dataclass
class Screened:
    running: Running
    view: ServingView
    customers: list[str]
    truth: PartnerTruth
    weights: dict[str, list[list[float]]]
    """Per version, the partner's weights decrypted by the harness (each under its key)."""


async def screen(running: Running, version_tag: str) -> None:
    events = [running.candidate(i, event_id=f"{version_tag}-{i}") for i in range(ROWS)]
    await send_candidates(running.settings, events)
    decided = await wait_for_decisions(running.settings, [e.event_id for e in events], timeout_s=90)
    assert all(d[0].pd is not None and not d[0].degraded for d in decided.values())


@pytest.fixture(scope="module")
async def screened(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Screened]:
    options = PipelineOptions(extra_env={f"partner-{PARTNER}": {"PARTNER_MIN_PARTICIPANTS": "1"}})
    running = await start_pipeline(
        tmp_path_factory.mktemp("privacy-serving"),
        ROWS,
        uncapped_policy(),
        options,
        one_small_partner,
    )
    try:
        await screen(running, "v1")
        # Version 2: new weights under a key of its own, as a new training would leave.
        key = generate_keypair(2048)
        deployment = running.pipeline.deployment
        save_private_key(key, deployment.paillier_dir / f"{key.key_id}.json")
        store = FeatureStore(deployment.partner_dbs[PARTNER])
        binning = store.binning("m-test")
        assert binning is not None
        rng = np.random.default_rng(3)
        weights = [[w + rng.normal(0, 0.2) for w in row] for row in running.weights(PARTNER)]
        install_model(store, "m-test-2", binning, weights, key)
        store.close()
        fields = {"model_version": "m-test-2", "key_id": key.key_id}
        fields["public_key_n"] = key.public.to_b64()
        bank = running.bank_bundle.model_copy(update=fields)
        partner = running.partner_bundles[PARTNER].model_copy(
            update={**fields, "binning_id": "m-test-2"}
        )
        await running.pipeline.publish(bank, {PARTNER: partner})
        for attempt in range(40):  # until intake serves m-test-2
            probe = running.candidate(ROWS - 1, event_id=f"probe-{attempt}")
            await send_candidates(running.settings, [probe])
            decided = await wait_for_decisions(running.settings, [probe.event_id])
            if decided[probe.event_id][0].model_version == "m-test-2":
                break
        await screen(running, "v2")
        keys = load_private_keys(deployment.paillier_dir)
        view = await serving_view(running.settings, keys, [running.bank_bundle, bank])
        customers = sorted(set(view.scores["m-test"]) & set(view.scores["m-test-2"]))
        rows = [running.bank.ids.index(c) for c in customers]
        values = running.partners[0].values[rows]
        truth = PartnerTruth(PARTNER, binning.transform(values), binning.bins_per_feature)
        db = deployment.partner_dbs[PARTNER]
        both = {"m-test": running.weights(PARTNER), "m-test-2": stored_weights(db, "m-test-2", key)}
        yield Screened(running, view, customers, truth, both)
    finally:
        stop_pipeline(running)


def test_the_bank_decrypted_both_versions_for_every_customer(screened: Screened) -> None:
    counts = {v: len(s) for v, s in screened.view.scores.items()}
    assert len(screened.customers) >= ROWS - 1, counts
    assert set(screened.view.scores) == {"m-test", "m-test-2"}


def test_with_both_versions_weights_the_attack_recovers_the_bins(screened: Screened) -> None:
    unit = 1 << DEFAULT_FRAC_BITS
    weights = {
        version: {PARTNER: [np.round(np.array(row) * unit) for row in screened.weights[version]]}
        for version in ("m-test", "m-test-2")
    }
    knowledge = serving_knowledge(
        screened.view, screened.customers, weights, "legacy bundles: weights in plaintext"
    )
    (result,) = recover(knowledge, [screened.truth])
    assert result.equations == 2
    assert result.recovered_fraction >= 0.9, result
    assert result.recovered_fraction > result.baseline_fraction + 0.5


def test_with_what_this_banks_bundles_carry_there_is_nothing_to_solve(
    screened: Screened,
) -> None:
    bundle = screened.running.bank_bundle
    # The bank bundle knows each partner's bin counts and no weight.
    assert set(bundle.partners[0].model_dump()) == {"partner", "bins_per_feature"}
    knowledge = serving_knowledge(screened.view, screened.customers, {}, "this protocol")
    (result,) = recover(knowledge, [screened.truth])
    assert result.equations == 0
    assert result.recovered_fraction <= result.baseline_fraction + 0.01

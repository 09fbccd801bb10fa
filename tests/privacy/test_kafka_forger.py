"""A Kafka principal with write access to every topic tries to speak for the bank to a
running partner (services/audit/forger.py): a fragment request for customers of its
choosing, the bank's own request written again (as it was, and with other tokens), a
bundle under a Paillier key of its own, a training session under its own key.

With the bank's signing key (the weakened configuration: the key leaked) the partner
answers the forged request and starts the forged session, which shows the forgeries
are well formed; even then it refuses the replays (its request ledger) and the bundle
(its weights are bound to the key of the session that trained them). With a key of
its own, the forger gets nothing: every forgery is dead-lettered, none acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from schemas import DlqEnvelope, FragmentRequest, PsiAnswer, PsiOffer, TrainError, TrainReady
from schemas.alignment import TO_BANK as TO_BANK_PSI
from services.alignment.partner import OfferPolicy, answer_one
from services.alignment.transport import AlignmentError
from services.audit.forger import attempt, forgeries
from services.kernel.crypto import psi
from services.kernel.crypto.signing import (
    BankKey,
    PartnerKeyRegistry,
    load_signing_key,
    new_signing_key,
    signed,
)
from services.kernel.kafka.topics import (
    ALIGN_TO_BANK,
    TRAINING_TO_BANK,
    align_topic,
    dlq_topic,
    requests_topic,
)
from services.training.coordinator import Coordinator
from tests.integration.harness import (
    Running,
    produce,
    read_all,
)

pytestmark = pytest.mark.integration

PARTNER = "payments"


@pytest.fixture
def running(serving: Running) -> Running:
    return serving


async def _genuine(running: Running) -> FragmentRequest:
    values = await read_all(running.settings, requests_topic(PARTNER))
    return FragmentRequest.model_validate_json(values[0])


async def _forge(running: Running, signer_is_the_bank: bool) -> dict[str, tuple[bool, bool]]:
    genuine = await _genuine(running)
    signer = (
        load_signing_key(running.pipeline.deployment.bank_signing_key)
        if signer_is_the_bank
        else new_signing_key()
    )
    attempts = forgeries(
        PARTNER,
        genuine.tokens,
        signer,
        running.bank_bundle.packing,
        running.partner_bundles[PARTNER].binning_id,
        genuine.participants,
        replay=genuine,
    )
    outcomes = await attempt(running.settings, PARTNER, attempts)
    return {o.name: (o.accepted, o.dead_lettered) for o in outcomes}


async def test_with_the_banks_leaked_key_the_forgeries_work(running: Running) -> None:
    got = await _forge(running, signer_is_the_bank=True)
    assert got["forged request"] == (True, False)
    assert got["training session under the forger's key"] == (True, False)
    # Defences that hold even against the bank's own key:
    assert got["replayed request, other tokens"] == (False, True)  # the request ledger
    assert got["replayed request, identical"] == (False, True)
    assert got["bundle under the forger's Paillier key"][0] is False  # weights bound to key


async def test_without_it_every_forgery_is_refused_and_dead_lettered(running: Running) -> None:
    got = await _forge(running, signer_is_the_bank=False)
    assert got and all(outcome == (False, True) for outcome in got.values()), got


async def test_a_forged_training_reply_cannot_speak_for_a_partner(running: Running) -> None:
    """A TrainError in a partner's name would abort the bank's session; a TrainReady would
    feed it made-up bin counts. Only the one signed with the partner's key counts."""
    deployment = running.pipeline.deployment
    registry = PartnerKeyRegistry.parse(deployment.registry_spec)
    coordinator = Coordinator(
        running.settings,
        "train-forger-test",
        [PARTNER],
        timeout_s=20,
        signing_key=load_signing_key(deployment.bank_signing_key),
        registry=registry,
    )
    partner_key = load_signing_key(deployment.signing_keys[PARTNER])
    forger = new_signing_key()
    async with coordinator:
        replies = [
            signed(
                TrainError(session_id="train-forger-test", partner=PARTNER, error="abort"),
                forger,
            ),
            signed(
                TrainReady(session_id="train-forger-test", partner=PARTNER, bins_per_feature=[99]),
                forger,
            ),
            signed(
                TrainReady(session_id="train-forger-test", partner=PARTNER, bins_per_feature=[3]),
                partner_key,
            ),
        ]
        await produce(
            running.settings,
            TRAINING_TO_BANK,
            [(b"train-forger-test", r.model_dump_json().encode()) for r in replies],
        )
        ready = await coordinator.collect(TrainReady)
    assert ready[PARTNER].bins_per_feature == [3]
    assert coordinator.forged == 2


@pytest.mark.parametrize("signer_is_the_bank", [True, False])
async def test_a_psi_offer_is_answered_only_if_the_bank_signed_it(
    running: Running, signer_is_the_bank: bool
) -> None:
    """An offer makes the partner apply its long-lived PSI secret to points of the
    offerer's choosing. With the bank's key it is answered; with another it is
    dead-lettered and the partner keeps waiting for a real one."""
    deployment = running.pipeline.deployment
    bank_key = load_signing_key(deployment.bank_signing_key)
    signer = bank_key if signer_is_the_bank else new_signing_key()
    policy = OfferPolicy(
        bank_key=BankKey(deployment.bank_public_key),
        signing_key=load_signing_key(deployment.signing_keys[PARTNER]),
    )
    secret, _ = psi.load_or_create_secret(deployment.root / f"psi-{signer_is_the_bank}.scalar")
    session = f"align-forged-{signer_is_the_bank}"
    offer = PsiOffer(
        session_id=session,
        partner=PARTNER,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        points=psi.encode_points(psi.hash_ids([f"guess-{i}" for i in range(50)])),
    )
    partner = asyncio.create_task(
        answer_one(running.settings, PARTNER, ["p1", "p2"], secret, policy, timeout_s=15)
    )
    await asyncio.sleep(2)
    await produce(
        running.settings,
        align_topic(PARTNER),
        [(session.encode(), signed(offer, signer).model_dump_json().encode())],
    )
    answered = False
    # An answer comes within a second or two; give a refused offer 6 s to show none does.
    deadline = asyncio.get_running_loop().time() + (15 if signer_is_the_bank else 6)
    while asyncio.get_running_loop().time() < deadline and not answered:
        answers = [
            TO_BANK_PSI.validate_json(v) for v in await read_all(running.settings, ALIGN_TO_BANK)
        ]
        answered = any(isinstance(a, PsiAnswer) and a.session_id == session for a in answers)
        await asyncio.sleep(0.5)
    partner.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError, AlignmentError):
        await partner
    assert answered is signer_is_the_bank
    if not signer_is_the_bank:
        letters = [
            DlqEnvelope.model_validate_json(v)
            for v in await read_all(running.settings, dlq_topic(align_topic(PARTNER)))
        ]
        assert any(letter.reason == "bad-signature" for letter in letters)

"""The curious partner (services/audit/curious_partner.py).

- **Who are the bank's other customers?** The bank's ids here are guessable numbers,
  and the partner holds only some of them. With keyed-HMAC tokens (the weakened
  configuration: an explicit opt-in now) it computes the token of every number and
  names every customer behind the tokens it is sent; with PSI tokens from a real
  alignment over the broker it names none it did not already hold.
- **What did another partner flag?** Through an ACL hole, a partner reads the other
  partner's fragments: in the benchmark's crypto-off mode (weakened) every flag is in
  the clear; with Paillier fragments, masked pairwise, it reads none.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from schemas import EncryptedFragment
from services.alignment.bank import AlignJob, align
from services.alignment.partner import OfferPolicy, answer_one
from services.audit.curious_partner import other_partners_flags, reidentify
from services.audit.transcript import read_topic
from services.kernel.crypto import psi
from services.kernel.crypto.codec import b64_to_bytes
from services.kernel.crypto.signing import BankKey, PartnerKeyRegistry, load_signing_key
from services.kernel.crypto.tokens import (
    Tokenizer,
    TokenMap,
    TokenSource,
    new_token_key,
    token_or_decoy,
)
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.topics import FRAGMENTS, all_topics
from services.prescreen.joiner import KIND_HEADER
from services.stack.fixtures import Deployment
from services.stack.pipeline import PipelineOptions
from tests.integration.harness import (
    Running,
)
from tests.privacy.conftest import flagging_pipeline

pytestmark = pytest.mark.integration

PARTNER = "payments"
BANK_IDS = [str(i) for i in range(1, 301)]
PARTNER_IDS = [str(i) for i in range(101, 401)]
NOT_HELD = set(BANK_IDS) - set(PARTNER_IDS)
GUESSES = [str(i) for i in range(1, 100_001)]
"""Every id a partner can try: the bank's customer numbers are small integers."""


def _share_not_held_named(
    source: TokenSource, partner_token_of: TokenSource, among: set[str] = NOT_HELD
) -> float:
    """What intake and training send the partner for each bank customer, and the share of
    the customers ``among`` (by default those it does not hold) it names from them."""
    seen = {customer: token_or_decoy(source, customer) for customer in BANK_IDS}
    named = reidentify(seen.values(), partner_token_of.token, GUESSES)
    return sum(named.get(seen[c]) == c for c in among) / len(among)


def test_with_keyed_hmac_tokens_a_partner_names_every_customer_of_the_bank() -> None:
    tokens = Tokenizer(b64_to_bytes(new_token_key()))  # the key both sides hold
    assert _share_not_held_named(tokens, tokens) == 1.0


def _write(path: Path, ids: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID"])
        writer.writerows([i] for i in ids)
    return path


async def test_with_psi_tokens_a_partner_names_none_it_did_not_hold(tmp_path: Path) -> None:
    deployment = Deployment.at(tmp_path / "keys")
    deployment.new_signing_key(PARTNER)
    async with EmbeddedBroker(partitions=2, topics=all_topics([PARTNER])) as broker:
        settings = broker.settings()
        secret, _ = psi.load_or_create_secret(tmp_path / "partner.scalar")
        policy = OfferPolicy(
            bank_key=BankKey(deployment.bank_public_key),
            signing_key=load_signing_key(deployment.signing_keys[PARTNER]),
        )
        partner = asyncio.create_task(
            answer_one(settings, PARTNER, PARTNER_IDS, secret, policy, timeout_s=60)
        )
        job = AlignJob(
            BANK_IDS,
            [PARTNER],
            tmp_path / "bank-secrets",
            tmp_path / "bank-tokens",
            load_signing_key(deployment.bank_signing_key),
            PartnerKeyRegistry.parse(deployment.registry_spec),
            60.0,
        )
        outcomes, failures = await align(job, settings)
        done = await partner
    assert failures == {} and outcomes[0].shared == 200
    bank_tokens = TokenMap.from_csv(tmp_path / "bank-tokens" / f"{PARTNER}.csv")
    # The partner can compute tokens only for its own customers: its side of the PSI.
    own = TokenMap(done.intersection.tokens)
    assert _share_not_held_named(bank_tokens, own) == 0.0
    # The attack itself works: the customers it holds, it names (it knew them anyway).
    shared = set(BANK_IDS) & set(PARTNER_IDS)
    assert _share_not_held_named(bank_tokens, own, shared) == 1.0


@pytest.fixture(scope="module")
async def crypto_off(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    root = tmp_path_factory.mktemp("crypto-off")
    async with flagging_pipeline(root, "plain", PipelineOptions(plaintext=True)) as running:
        yield running


async def _share_of_flags_read(running: Running) -> tuple[float, int]:
    """The attacker (repayments) reads the fragments topic; the share of the candidates
    payments flagged that it identifies, and how many payments flagged."""
    fragments = [
        EncryptedFragment.model_validate_json(r.value)
        for r in await read_topic(running.settings, FRAGMENTS)
        if not any(key == KIND_HEADER for key, _ in r.headers)
    ]
    read = other_partners_flags(fragments, PARTNER, running.bank_bundle.packing)
    flagged = np.nonzero(running.partners[1].blacklisted[:40])[0]
    assert running.partners[1].name == PARTNER
    # Each screened candidate is one slot of one batch; a flag read is a True slot.
    return (sum(read.values()) / len(flagged) if len(flagged) else 0.0), len(flagged)


async def test_without_encryption_a_partner_reads_the_others_flags(crypto_off: Running) -> None:
    share, flagged = await _share_of_flags_read(crypto_off)
    assert flagged >= 1 and share == 1.0


async def test_with_paillier_fragments_it_reads_none(serving: Running) -> None:
    share, flagged = await _share_of_flags_read(serving)
    assert flagged >= 1 and share == 0.0

"""intake → partners → prescreen → decisions and releases, as real processes on the
embedded broker, with real Paillier keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import (
    CandidateEvent,
    Decision,
    DlqEnvelope,
    EncryptedFragment,
    FragmentRequest,
    ReasonCode,
    Release,
)
from schemas.examples import examples
from services.kernel.crypto.codec import b64_to_int, int_to_b64
from services.kernel.crypto.paillier import generate_keypair, save_private_key
from services.kernel.crypto.signing import load_signing_key, new_signing_key, sign
from services.kernel.kafka.clients import make_producer
from services.kernel.kafka.topics import (
    AGREEMENT_KEYS,
    CANDIDATES,
    DECISIONS,
    FRAGMENTS,
    PENDING,
    RELEASES,
    requests_topic,
)
from services.kernel.model.scoring import BankScorer, sigmoid
from services.kernel.procs import ServiceProcess
from services.partner.store import FeatureStore
from services.stack.fixtures import install_model
from tests.integration.harness import (
    PARTNERS,
    Running,
    dead_letters,
    original_value,
    produce,
    read_all,
    send_candidates,
    start_pipeline,
    stop_pipeline,
    uncapped_policy,
    wait_for_decisions,
)

ROWS = 400

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    running = await start_pipeline(tmp_path_factory.mktemp("pipeline"), ROWS, uncapped_policy())
    try:
        yield running
    finally:
        stop_pipeline(running)


def expected_partner_scores(running: Running) -> tuple[np.ndarray, np.ndarray]:
    """Plaintext recomputation from the harness's view of every party (never a service's)."""
    total = np.zeros(ROWS)
    hits = np.zeros(ROWS, dtype=bool)
    for data in running.partners:
        store = FeatureStore(running.pipeline.deployment.partner_dbs[data.name])
        binning = store.binning("m-test")
        store.close()
        assert binning is not None
        bins = binning.transform(data.values)
        weights = running.weights(data.name)
        total += [sum(weights[j][b] for j, b in enumerate(row)) for row in bins.tolist()]
        hits |= data.blacklisted
    return total, hits


async def test_every_candidate_gets_one_correct_decision(running: Running) -> None:
    consent = [i % 7 != 0 for i in range(ROWS)]
    campaigns = ["card-upgrade" if i % 3 else "personal-loan" for i in range(ROWS)]
    events = [
        running.candidate(i, event_id=f"e2e-{i}", campaign=campaigns[i], consent=consent[i])
        for i in range(ROWS)
    ]
    await send_candidates(running.settings, events)
    decisions = await wait_for_decisions(running.settings, [e.event_id for e in events])

    assert len(decisions) == ROWS
    assert all(len(d) == 1 for d in decisions.values()), "a candidate got two decisions"

    scorer = BankScorer(running.bank_bundle)
    partner_score, blacklisted = expected_partner_scores(running)
    expected_pd = sigmoid(
        np.asarray(scorer.booster.predict(running.bank.values, raw_score=True)) + partner_score
    )
    policy = running.bank_bundle.policy
    released = set()
    for i, event in enumerate(events):
        decision = decisions[event.event_id][0]
        if not consent[i]:
            assert decision.reasons == [ReasonCode.NO_CONSENT]
            assert decision.decided_by == "intake"
            assert decision.pd is None  # never scored, never sent to a partner
            continue
        assert decision.decided_by == "prescreen"
        # decrypted, unpacked and scored == the plaintext model on the same inputs
        assert decision.pd == pytest.approx(expected_pd[i], abs=2e-3)
        campaign = policy.campaign(campaigns[i])
        assert campaign is not None
        if blacklisted[i]:
            assert decision.reasons[0] == ReasonCode.BLACKLISTED
        elif expected_pd[i] > campaign.max_pd + 2e-3:
            assert decision.reasons[0] == ReasonCode.RISK_TOO_HIGH
        elif expected_pd[i] < campaign.max_pd - 2e-3:
            assert decision.outcome == "released"
            assert decision.reasons == [ReasonCode.ELIGIBLE]
            assert decision.score_band is not None
        if decision.outcome == "released":
            released.add(decision.decision_id)

    assert any(blacklisted[i] and consent[i] for i in range(ROWS)), "fixture has no blacklist hit"
    assert released, "nothing was released"
    releases = [Release.model_validate_json(v) for v in await read_all(running.settings, RELEASES)]
    mine = {r.decision_id: r for r in releases if r.candidate_ref.startswith("e2e-")}
    assert set(mine) == released
    # campaign tools learn the reference, campaign, band and expiry: no score, no customer id
    for release in mine.values():
        body = json.loads(release.model_dump_json())
        assert set(body) == {
            "decision_id",
            "campaign_id",
            "candidate_ref",
            "score_band",
            "released_at",
            "expires_at",
        }


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a service's log (its stdout and stderr) as JSON; fails on any other."""
    text = path.read_text(errors="replace")
    complete = text[: text.rfind("\n") + 1]  # a line still being written is not judged
    lines = []
    for number, line in enumerate(complete.splitlines(), 1):
        try:
            body = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line!r}")
        assert isinstance(body, dict) and {"ts", "level", "logger", "message"} <= set(body), line
        lines.append(body)
    return lines


async def test_every_service_logs_one_json_object_per_line(running: Running) -> None:
    """FEDSCREEN_LOG_FORMAT=json (the default): every line, faust's worker included, from
    its first (before the worker configures logging) to the decisions just made."""
    services = running.pipeline.fleet.services
    assert {"intake", "prescreen", *(f"partner-{p}" for p in PARTNERS)} <= set(services)
    for service in services.values():
        lines = log_lines(service.log_path)
        assert lines, f"{service.name} logged nothing"
    prescreen = log_lines(services["prescreen"].log_path)
    assert any(line["logger"].startswith("faust.") for line in prescreen)
    assert any(line["message"] == "prescreen ready" for line in prescreen)


async def test_an_intake_without_its_token_maps_says_why_it_is_not_ready(
    running: Running, tmp_path: Path
) -> None:
    """The issue's by-hand mistake: INTAKE_TOKEN_KEY_DIR (misspelt, so the token maps are
    looked for elsewhere). The misspelling is named at start, /readyz says what is
    missing, and so does one log line."""
    deployment = running.pipeline.deployment
    wrong = tmp_path / "keys" / "tokens"
    service = ServiceProcess(
        name="intake-wrong-keys",
        args=["intake", "run"],
        env={},
        log_path=tmp_path / "intake-wrong-keys.log",
    )
    service.env = {
        **running.broker.env(),
        "INTAKE_TOKEN_KEY_DIR": str(deployment.token_dir),
        "INTAKE_TOKEN_KEYS_DIR": str(wrong),
        "INTAKE_SIGNING_KEY_FILE": str(deployment.bank_signing_key),
        "INTAKE_GROUP_ID": f"intake-wrong-keys-{uuid.uuid4().hex[:8]}",
        "INTAKE_METRICS_HOST": "127.0.0.1",
        "INTAKE_METRICS_PORT": str(service.metrics_port),
    }
    service.start()
    try:
        await service.wait_alive()
        url = f"http://127.0.0.1:{service.metrics_port}/readyz"
        status, body = 0, ""
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                async with session.get(url) as response:
                    status, body = response.status, await response.text()
                if "no PSI token map" in body:
                    break
                await asyncio.sleep(0.2)
        assert status == 503
        assert body.startswith("not ready: no usable model bundle on model.rollouts.bank.v1: ")
        assert f"no PSI token map {wrong}/" in body

        not_ready: list[dict[str, Any]] = []
        for _ in range(300):  # logged once the reason has held for a few seconds
            not_ready = [
                line
                for line in log_lines(service.log_path)
                if line["message"].startswith("intake not ready: ")
            ]
            if not_ready:
                break
            await asyncio.sleep(0.2)
        assert len(not_ready) == 1
        assert not_ready[0]["level"] == "WARNING"
        assert not_ready[0]["message"] == f"intake not ready: {body.removeprefix('not ready: ')}"
        messages = [line["message"] for line in log_lines(service.log_path)]
        assert (
            "unknown setting INTAKE_TOKEN_KEY_DIR (did you mean INTAKE_TOKEN_KEYS_DIR?)" in messages
        )
        assert service.alive
    finally:
        service.stop()


async def test_a_duplicate_event_is_decided_once(running: Running) -> None:
    event = running.candidate(3, event_id="dup-1")
    await send_candidates(running.settings, [event, event])
    later = running.candidate(4, event_id="dup-2")
    await send_candidates(running.settings, [later, event])
    decisions = await wait_for_decisions(running.settings, ["dup-1", "dup-2"])
    assert len(decisions["dup-1"]) == 1
    assert len(decisions["dup-2"]) == 1


async def test_an_independent_client_can_publish_candidates(running: Running) -> None:
    """Bank systems are not Python services: confluent-kafka (librdkafka) produces here."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({"bootstrap.servers": running.broker.bootstrap_servers})
    ids = [f"librdkafka-{i}" for i in range(5)]
    for i, event_id in enumerate(ids):
        event = running.candidate(10 + i, event_id=event_id)
        body = {
            "event_id": event.event_id,
            "customer_id": event.customer_id,
            "campaign_id": "card-upgrade",
            "consent_marketing": True,
            "occurred_at": "2026-11-25T09:00:00+01:00",
            "features": event.features,
        }
        producer.produce(CANDIDATES, key=event.customer_id, value=json.dumps(body))
    assert producer.flush(10) == 0
    decisions = await wait_for_decisions(running.settings, ids)
    assert set(decisions) == set(ids)
    assert all(d[0].decided_by == "prescreen" for d in decisions.values())


GARBAGE = st.one_of(
    st.binary(min_size=0, max_size=200),
    st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10), max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    st.sampled_from(
        [
            b"{",
            b"null",
            b"[]",
            b'{"event_id": "x", "customer_id": 1}',
            b'{"batch_id": "b", "partner": "payments", "tokens": []}',
        ]
    ),
)


@settings(
    max_examples=2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(garbage=st.lists(GARBAGE, min_size=3, max_size=6, unique=True), salt=st.uuids())
async def test_garbage_on_every_input_topic_goes_to_the_dlq(
    running: Running, garbage: list[bytes], salt: object
) -> None:
    tag = str(salt)[:8]
    # Valid candidates before and after the garbage must all be decided.
    before = [running.candidate(20 + i, event_id=f"g-{tag}-a{i}") for i in range(3)]
    after = [running.candidate(30 + i, event_id=f"g-{tag}-b{i}") for i in range(3)]
    await send_candidates(running.settings, before)
    marked = [g + f"#{tag}".encode() if g else f"#{tag}".encode() for g in garbage]
    topics = [CANDIDATES, PENDING, FRAGMENTS, *(requests_topic(p) for p in PARTNERS)]
    for topic in topics:
        await produce(running.settings, topic, [(b"junk", g) for g in marked])
    await send_candidates(running.settings, after)

    decisions = await wait_for_decisions(running.settings, [e.event_id for e in before + after])
    assert len(decisions) == 6 and all(len(d) == 1 for d in decisions.values())
    # Each topic's DLQ read waits for it to stay quiet: the reads wait side by side.
    letters = await asyncio.gather(*(dead_letters(running.settings, t) for t in topics))
    for topic, all_envelopes in zip(topics, letters, strict=True):
        envelopes = [e for e in all_envelopes if e.value_b64]
        dead = {original_value(e) for e in envelopes}
        assert set(marked) <= dead, f"garbage on {topic} was not dead-lettered"
        assert all(e.reason == "invalid-schema" for e in envelopes if original_value(e) in marked)


async def wait_for_dead_letters(
    running: Running, topic: str, values: Collection[bytes], timeout_s: float = 60.0
) -> list[DlqEnvelope]:
    """The dead letters of ``topic`` whose original value is one of ``values``, waiting
    until each value has one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = [
            e for e in await dead_letters(running.settings, topic) if original_value(e) in values
        ]
        if {original_value(e) for e in found} >= set(values) or loop.time() > deadline:
            return found
        await asyncio.sleep(0.5)


async def test_the_schemas_counter_examples_are_dead_lettered_and_never_decided(
    running: Running,
) -> None:
    """What ``candidate.v1.json`` refuses, intake refuses: each counter-example shipped
    with the schema lands on the DLQ as ``invalid-schema`` and is never decided (a consent
    of "yes" included); the valid examples sent with them are decided."""
    shipped = examples(CandidateEvent.SCHEMA_ID)
    invalid = [e for e in shipped if not e.valid]
    valid = [e for e in shipped if e.valid]
    documents = {e.body: json.loads(e.body) for e in shipped}

    def key(body: bytes) -> bytes:
        customer = documents[body].get("customer_id")
        return customer.encode() if isinstance(customer, str) else b"counter-example"

    await produce(running.settings, CANDIDATES, [(key(e.body), e.body) for e in invalid + valid])

    valid_ids = [documents[e.body]["event_id"] for e in valid]
    decided = await wait_for_decisions(running.settings, valid_ids)
    assert {event_id: len(d) for event_id, d in decided.items()} == dict.fromkeys(valid_ids, 1)
    for example in valid:
        if documents[example.body]["consent_marketing"] is False:
            assert decided[documents[example.body]["event_id"]][0].reasons == [
                ReasonCode.NO_CONSENT
            ]
    refused = await wait_for_dead_letters(running, CANDIDATES, [e.body for e in invalid])
    for example in invalid:
        letters = [e for e in refused if original_value(e) == example.body]
        assert letters, f"not dead-lettered: {example.why}"
        assert {e.reason for e in letters} == {"invalid-schema"}, example.why
    yes = next(e for e in invalid if documents[e.body].get("consent_marketing") == "yes")
    assert all("consent_marketing" in e.error for e in refused if original_value(e) == yes.body)

    # Every counter-example is dead-lettered by now, and a dead-lettered record is not
    # processed further: none of them was decided, by intake or by prescreen.
    names = {
        documents[e.body][field]
        for e in invalid
        for field in ("event_id", "customer_id")
        if isinstance(documents[e.body].get(field), str)
    }
    decisions = [
        Decision.model_validate_json(v) for v in await read_all(running.settings, DECISIONS)
    ]
    assert not [d for d in decisions if d.event_id in names or d.customer_id in names]


async def test_forged_fragments_are_rejected_with_a_reason(running: Running) -> None:
    key = running.pipeline.deployment.paillier_dir
    assert any(key.glob("*.json"))
    forged = EncryptedFragment(
        batch_id="b-forged",
        partner="payments",
        model_version="m-test",
        key_id=running.bank_bundle.key_id,
        slot_count=1,
        participants=["payments"],
        ciphertext="AQ",
        signed_at=datetime.now(UTC),
        signature="",
    )
    forged = forged.model_copy(
        update={"signature": sign(new_signing_key(), forged.signing_bytes())}
    )
    await produce(running.settings, FRAGMENTS, [(b"b-forged", forged.model_dump_json().encode())])
    reasons: set[str] = set()
    for _ in range(20):
        reasons = {
            e.reason
            for e in await dead_letters(running.settings, FRAGMENTS)
            if original_value(e) == forged.model_dump_json().encode()
        }
        if reasons:
            break
    assert reasons == {"bad-signature"}


async def rejections(running: Running, topic: str, value: bytes) -> set[str]:
    """The DLQ reasons recorded for this exact value (by its bytes or, when too large to
    copy, by its digest), waiting a little for the consumer to get to it."""
    digest = hashlib.sha256(value).hexdigest()
    for _ in range(40):
        reasons = {
            e.reason
            for e in await dead_letters(running.settings, topic)
            if original_value(e) == value or e.value_sha256 == digest
        }
        if reasons:
            return reasons
        await asyncio.sleep(0.25)
    return set()


async def test_replayed_unknown_version_and_out_of_group_fragments_are_dead_lettered(
    running: Running,
) -> None:
    """A partner (or anyone who can write fed.fragments.v1) re-sends a fragment that was
    already used, or sends validly signed ones the bank must not use."""
    events = [running.candidate(100 + i, event_id=f"replay-{i}") for i in range(3)]
    await send_candidates(running.settings, events)
    decided = await wait_for_decisions(running.settings, [e.event_id for e in events])
    batch_ids = {d[0].batch_id for d in decided.values()}
    used = [
        EncryptedFragment.model_validate_json(v)
        for v in await read_all(running.settings, FRAGMENTS)
        if b'"signature"' in v and json.loads(v).get("batch_id") in batch_ids
    ]
    assert used, "no fragment of the decided batches on the topic"
    replayed = used[0].model_dump_json().encode()
    await produce(running.settings, FRAGMENTS, [(used[0].batch_id.encode(), replayed)])
    assert await rejections(running, FRAGMENTS, replayed) == {"replayed-fragment"}

    signing = load_signing_key(running.pipeline.deployment.signing_keys[used[0].partner])
    n = b64_to_int(running.bank_bundle.public_key_n)

    def resigned(**update: object) -> bytes:
        changed = used[0].model_copy(update={"batch_id": f"b-{uuid.uuid4().hex[:12]}", **update})
        changed = changed.model_copy(update={"signature": sign(signing, changed.signing_bytes())})
        return changed.model_dump_json().encode()

    cases = {
        "unknown-model-version": resigned(model_version="m-never-rolled-out"),
        "invalid-ciphertext": resigned(ciphertext=int_to_b64(n)),  # gcd(n, n) != 1
    }
    await produce(running.settings, FRAGMENTS, [(b"x", value) for value in cases.values()])
    # Each value's DLQ reads wait for the topic to stay quiet: the values are looked for
    # side by side.
    found = await asyncio.gather(*(rejections(running, FRAGMENTS, v) for v in cases.values()))
    for reason, reasons in zip(cases, found, strict=True):
        assert reasons == {reason}, reason


async def test_oversized_messages_are_dead_lettered_with_their_digest(running: Running) -> None:
    """Over KAFKA_MAX_MESSAGE_BYTES (1 MB): never parsed, and too large to copy whole
    into the DLQ, so the envelope keeps the size and SHA-256 and the original offset."""
    big = b'{"batch_id": "oversized", "padding": "' + b"x" * 1_100_000 + b'"}'
    after = running.candidate(111, event_id="oversized-after")
    producer = make_producer(running.settings, max_request_size=4_000_000)
    await producer.start()
    try:
        for topic in (CANDIDATES, FRAGMENTS, requests_topic(PARTNERS[0])):
            await producer.send_and_wait(topic, key=b"big", value=big)
    finally:
        await producer.stop()
    await send_candidates(running.settings, [after])

    async def check(topic: str) -> None:
        assert await rejections(running, topic, big) == {"oversized"}, topic
        (envelope,) = [
            e
            for e in await dead_letters(running.settings, topic)
            if e.value_sha256 == hashlib.sha256(big).hexdigest()
        ]
        assert envelope.value_b64 is None and envelope.value_size == len(big)

    # Each topic's DLQ reads wait for it to stay quiet: the topics are checked side by side.
    await asyncio.gather(*(check(t) for t in (CANDIDATES, FRAGMENTS, requests_topic(PARTNERS[0]))))
    assert "oversized-after" in await wait_for_decisions(running.settings, ["oversized-after"])


async def test_a_partner_that_stalls_yields_the_deadline_outcome_then_recovers(
    running: Running,
) -> None:
    """SIGSTOP: the partner process is alive and in its consumer group but answers
    nothing (a GC pause, a saturated host). Batches in that window get the configured
    deadline outcome; once it resumes, it skips requests whose deadline passed and
    candidates are scored in full again."""
    partner = running.pipeline.fleet["partner-repayments"]
    assert partner.process is not None
    os.kill(partner.process.pid, signal.SIGSTOP)
    try:
        stalled = running.candidate(120, event_id="stall-1")
        await send_candidates(running.settings, [stalled])
        decision = (await wait_for_decisions(running.settings, ["stall-1"], timeout_s=30))[
            "stall-1"
        ][0]
    finally:
        os.kill(partner.process.pid, signal.SIGCONT)
    assert running.bank_bundle.policy.deadline_outcome == "suppress"
    assert decision.outcome == "suppressed"
    assert decision.reasons == [ReasonCode.PARTNER_UNAVAILABLE]
    assert decision.missing_partners == ["repayments"]
    for attempt in range(20):
        probe = running.candidate(121, event_id=f"stall-after-{attempt}")
        await send_candidates(running.settings, [probe])
        after = (await wait_for_decisions(running.settings, [probe.event_id]))[probe.event_id][0]
        if not after.missing_partners:
            break
    assert after.missing_partners == [] and after.pd is not None and not after.degraded


async def test_partner_readable_topics_carry_only_tokens_and_ciphertexts(running: Running) -> None:
    """Record everything a partner can read and look for anything the bank must keep."""
    events = [running.candidate(60 + i, event_id=f"privacy-{i}") for i in range(5)]
    await send_candidates(running.settings, events)
    await wait_for_decisions(running.settings, [e.event_id for e in events])
    topics = [t for p in PARTNERS for t in (requests_topic(p), f"model.rollouts.{p}.v1")]
    topics.append(AGREEMENT_KEYS)  # partners read each other's
    # Each read waits for its topic to stay quiet: the reads wait side by side.
    readable = [
        v
        for vs in await asyncio.gather(*(read_all(running.settings, t) for t in topics))
        for v in vs
    ]
    assert readable
    text = b"\n".join(readable).decode(errors="replace")
    for i, customer in enumerate(running.bank.ids[:ROWS]):
        assert f'"{customer}"' not in text  # customer ids
        assert f'"e2e-{i}"' not in text  # event ids
    for feature in running.bank.features:
        assert f'"{feature}"' not in text  # as a JSON key or value (base64 may contain it)
    for card in running.bank_bundle.partners:
        for row in running.weights(card.partner):
            for weight in row:
                if abs(weight) > 1e-6:
                    assert repr(weight) not in text  # plaintext weights
    for key in ("pd", "score", "label", "reasons", "booster", "outcome"):
        assert f'"{key}"' not in text
    requests = []
    for value in readable:
        try:
            requests.append(FragmentRequest.model_validate_json(value))
        except ValidationError:
            continue  # garbage injected by the DLQ test: the partner dead-letters it
    assert requests
    for request in requests:
        assert set(json.loads(request.model_dump_json())) == {
            "batch_id",
            "partner",
            "model_version",
            "created_at",
            "deadline_at",
            "tokens",
            "attempt",
            "participants",
            "flags_only",
            "token_digests",
            "signature",
        }


async def test_a_new_model_version_is_hot_swapped_without_losing_batches(
    running: Running,
) -> None:
    """Roll out m-test-2, with a key of its own like every trained version, while
    candidates are in flight: every candidate is decided once, the later ones by the new
    version, and no service restarts."""
    before = [running.candidate(70 + i, event_id=f"swap-a{i}") for i in range(20)]
    await send_candidates(running.settings, before)
    key = generate_keypair(2048)
    save_private_key(key, running.pipeline.deployment.paillier_dir / f"{key.key_id}.json")
    now = datetime.now(UTC)
    fields = {"model_version": "m-test-2", "created_at": now, "key_id": key.key_id}
    fields["public_key_n"] = key.public.to_b64()
    bank = running.bank_bundle.model_copy(update=fields)
    partners = {}
    for card in bank.partners:
        # What a training session would have left with the partner: the bins and the
        # weights under the new key.
        db = running.pipeline.deployment.partner_dbs[card.partner]
        store = FeatureStore(db)
        binning = store.binning("m-test")
        assert binning is not None
        install_model(store, "m-test-2", binning, running.weights(card.partner), key)
        store.close()
        partners[card.partner] = running.partner_bundles[card.partner].model_copy(
            update={**fields, "binning_id": "m-test-2"}
        )
    await running.pipeline.publish(bank, partners)
    decided = await wait_for_decisions(running.settings, [e.event_id for e in before])
    assert len(decided) == 20 and all(len(d) == 1 for d in decided.values())
    assert {d[0].model_version for d in decided.values()} <= {"m-test", "m-test-2"}

    version = ""
    for attempt in range(30):  # intake adopts the bundle within a poll or two
        probe = running.candidate(90, event_id=f"swap-b{attempt}")
        await send_candidates(running.settings, [probe])
        decision = (await wait_for_decisions(running.settings, [probe.event_id]))[probe.event_id]
        version = decision[0].model_version or ""
        if version == "m-test-2":
            assert decision[0].decided_by == "prescreen" and decision[0].pd is not None
            break
    assert version == "m-test-2"
    assert all(service.alive for service in running.pipeline.fleet.services.values())


async def test_an_older_version_can_be_rolled_back_to(running: Running) -> None:
    """After the hot swap to m-test-2, publishing m-test again (as `fedscreen rollout`
    does) makes intake switch back: later decisions carry m-test."""
    now = datetime.now(UTC)
    bank = running.bank_bundle.model_copy(update={"created_at": now})
    partners = {
        name: bundle.model_copy(update={"created_at": now})
        for name, bundle in running.partner_bundles.items()
    }
    await running.pipeline.publish(bank, partners)
    version = ""
    for attempt in range(30):
        probe = running.candidate(95, event_id=f"rollback-{attempt}")
        await send_candidates(running.settings, [probe])
        decision = (await wait_for_decisions(running.settings, [probe.event_id]))[probe.event_id]
        version = decision[0].model_version or ""
        if version == "m-test":
            assert decision[0].pd is not None
            break
    assert version == "m-test"


async def test_a_partner_that_misses_the_deadline_yields_partner_unavailable(
    running: Running,
) -> None:
    """Last in the module: it stops a partner for good."""
    running.pipeline.fleet["partner-payments"].kill()
    event = running.candidate(50, event_id="deadline-1")
    await send_candidates(running.settings, [event])
    decisions = await wait_for_decisions(running.settings, ["deadline-1"], timeout_s=30)
    decision: Decision = decisions["deadline-1"][0]
    assert decision.outcome == "suppressed"
    assert decision.reasons == [ReasonCode.PARTNER_UNAVAILABLE]
    assert decision.missing_partners == ["payments"]
    assert (decision.decided_at - decision.occurred_at).total_seconds() >= 2.5

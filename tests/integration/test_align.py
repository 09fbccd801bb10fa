"""ID alignment (ECDH-PSI) over the embedded broker, with the partner as a real process."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from schemas import DlqEnvelope
from schemas.alignment import TO_BANK, TO_PARTNER, PsiAnswer, PsiError, PsiOffer, PsiResult
from services.alignment.bank import AlignJob, align
from services.kernel.config import KafkaSettings
from services.kernel.crypto import psi, ristretto
from services.kernel.crypto.codec import bytes_to_b64
from services.kernel.crypto.signing import PartnerKeyRegistry, load_signing_key, signed
from services.kernel.kafka.broker import EmbeddedBroker
from services.kernel.kafka.chunks import CHUNK_HEADER, Reassembler
from services.kernel.kafka.clients import make_consumer, make_producer
from services.kernel.kafka.topics import ALIGN_TO_BANK, align_topic, dlq_topic
from services.stack.fixtures import Deployment
from tests.integration.harness import read_all

pytestmark = pytest.mark.integration

SMALL_MESSAGES = 50_000
"""Below the offer's size (~92 kB), so offers, answers and results travel chunked."""


def _write_ids(path: Path, ids: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "LIMIT_BAL"])
        writer.writerows([customer_id, 1000 + i] for i, customer_id in enumerate(ids))
    return path


def _read_map(path: Path) -> dict[str, str]:
    with path.open(newline="") as handle:
        return {row["customer_id"]: row["token"] for row in csv.DictReader(handle)}


def _keys(root: Path) -> Deployment:
    """The bank's signing key and each partner's, as each side would hold them."""
    deployment = Deployment.at(root / "keys-home")
    for name in ("repayments", "payments"):
        deployment.new_signing_key(name)
    return deployment


def _job(ids: list[str], partners: list[str], root: Path, timeout_s: float) -> AlignJob:
    keys = _keys(root)
    return AlignJob(
        ids,
        partners,
        root / "bank-secrets",
        root / "out",
        load_signing_key(keys.bank_signing_key),
        PartnerKeyRegistry.parse(keys.registry_spec),
        timeout_s,
    )


def _partner(
    broker: EmbeddedBroker, name: str, ids_csv: Path, root: Path, *extra: str
) -> subprocess.Popen[bytes]:
    keys = _keys(root)
    env = {
        **os.environ,
        **broker.env(),
        "KAFKA_MAX_MESSAGE_BYTES": str(SMALL_MESSAGES),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "partner",
            "align",
            "--name",
            name,
            "--csv",
            str(ids_csv),
            "--id-column",
            "ID",
            "--secret-file",
            str(root / f"{name}-partner.scalar"),
            "--out",
            str(root / f"{name}-partner-tokens.csv"),
            "--timeout",
            "90",
            "--bank-key",
            keys.bank_public_key,
            "--signing-key",
            str(keys.signing_keys[name]),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


async def _finish(process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> str:
    out, _ = await asyncio.to_thread(process.communicate, timeout=timeout_s)
    text = out.decode()
    assert process.returncode == 0, text
    return text


async def _messages(settings: KafkaSettings, topic: str) -> list[tuple[bytes, object]]:
    """Every whole message on a topic (chunks reassembled), with its parsed model."""
    adapter = TO_BANK if topic == ALIGN_TO_BANK else TO_PARTNER
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        reassembler = Reassembler()
        found: list[tuple[bytes, object]] = []
        chunked = 0
        while not all([await consumer.position(tp) >= ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    chunked += any(key == CHUNK_HEADER for key, _ in record.headers or ())
                    whole = reassembler.feed(record.partition, record.value, record.headers)
                    if whole is not None:
                        found.append((whole, adapter.validate_json(whole)))
        assert chunked, f"nothing on {topic} was chunked"
        return found
    finally:
        await consumer.stop()


def _point_lists(message: object) -> list[list[str]]:
    if isinstance(message, PsiOffer):
        return [message.points]
    if isinstance(message, PsiAnswer):
        return [message.reblinded, message.own]
    assert isinstance(message, PsiResult), message
    return [message.doubly_blinded]


async def test_both_sides_get_identical_tokens_for_exactly_the_shared_customers(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    rng = random.Random(11)
    shared = [f"C{rng.randrange(10**9):09d}-{i}" for i in range(1000)]
    bank_only = [f"B{i:07d}" for i in range(1000)]
    partner_only = [f"P{i:07d}" for i in range(500)]
    bank_ids = shared + bank_only
    partner_ids = partner_only + shared
    rng.shuffle(bank_ids)
    rng.shuffle(partner_ids)
    partner_csv = _write_ids(tmp_path / "partner.csv", partner_ids)

    process = _partner(broker, "payments", partner_csv, tmp_path)
    settings = broker.settings().model_copy(update={"max_message_bytes": SMALL_MESSAGES})
    stages: list[str] = []
    started = time.perf_counter()
    try:
        outcomes, failures = await align(
            _job(bank_ids, ["payments"], tmp_path, 90.0),
            settings,
            lambda partner, stage, fraction: stages.append(stage),
        )
        log = await _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
    elapsed = time.perf_counter() - started

    assert failures == {}
    (outcome,) = outcomes
    assert (outcome.shared, outcome.bank_size, outcome.partner_size) == (1000, 2000, 1500)
    bank_map = _read_map(tmp_path / "out" / "payments.csv")
    partner_map = _read_map(tmp_path / "payments-partner-tokens.csv")
    assert set(bank_map) == set(shared)
    assert bank_map == partner_map
    assert len(set(bank_map.values())) == 1000
    assert "1000 shared of 2000 bank customers" in log
    assert stages[-1].startswith("1000 shared customers")
    assert (tmp_path / "bank-secrets" / "payments.scalar").stat().st_mode & 0o777 == 0o600
    print(f"\nalignment 2000 x 1500 ids: {elapsed:.2f}s end to end, bank {outcome.seconds:.2f}s")

    # Nothing on the align topics is, or contains, a raw id: only 32-byte group elements.
    every_id = bank_ids + partner_only
    to_partner = await _messages(settings, align_topic("payments"))
    to_bank = await _messages(settings, ALIGN_TO_BANK)
    kinds = [type(m).__name__ for _, m in to_partner + to_bank]
    assert sorted(kinds) == ["PsiAnswer", "PsiOffer", "PsiResult"]
    for raw, message in to_partner + to_bank:
        text = raw.decode()
        assert not any(customer_id in text for customer_id in every_id)
        for points in _point_lists(message):
            assert all(len(p) == 32 for p in psi.decode_points(points, type(message).__name__))


async def test_the_cli_aligns_again_with_kept_secrets_and_per_partner_tokens(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bank_ids = [f"K{i:05d}" for i in range(300)]
    partner_ids = [f"K{i:05d}" for i in range(100, 400)]
    bank_csv = _write_ids(tmp_path / "bank.csv", bank_ids)
    partner_csv = _write_ids(tmp_path / "partner.csv", partner_ids)
    env = {**os.environ, **broker.env()}

    names = ("repayments", "payments")

    async def once(out: str) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
        """Both partners and the bank as processes; (bank map, partner map) per partner."""
        partners = [_partner(broker, name, partner_csv, tmp_path) for name in names]
        bank = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "services.cli",
                "align",
                "--csv",
                str(bank_csv),
                *[arg for name in names for arg in ("--partner", name)],
                "--secret-dir",
                str(tmp_path / "bank-secrets"),
                "--out",
                str(tmp_path / out),
                "--timeout",
                "90",
                "--signing-key",
                str(_keys(tmp_path).bank_signing_key),
                "--partner-keys",
                _keys(tmp_path).registry_spec,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for process in partners:
            await _finish(process)
        assert bank.returncode == 0, bank.stdout + bank.stderr
        for name in names:
            assert f"{name}: 200 shared of 300 partner customers" in bank.stdout
        return {
            name: (
                _read_map(tmp_path / out / f"{name}.csv"),
                _read_map(tmp_path / f"{name}-partner-tokens.csv"),
            )
            for name in names
        }

    first = await once("run1")
    second = await once("run2")
    assert first == second  # secrets kept on both sides: the same tokens again
    shared = set(bank_ids) & set(partner_ids)
    for bank_map, partner_map in first.values():
        assert set(bank_map) == shared
        assert bank_map == partner_map
    repayments, payments = first["repayments"][0], first["payments"][0]
    assert not set(repayments.values()) & set(payments.values())  # unlinkable across partners


async def test_an_answer_with_invalid_points_fails_the_session_and_is_dead_lettered(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A partner (faked in-process) answers with the identity, which would match anything."""
    settings = broker.settings()
    # A real partner gone wrong (its own key), not a forger: the bank checks the points.
    partner_key = load_signing_key(_keys(tmp_path).signing_keys["repayments"])
    topic = align_topic("repayments")
    consumer = make_consumer(settings, group_id=None)
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)

        async def fake_partner() -> list[object]:
            seen: list[object] = []
            while not any(isinstance(m, PsiError) for m in seen):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        message = TO_PARTNER.validate_json(record.value)
                        seen.append(message)
                        if isinstance(message, PsiOffer):
                            answer = signed(
                                PsiAnswer(
                                    session_id=message.session_id,
                                    partner="repayments",
                                    reblinded=[bytes_to_b64(ristretto.IDENTITY)]
                                    * len(message.points),
                                    own=psi.encode_points(psi.hash_ids(["anyone"])),
                                ),
                                partner_key,
                            )
                            await producer.send_and_wait(
                                ALIGN_TO_BANK,
                                answer.model_dump_json().encode(),
                                key=message.session_id.encode(),
                            )
            return seen

        partner = asyncio.create_task(fake_partner())
        outcomes, failures = await align(
            _job([f"Z{i}" for i in range(20)], ["repayments"], tmp_path, 30.0), settings
        )
        seen = await asyncio.wait_for(partner, 30)
    finally:
        await consumer.stop()
        await producer.stop()

    assert outcomes == []
    assert "reblinded: point 0 is not a valid ristretto255 element" in failures["repayments"]
    error = seen[-1]
    assert isinstance(error, PsiError) and "point 0" in error.error
    assert not (tmp_path / "out" / "repayments.csv").exists()
    dead = await read_all(settings, dlq_topic(ALIGN_TO_BANK), idle_s=0.3)
    letters = [DlqEnvelope.model_validate_json(value) for value in dead]
    assert any(
        letter.reason == "invalid-point" and letter.consumer == "align-bank" for letter in letters
    )

"""Intake's readiness board: a version is ready when every live instance of every party
serves it, and only announcements signed by their party's key count."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import BankBundle, ModelReady
from services.intake.service import IntakeService
from services.intake.settings import IntakeSettings
from services.kernel.config import KafkaSettings
from services.kernel.crypto.signing import (
    PartnerKeyRegistry,
    public_key_b64,
    save_signing_key,
    signed,
)
from services.kernel.model.rollout import (
    PRESCREEN_PARTY,
    READY_TTL_S,
    ReadinessAnnouncer,
    ReadinessBoard,
)

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
PARTIES = [PRESCREEN_PARTY, "payments"]


class Keys:
    def __init__(self) -> None:
        self.bank = Ed25519PrivateKey.generate()
        self.payments = Ed25519PrivateKey.generate()

    def of(self, party: str) -> Ed25519PrivateKey:
        return self.bank if party == PRESCREEN_PARTY else self.payments

    def signers(self) -> PartnerKeyRegistry:
        partners = PartnerKeyRegistry({"payments": public_key_b64(self.payments)})
        return partners.with_key(PRESCREEN_PARTY, public_key_b64(self.bank))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def announcement(
    party: str,
    instance: str,
    versions: list[str],
    *,
    at: datetime = T0,
    withdrawn: bool = False,
    key: Ed25519PrivateKey | None,
) -> bytes:
    message = ModelReady(
        party=party,
        instance=instance,
        model_versions=versions,
        withdrawn=withdrawn,
        announced_at=at,
        expires_at=at + timedelta(seconds=READY_TTL_S),
    )
    if key is not None:
        message = signed(message, key)
    return message.model_dump_json().encode()


def board_with(keys: Keys, clock: Clock) -> ReadinessBoard:
    board = ReadinessBoard(KafkaSettings(), keys.signers(), clock=clock)
    # Both parties have one instance serving m-1 already.
    board.offer(announcement(PRESCREEN_PARTY, "w1", ["m-1"], key=keys.bank))
    board.offer(announcement("payments", "r1", ["m-1"], key=keys.payments))
    return board


def test_a_version_waits_for_every_instance_of_a_party() -> None:
    keys, clock = Keys(), Clock()
    board = board_with(keys, clock)
    board.offer(announcement(PRESCREEN_PARTY, "w1", ["m-1", "m-2"], key=keys.bank))
    board.offer(announcement("payments", "r1", ["m-1", "m-2"], key=keys.payments))
    board.offer(announcement(PRESCREEN_PARTY, "w2", ["m-1"], key=keys.bank))

    assert not board.all_ready(PARTIES, "m-2")
    assert board.waiting_for(PARTIES, "m-2") == ["prescreen/w2"]
    assert board.all_ready(PARTIES, "m-1")

    board.offer(
        announcement(
            PRESCREEN_PARTY, "w2", ["m-1", "m-2"], at=T0 + timedelta(seconds=1), key=keys.bank
        )
    )
    assert board.all_ready(PARTIES, "m-2")


def test_a_withdrawn_instance_no_longer_holds_a_rollout_up() -> None:
    keys, clock = Keys(), Clock()
    board = board_with(keys, clock)
    board.offer(announcement(PRESCREEN_PARTY, "w1", ["m-1", "m-2"], key=keys.bank))
    board.offer(announcement("payments", "r1", ["m-1", "m-2"], key=keys.payments))
    board.offer(announcement("payments", "r2", ["m-1"], key=keys.payments))
    assert not board.all_ready(PARTIES, "m-2")

    later = T0 + timedelta(seconds=2)
    board.offer(announcement("payments", "r2", [], at=later, withdrawn=True, key=keys.payments))
    assert board.all_ready(PARTIES, "m-2")

    # A replay of r2's older announcement does not bring it back.
    board.offer(announcement("payments", "r2", ["m-1"], key=keys.payments))
    assert board.all_ready(PARTIES, "m-2")


def test_a_party_whose_every_instance_withdrew_is_not_ready() -> None:
    keys, clock = Keys(), Clock()
    board = board_with(keys, clock)
    later = T0 + timedelta(seconds=1)
    board.offer(announcement("payments", "r1", [], at=later, withdrawn=True, key=keys.payments))
    assert not board.all_ready(PARTIES, "m-1")
    assert board.waiting_for(PARTIES, "m-1") == ["payments"]


def test_forged_and_unsigned_announcements_are_ignored() -> None:
    keys, clock = Keys(), Clock()
    board = board_with(keys, clock)
    later = T0 + timedelta(seconds=1)
    # A partner announcing in prescreen's name, with its own key; another, unsigned; a
    # tombstone: none of them counts, none withdraws anything.
    assert not board.offer(
        announcement(PRESCREEN_PARTY, "fake", ["m-1"], at=later, key=keys.payments)
    )
    assert not board.offer(announcement("payments", "r9", ["m-1"], at=later, key=None))
    assert not board.offer(
        announcement("payments", "r1", [], at=later, withdrawn=True, key=keys.bank)
    )
    assert not board.offer(None)
    assert not board.offer(b"{not json")
    assert board.all_ready(PARTIES, "m-1")
    assert {i for _, i in board.instances} == {"w1", "r1"}


def test_an_instance_that_died_without_withdrawing_expires() -> None:
    keys, clock = Keys(), Clock()
    board = board_with(keys, clock)
    board.offer(announcement(PRESCREEN_PARTY, "w1", ["m-1", "m-2"], key=keys.bank))
    board.offer(announcement("payments", "r1", ["m-1", "m-2"], key=keys.payments))
    clock.now = T0 + timedelta(seconds=READY_TTL_S / 2)
    # r2 announced m-1 only and was then killed: it refreshes no more.
    board.offer(announcement("payments", "r2", ["m-1"], at=T0, key=keys.payments))
    # w1 and r1 keep refreshing.
    refreshed = T0 + timedelta(seconds=READY_TTL_S - 1)
    board.offer(announcement(PRESCREEN_PARTY, "w1", ["m-1", "m-2"], at=refreshed, key=keys.bank))
    board.offer(announcement("payments", "r1", ["m-1", "m-2"], at=refreshed, key=keys.payments))
    assert not board.all_ready(PARTIES, "m-2")

    clock.now = T0 + timedelta(seconds=READY_TTL_S + 1)
    assert board.all_ready(PARTIES, "m-2")
    assert [m.instance for m in board.live("payments")] == ["r1"]


class Producer:
    """What the announcer sends, by key, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send_and_wait(self, topic: str, *, key: bytes, value: bytes) -> None:
        assert topic == "model.ready.v1"
        self.sent.append((key, value))


async def test_an_instance_announces_refreshes_and_withdraws_for_good() -> None:
    keys, producer = Keys(), Producer()
    announcer = ReadinessAnnouncer(
        producer,
        "payments",
        "r1",
        keys.payments,
        refresh_s=0.01,
    )
    await announcer.announce(["m-1", "m-2"])
    refreshing = asyncio.create_task(announcer.refresh())
    while len(producer.sent) < 3:
        await asyncio.sleep(0.01)
    refreshing.cancel()
    await announcer.withdraw()
    await announcer.announce(["m-1", "m-2", "m-3"])  # a model finished loading on the way out

    assert {key for key, _ in producer.sent} == {b"payments/r1"}
    board = ReadinessBoard(KafkaSettings(), keys.signers())
    board.offer(announcement(PRESCREEN_PARTY, "w1", ["m-2"], key=keys.bank, at=datetime.now(UTC)))
    for _, value in producer.sent[:-1]:
        board.offer(value)
        assert board.all_ready(PARTIES, "m-2")
    last = ModelReady.model_validate_json(producer.sent[-1][1])
    assert last.withdrawn and last.model_versions == []
    board.offer(producer.sent[-1][1])
    assert board.waiting_for(PARTIES, "m-2") == ["payments"]


@dataclass(frozen=True)
class Card:
    partner: str


@dataclass(frozen=True)
class Bundle:
    """What IntakeService.active() reads of a bank bundle: its version, age and partners."""

    model_version: str
    created_at: datetime
    partners: tuple[Card, ...] = (Card("payments"),)


def bank_bundle(version: str, created_at: datetime) -> BankBundle:
    return cast(BankBundle, Bundle(version, created_at))


def test_intake_keeps_its_version_until_a_newer_one_is_ready_everywhere(tmp_path: Path) -> None:
    keys, clock = Keys(), Clock()
    save_signing_key(keys.bank, tmp_path / "bank.pem")
    intake = IntakeService(IntakeSettings(signing_key_file=tmp_path / "bank.pem"), KafkaSettings())
    intake.board = board_with(keys, clock)
    intake.watcher.bundles = {
        "m-1": bank_bundle("m-1", T0),
        "m-2": bank_bundle("m-2", T0 + timedelta(minutes=1)),
    }
    active = intake.active()
    assert active is not None and active.model_version == "m-1"

    # A replica starts and has loaded only m-2 so far: m-1 is no longer served by every
    # live instance, but intake must neither stop nor step back.
    at = T0 + timedelta(seconds=1)
    intake.board.offer(announcement("payments", "r2", ["m-2"], at=at, key=keys.payments))
    active = intake.active()
    assert active is not None and active.model_version == "m-1"

    intake.board.offer(announcement("payments", "r1", ["m-1", "m-2"], at=at, key=keys.payments))
    intake.board.offer(announcement(PRESCREEN_PARTY, "w1", ["m-1", "m-2"], at=at, key=keys.bank))
    active = intake.active()
    assert active is not None and active.model_version == "m-2"

    # Every payments replica gone: m-2 stays, intake's batches get the deadline outcome.
    clock.now = T0 + timedelta(seconds=READY_TTL_S + 5)
    active = intake.active()
    assert active is not None and active.model_version == "m-2"

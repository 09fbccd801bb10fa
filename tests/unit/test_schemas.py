"""The wire contract: validation, drift of the exported JSON Schema, and round trips."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import MESSAGE_TYPES, CandidateEvent, Decision, EncryptedFragment, ReasonCode
from schemas.export import JSON_DIR, drift, render_all, write_all


def test_committed_json_schema_matches_the_models() -> None:
    assert drift() == [], "run `fedscreen schemas export` and commit schemas/json"


def test_drift_is_detected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_all(tmp_path)
    assert drift(tmp_path) == []
    victim = tmp_path / "candidate.v1.json"
    schema = json.loads(victim.read_text())
    schema["properties"].pop("consent_marketing")
    victim.write_text(json.dumps(schema))
    (tmp_path / "stale.v0.json").write_text("{}")
    (tmp_path / "decision.v1.json").unlink()
    problems = drift(tmp_path)
    assert any(p.startswith("candidate.v1.json: differs") for p in problems)
    assert any(p.startswith("stale.v0.json") for p in problems)
    assert any(p.startswith("decision.v1.json: missing") for p in problems)


def test_every_message_type_has_a_unique_versioned_schema_id() -> None:
    ids = [model.SCHEMA_ID for model in MESSAGE_TYPES]
    assert len(ids) == len(set(ids))
    # A breaking change gets the next version: model-ready.v2 replaced v1 (per instance,
    # signed, withdrawn, expiring).
    assert all(re.fullmatch(r"[a-z-]+\.v[1-9][0-9]*", i) for i in ids)
    assert set(render_all()) == {p.name for p in JSON_DIR.glob("*.json")}


def _candidate(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "ev-1",
        "customer_id": "c-1",
        "campaign_id": "card-upgrade",
        "consent_marketing": True,
        "occurred_at": "2026-11-25T10:00:00Z",
        "features": {"LIMIT_BAL": 50000.0, "AGE": None},
    }
    base.update(overrides)
    return base


def test_candidate_validates_and_round_trips() -> None:
    event = CandidateEvent.model_validate_json(json.dumps(_candidate()))
    assert event.features["AGE"] is None
    assert CandidateEvent.model_validate_json(event.model_dump_json()) == event


@pytest.mark.parametrize(
    "overrides",
    [
        {"event_id": ""},
        {"event_id": "has space"},
        {"occurred_at": "2026-11-25T10:00:00"},  # naive timestamps are ambiguous
        {"consent_marketing": "maybe"},
        {"consent_marketing": "yes"},  # strict: no string is coerced to a boolean
        {"unexpected": 1},
        {"features": {"x": "not a number"}},
    ],
)
def test_candidate_rejects_bad_input(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CandidateEvent.model_validate_json(json.dumps(_candidate(**overrides)))


def test_fragment_payload_must_match_its_mode() -> None:
    common = {
        "batch_id": "b",
        "partner": "telco",
        "model_version": "m",
        "key_id": "k",
        "slot_count": 2,
        "participants": ["telco"],
        "signed_at": datetime.now(UTC),
        "signature": "",
    }
    with pytest.raises(ValidationError, match="ciphertext"):
        EncryptedFragment.model_validate(common)
    with pytest.raises(ValidationError, match="slot_count plain slots"):
        EncryptedFragment.model_validate({**common, "mode": "plaintext", "plain_slots": [1]})
    ok = EncryptedFragment.model_validate({**common, "mode": "plaintext", "plain_slots": [1, 2]})
    assert b"plain_slots=[1, 2]" in ok.signing_bytes()
    assert b"participants=['telco']" in ok.signing_bytes()


def test_decisions_need_a_reason() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValidationError):
        Decision(
            decision_id="d",
            event_id="e",
            customer_id="c",
            campaign_id="x",
            outcome="suppressed",
            reasons=[],
            occurred_at=now,
            decided_at=now,
            decided_by="intake",
        )
    assert ReasonCode("NO_CONSENT") is ReasonCode.NO_CONSENT

"""The schema's own examples: the published JSON Schema and the pydantic model the
services parse with accept the same valid documents and refuse the same counter-examples."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from schemas import MESSAGE_TYPES, CandidateEvent, WireModel
from schemas.examples import EXAMPLES_DIR, Example, example_sets, examples
from schemas.export import JSON_DIR

MODELS: dict[str, type[WireModel]] = {model.SCHEMA_ID: model for model in MESSAGE_TYPES}
CASES = [(schema_id, example) for schema_id in example_sets() for example in examples(schema_id)]


def _validator(schema_id: str) -> Draft202012Validator:
    schema = json.loads((JSON_DIR / f"{schema_id}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_the_candidate_event_ships_valid_examples_and_counter_examples() -> None:
    shipped = examples(CandidateEvent.SCHEMA_ID)
    assert any(e.valid for e in shipped)
    assert sum(not e.valid for e in shipped) >= 10


@pytest.mark.parametrize("schema_id", example_sets())
def test_every_example_file_is_indexed_with_a_reason(schema_id: str) -> None:
    assert schema_id in MODELS, f"examples for an unknown schema {schema_id}"
    listed = {example.path for example in examples(schema_id)}
    on_disk = set((EXAMPLES_DIR / schema_id).glob("*/*.json"))
    assert on_disk == listed
    assert all(example.why.strip() for example in examples(schema_id))


@pytest.mark.parametrize(
    ("schema_id", "example"),
    CASES,
    ids=[f"{s}/{'valid' if e.valid else 'invalid'}/{e.path.stem}" for s, e in CASES],
)
def test_schema_and_model_agree(schema_id: str, example: Example) -> None:
    errors = list(_validator(schema_id).iter_errors(json.loads(example.body)))
    messages = [error.message for error in errors]
    model = MODELS[schema_id]
    if example.valid:
        assert messages == [], f"the schema refuses a valid example ({example.why})"
        model.model_validate_json(example.body)
    else:
        # a minimal violation: one place is wrong, and both sides see it
        assert errors, f"the schema accepts a counter-example ({example.why})"
        places = {tuple(error.absolute_path) for error in errors}
        assert len(places) == 1, f"{example.why}: the schema reports {messages}"
        with pytest.raises(ValidationError):
            model.model_validate_json(example.body)

"""Export every message model as JSON Schema under ``schemas/json/`` and detect drift."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from schemas import MESSAGE_TYPES

JSON_DIR = Path(__file__).resolve().parent / "json"
SCHEMA_BASE_URI = "https://fedscreen.dev/schemas/"

ZONED_TIMESTAMP = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"  # full-date
    r"[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"  # partial-time
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"  # time-offset: required
)
"""RFC 3339's ``date-time`` grammar, whose offset is not optional. ``format: date-time``
already says so, but format is only an annotation to most validators (the JSON Schema
2020-12 default); the pattern makes every validator refuse a naive timestamp, as the
services do (``AwareDatetime``)."""


class WireJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, with every zone-aware timestamp's zone asserted."""

    def datetime_schema(self, schema: core_schema.DatetimeSchema) -> JsonSchemaValue:
        json_schema = super().datetime_schema(schema)
        if schema.get("tz_constraint") == "aware":
            json_schema["pattern"] = ZONED_TIMESTAMP
        return json_schema


def render_all() -> dict[str, str]:
    """File name -> JSON text, for every message type, deterministic."""
    rendered: dict[str, str] = {}
    for model in MESSAGE_TYPES:
        schema = model.model_json_schema(mode="validation", schema_generator=WireJsonSchema)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{SCHEMA_BASE_URI}{model.SCHEMA_ID}.json",
            **schema,
        }
        rendered[f"{model.SCHEMA_ID}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


def drift(directory: Path = JSON_DIR) -> list[str]:
    """Names of schema files that are missing, stale or no longer produced."""
    expected = render_all()
    problems = []
    for name, text in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text() != text:
            problems.append(f"{name}: differs from the models")
    for path in sorted(directory.glob("*.json")):
        if path.name not in expected:
            problems.append(f"{path.name}: no model produces it")
    return problems


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    expected = render_all()
    for path in directory.glob("*.json"):
        if path.name not in expected:
            path.unlink()
    written = []
    for name, text in expected.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written

"""Export every message model as JSON Schema under ``schemas/json/`` and detect drift."""

from __future__ import annotations

import json
from pathlib import Path

from schemas import MESSAGE_TYPES

JSON_DIR = Path(__file__).resolve().parent / "json"
SCHEMA_BASE_URI = "https://fedscreen.dev/schemas/"


def render_all() -> dict[str, str]:
    """File name -> JSON text, for every message type, deterministic."""
    rendered: dict[str, str] = {}
    for model in MESSAGE_TYPES:
        schema = model.model_json_schema(mode="validation")
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

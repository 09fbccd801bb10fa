"""The contract's own examples, shipped next to the JSON Schema they illustrate.

``schemas/json/examples/<schema id>/`` holds ``valid/*.json`` documents and
``invalid/*.json`` counter-examples, each invalid one a minimal violation of the
published schema, and ``index.json`` saying in one line why each is (in)valid: a
document whose schema forbids unknown fields has no room for a comment. The unit tests
check that the JSON Schema and the pydantic model agree on every one; the pipeline test
sends them to intake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from schemas.export import JSON_DIR

EXAMPLES_DIR = JSON_DIR / "examples"


@dataclass(frozen=True)
class Example:
    path: Path
    valid: bool
    why: str

    @property
    def body(self) -> bytes:
        return self.path.read_bytes()


def example_sets() -> list[str]:
    """The schema ids that ship examples."""
    return sorted(p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir())


def examples(schema_id: str) -> list[Example]:
    """Every example of one schema, as listed in its ``index.json``: valid ones first."""
    directory = EXAMPLES_DIR / schema_id
    index: dict[str, dict[str, str]] = json.loads((directory / "index.json").read_text())
    return [
        Example(directory / kind / name, kind == "valid", why)
        for kind in ("valid", "invalid")
        for name, why in sorted(index[kind].items())
    ]

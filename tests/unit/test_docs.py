"""Docs generated from code must match the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_matches_the_settings_models() -> None:
    spec = importlib.util.spec_from_file_location("gen_config", ROOT / "docs" / "gen_config.py")
    assert spec is not None and spec.loader is not None
    gen_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_config)
    text = gen_config.DOC.read_text()
    assert gen_config.BEGIN in text and gen_config.END in text
    assert gen_config.document_with(gen_config.render(), text) == text, (
        "docs/configuration.md is stale: run `python docs/gen_config.py --write`"
    )
    assert "KAFKA_FETCH_MAX_WAIT_MS" in text

"""The bundle watcher: versions, the newest, and re-activation (rollback)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import PackingSpec, PartnerBundle
from services.kernel.config import KafkaSettings
from services.kernel.model.rollout import BundleWatcher

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PACKING = PackingSpec(
    frac_bits=14, slot_bits=25, score_bits=23, flag_bits=1, slots=81, weight_clip=8.0
)


def bundle(version: str, at: datetime) -> PartnerBundle:
    return PartnerBundle(
        model_version=version,
        created_at=at,
        partner="payments",
        binning_id="b",
        key_id="k",
        public_key_n="AQ",
        packing=PACKING,
    )


def test_a_republished_older_version_becomes_the_newest_without_reloading() -> None:
    loaded: list[str] = []
    watcher = BundleWatcher(
        KafkaSettings(), "t", PartnerBundle, on_bundle=lambda b: loaded.append(b.model_version)
    )
    watcher.accept(bundle("v1", T0))
    watcher.accept(bundle("v2", T0 + timedelta(hours=1)))
    assert watcher.latest is not None and watcher.latest.model_version == "v2"
    watcher.accept(bundle("v1", T0 + timedelta(hours=2)))  # `fedscreen rollout` of v1
    assert watcher.latest.model_version == "v1"
    assert loaded == ["v1", "v2"]  # re-activation loads nothing again
    watcher.accept(bundle("v1", T0))  # an old copy changes nothing
    assert watcher.latest.model_version == "v1"
    assert watcher.get("v2") is not None


def test_every_bundle_is_checked_a_republished_version_too() -> None:
    """A partner's check (the bank's signature) runs before a version is adopted and
    before a newer copy re-activates it: a forged republication changes nothing."""
    seen: list[str] = []

    def check(bundle: PartnerBundle) -> None:
        seen.append(bundle.model_version)
        if bundle.binning_id == "forged":
            raise ValueError("not signed by the bank's key")

    watcher = BundleWatcher(KafkaSettings(), "t", PartnerBundle, check=check)
    watcher.accept(bundle("v1", T0))
    watcher.accept(bundle("v2", T0 + timedelta(hours=1)))
    forged = bundle("v1", T0 + timedelta(hours=2)).model_copy(update={"binning_id": "forged"})
    with pytest.raises(ValueError, match="not signed"):
        watcher.accept(forged)
    assert watcher.latest is not None and watcher.latest.model_version == "v2"
    assert watcher.bundles["v1"].binning_id == "b"
    assert seen == ["v1", "v2", "v1"]

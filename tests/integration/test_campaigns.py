"""Campaigns as run-time configuration: ``fedscreen campaigns apply|pause|resume|end``
change what the running intake and prescreen do, with no restart and no new model, and
every decision says which configuration version made it. Real processes on the
embedded broker; the CLI as its own process, as the marketing operator runs it."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import Decision, ReasonCode
from services.stack.pipeline import PipelineOptions
from tests.cli import fedscreen
from tests.integration.harness import (
    Running,
    send_candidates,
    start_pipeline,
    stop_pipeline,
    uncapped_policy,
    wait_for_decisions,
)

pytestmark = pytest.mark.integration

ROWS = 400
PROBES = itertools.count()

CAMPAIGNS = """
[[campaigns]]
campaign_id = "card-upgrade"
max_pd = 0.30
quota = {quota}
release_ttl_hours = 72
timezone = "Europe/Paris"
score_bands = [{{ band = "A", max_pd = 0.08 }}, {{ band = "B", max_pd = 0.30 }}]

[[campaigns]]
campaign_id = "personal-loan"
max_pd = 0.18
release_ttl_hours = 48
score_bands = [{{ band = "A", max_pd = 0.18 }}]
"""


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    running = await start_pipeline(
        tmp_path_factory.mktemp("campaigns"),
        ROWS,
        uncapped_policy(),
        PipelineOptions(webhooks=False),
    )
    try:
        yield running
    finally:
        stop_pipeline(running)


def campaigns(running: Running, cwd: Path, *argv: str) -> tuple[int, str, str]:
    done = fedscreen(cwd, "campaigns", *argv, env={**os.environ, **running.broker.env()})
    return done.returncode, done.stdout, done.stderr


async def decide(
    running: Running, customers: range, campaign: str = "card-upgrade"
) -> list[Decision]:
    """One candidate per customer; their decisions, in order."""
    tag = next(PROBES)
    events = [running.candidate(i, event_id=f"c{tag}-{i}", campaign=campaign) for i in customers]
    await send_candidates(running.settings, events)
    found = await wait_for_decisions(running.settings, [e.event_id for e in events], 60.0)
    assert len(found) == len(events), f"{len(events) - len(found)} never decided"
    return [found[e.event_id][0] for e in events]


async def until_applied(running: Running, version: int) -> None:
    """Both services follow campaign.config.v1 on their own: probe (personal-loan, no
    quota to use up) until prescreen decides under this version."""
    for _ in range(40):
        (probe,) = await decide(running, range(ROWS - 1, ROWS), "personal-loan")
        if probe.campaign_config_version == version:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"configuration version {version} never applied")


async def test_campaign_changes_apply_to_the_running_services(
    running: Running, tmp_path: Path
) -> None:
    pids = {n: s.process.pid for n, s in running.pipeline.fleet.services.items() if s.process}
    spec = tmp_path / "campaigns.toml"

    # Before any publication the bundle's policy applies: version 0.
    (first,) = await decide(running, range(0, 1))
    assert first.campaign_config_version == 0

    # v1: card-upgrade capped at 8 releases.
    spec.write_text(CAMPAIGNS.format(quota=8))
    code, out, err = campaigns(running, tmp_path, "apply", str(spec), "--by", "marketing")
    assert code == 0, err
    assert "+ card-upgrade: added" in out and "version 1" in out
    await until_applied(running, 1)
    decided = await decide(running, range(1, 61))
    released = [d for d in decided if d.outcome == "released"]
    assert {d.campaign_config_version for d in decided} == {1}
    assert 0 < len(released) <= 8
    assert any(ReasonCode.QUOTA_EXHAUSTED in d.reasons for d in decided)

    # `list` counts every release of the campaign on campaign.released.v1 (the first
    # candidate's too, released under the bundle's policy) against the quota: one
    # prescreen worker pools its partitions' shares, so the quota was filled exactly,
    # and its own count agrees (no "counted by prescreen" column).
    code, out, err = campaigns(running, tmp_path, "list")
    assert code == 0, err
    assert "8 / 8 (0 left)" in out and "version 1" in out, out
    assert "counted by prescreen" not in out, out

    # v2: the quota raised mid-stream; the next candidates are released again.
    spec.write_text(CAMPAIGNS.format(quota=1000))
    code, out, err = campaigns(running, tmp_path, "apply", str(spec))
    assert code == 0, err
    assert "~ card-upgrade: quota: 8 -> 1000" in out and "version 2" in out
    await until_applied(running, 2)
    decided = await decide(running, range(61, 121))
    assert {d.campaign_config_version for d in decided} == {2}
    assert any(d.outcome == "released" for d in decided)
    assert not any(ReasonCode.QUOTA_EXHAUSTED in d.reasons for d in decided)

    # v3: paused; every candidate suppressed with the reason, none released.
    code, out, err = campaigns(running, tmp_path, "pause", "card-upgrade")
    assert code == 0, err
    assert "~ card-upgrade: state: active -> paused" in out
    await until_applied(running, 3)
    decided = await decide(running, range(121, 141))
    assert {tuple(d.reasons) for d in decided} == {(ReasonCode.CAMPAIGN_PAUSED,)}

    # v4: resumed; v5: ended, and an ended campaign does not come back.
    assert campaigns(running, tmp_path, "resume", "card-upgrade")[0] == 0
    await until_applied(running, 4)
    assert any(d.outcome == "released" for d in await decide(running, range(141, 171)))
    assert campaigns(running, tmp_path, "end", "card-upgrade")[0] == 0
    await until_applied(running, 5)
    decided = await decide(running, range(171, 181))
    assert {tuple(d.reasons) for d in decided} == {(ReasonCode.CAMPAIGN_ENDED,)}
    code, out, err = campaigns(running, tmp_path, "resume", "card-upgrade")
    assert code != 0 and "is ended" in err and len(err.strip().splitlines()) == 1

    # A campaign the configuration does not list is a clear reason, not a crash.
    (unknown,) = await decide(running, range(181, 182), "no-such-campaign")
    assert unknown.reasons == [ReasonCode.UNKNOWN_CAMPAIGN]
    assert unknown.campaign_config_version == 5

    # An invalid file: one line per problem, nothing published (still version 5).
    spec.write_text(
        CAMPAIGNS.format(quota=-1).replace('timezone = "Europe/Paris"', 'timezone = "Mars/Base"')
    )
    code, out, err = campaigns(running, tmp_path, "apply", str(spec))
    assert code != 0
    problems = err.strip().splitlines()
    assert len(problems) == 2, err
    assert any("quota" in p for p in problems) and any("Mars/Base" in p for p in problems)
    assert "version 5" in campaigns(running, tmp_path, "list")[1]

    # No service was restarted for any of it.
    assert {
        n: s.process.pid for n, s in running.pipeline.fleet.services.items() if s.process
    } == pids
    assert all(s.alive for s in running.pipeline.fleet.services.values())

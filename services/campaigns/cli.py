"""``fedscreen campaigns apply|list|pause|resume|end``: change the campaigns intake and
prescreen apply, at run time, without a restart or a new model (docs/campaigns.md)."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from services.kernel.errors import CliError

if TYPE_CHECKING:  # the CLI imports stay light until a command runs
    from schemas import CampaignPolicy
    from services.kernel.config import KafkaSettings

T = TypeVar("T")
Change = Callable[[list["CampaignPolicy"]], list["CampaignPolicy"]]


def register(app: typer.Typer) -> None:
    campaigns = typer.Typer(
        help="The campaign configuration on campaign.config.v1: apply a file, list the "
        "campaigns with their quotas used and left, pause, resume or end one.",
        no_args_is_help=True,
    )
    app.add_typer(campaigns, name="campaigns")

    @campaigns.command("apply")
    def apply(
        path: Annotated[Path, typer.Argument(help="TOML file of [[campaigns]] tables.")],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Show the changes, publish nothing.")
        ] = False,
        by: Annotated[str | None, typer.Option(help="Who applies it (default: $USER).")] = None,
    ) -> None:
        """Check the file (one line per problem; nothing is published if any), show what
        changes against the configuration in force, publish it as the next version."""
        from services.campaigns.spec_file import load_campaigns

        wanted = load_campaigns(path)
        _change(lambda _: wanted, dry_run=dry_run, by=by)

    @campaigns.command("list")
    def list_() -> None:
        """The campaigns in force: state, dates, and each quota used (releases on
        campaign.released.v1, counted once per decision) and left, today's in the
        campaign's time zone."""
        from datetime import UTC, datetime

        from services.campaigns.report import print_campaigns
        from services.campaigns.topic import current_config, release_usage

        kafka = _kafka()
        config = _run(current_config(kafka), kafka)
        if config is None:
            typer.echo("no campaign configuration published yet: the model bundle's policy applies")
            return
        usage = _run(release_usage(kafka, config.campaigns), kafka)
        print_campaigns(config, usage, datetime.now(UTC))

    for action in ("pause", "resume", "end"):
        _state_command(campaigns, action)


def _state_command(group: typer.Typer, action: str) -> None:
    @group.command(action, help=f"{action.capitalize()} one campaign (the next version).")
    def change(
        campaign_id: Annotated[str, typer.Argument(help="The campaign id.")],
        by: Annotated[str | None, typer.Option(help="Who does it (default: $USER).")] = None,
    ) -> None:
        from services.campaigns.changes import with_state

        _change(lambda current: with_state(current, campaign_id, action), dry_run=False, by=by)


def _kafka() -> KafkaSettings:
    from services.kernel.config import KafkaSettings, load_settings

    return load_settings(KafkaSettings)


def _run(coroutine: Coroutine[Any, Any, T], kafka: KafkaSettings) -> T:
    import asyncio

    from aiokafka.errors import KafkaError

    try:
        return asyncio.run(coroutine)
    except TimeoutError as exc:
        raise CliError(f"Kafka at {kafka.bootstrap_servers}: no topic campaign.config.v1") from exc
    except KafkaError as exc:
        raise CliError(f"Kafka at {kafka.bootstrap_servers}: {exc}") from exc


def _change(make: Change, *, dry_run: bool, by: str | None) -> None:
    from datetime import UTC, datetime

    from schemas import CampaignConfig
    from services.campaigns.changes import describe_changes
    from services.campaigns.topic import current_config, publish

    kafka = _kafka()
    current = _run(current_config(kafka), kafka)
    in_force = [] if current is None else current.campaigns
    wanted = make(in_force)
    version = (0 if current is None else current.version) + 1
    if current is None:
        typer.echo("no campaign configuration published yet (the model bundle's policy applies)")
    lines = describe_changes(in_force, wanted)
    for line in lines:
        typer.echo(line)
    if not lines:
        typer.echo(f"no change against version {version - 1}: nothing published")
        return
    if dry_run:
        typer.echo(f"dry run: version {version} not published")
        return
    config = CampaignConfig(
        version=version,
        campaigns=wanted,
        published_at=datetime.now(UTC),
        published_by=by if by is not None else getpass.getuser(),
    )
    _run(publish(kafka, config), kafka)
    typer.echo(f"published campaign configuration version {version} to campaign.config.v1")

"""The body a campaign tool receives: a Standard Webhooks envelope around the release.

Only the :class:`~schemas.Release` fields travel (the privacy contract: campaign tools
learn the candidate reference, campaign, score band and expiry, nothing else).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas import Release

EVENT_TYPE: Final = "candidate.released"


class ReleasedWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["candidate.released"] = EVENT_TYPE
    timestamp: AwareDatetime
    data: Release


def webhook_body(release: Release) -> bytes:
    # The event time is the release time, not the send time, so every attempt and every
    # redelivery of one release carries byte-identical bodies.
    return ReleasedWebhook(timestamp=release.released_at, data=release).model_dump_json().encode()

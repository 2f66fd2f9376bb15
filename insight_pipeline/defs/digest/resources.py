"""Resources of the digest: how mail leaves (`EmailResource`) and the digest policy
(`DigestResource`: send hour, staleness, feed link).

Empty strings mean "use the environment, else the documented default", resolved at run time
(never at import), like the other resources: the SMTP URL and its credentials then live only in
the environment and never appear in Dagster's run config or UI.
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from insight_pipeline.lib.email import (
    DEFAULT_FEED_URL,
    DEFAULT_SENDER,
    Transport,
    default_outbox_dir,
    make_transport,
)


class EmailResource(dg.ConfigurableResource):
    """Delivers digest emails over SMTP, or as `.eml` files in an outbox folder when no SMTP
    server is configured (the embedded default: nothing leaves the machine)."""

    smtp_url: str = Field(
        default="",
        description=(
            "smtp://user:pass@host:port (add ?starttls=1 for STARTTLS) or smtps://... ; "
            "empty = $INSIGHTS_SMTP_URL, and when that is unset the outbox folder."
        ),
    )
    outbox_dir: str = Field(
        default="", description="Empty = $INSIGHTS_OUTBOX_DIR or <data dir>/outbox."
    )
    sender: str = Field(
        default="",
        description=f"From: address; empty = $INSIGHTS_DIGEST_FROM or {DEFAULT_SENDER!r}.",
    )
    max_attempts: int = Field(
        default=3, description="Tries per digest and run before it is recorded as failed."
    )
    backoff_seconds: float = Field(
        default=2.0, description="Wait before the 2nd try; doubles for each further try."
    )

    def transport(self) -> Transport:
        url = self.smtp_url or os.environ.get("INSIGHTS_SMTP_URL", "")
        outbox = Path(self.outbox_dir) if self.outbox_dir else default_outbox_dir()
        return make_transport(url, outbox)

    def from_address(self) -> str:
        return self.sender or os.environ.get("INSIGHTS_DIGEST_FROM") or DEFAULT_SENDER


class DigestResource(dg.ConfigurableResource):
    """When digests go out and what they link to; shared by the asset and its sensor."""

    feed_url: str = Field(
        default="", description=f"The web feed; empty = $INSIGHTS_FEED_URL or {DEFAULT_FEED_URL}."
    )
    send_hour_utc: int = Field(
        default=6,
        ge=0,
        le=23,
        description="The sensor requests day D's digest from this hour (UTC) of day D + 1.",
    )
    max_age_days: int = Field(
        default=2,
        ge=1,
        description=(
            "Digests of days older than this are stale: the sensor never requests them and "
            "the asset does not send them (a backfill must not flood inboxes with old news)."
        ),
    )
    team_top: int = Field(default=5, ge=0, description="Top items in a manager's team section.")

    def feed(self) -> str:
        return self.feed_url or os.environ.get("INSIGHTS_FEED_URL") or DEFAULT_FEED_URL

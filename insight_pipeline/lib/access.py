"""Who may see and act on which insights, and the vocabulary of the API's reads and writes.

Kept apart from the HTTP layer so the rules are plain, testable values the store's SQL binds:
- a CSM sees the insights they own and those shared with them;
- a manager sees their team's (everyone reporting to them, transitively through manager_id,
  and their own) plus those shared with them;
- a leader sees all.
Acting follows seeing. Anything outside that scope must look exactly like something that does
not exist (404 for an id, an empty page and zero counts for a filter).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from insight_pipeline.lib.store import InsightStore

ROLES = ("csm", "manager", "leader")
ACTIONS = ("dismiss", "snooze", "actioned")
#: The status an action leaves on the insight.
STATUS_OF_ACTION = {"dismiss": "dismissed", "snooze": "snoozed", "actioned": "actioned"}


@dataclass(frozen=True)
class Viewer:
    """The caller as the store needs them: whose insights they may see and their read mark."""

    user_id: str
    role: str
    name: str = ""
    owner_ids: tuple[str, ...] | None = ()
    """Owners whose insights this viewer sees; None means every owner (a leader)."""
    read_all_at: datetime | None = None
    """'Mark all read' for insights the viewer does not own: anything older counts as read."""

    @property
    def sees_all(self) -> bool:
        return self.owner_ids is None

    @property
    def manages(self) -> bool:
        """Managers and leaders have a team view; CSMs do not."""
        return self.role in ("manager", "leader")


def resolve_viewer(store: InsightStore, user: dict[str, Any]) -> Viewer:
    """The Viewer for a directory row (from `store.get_user` or `store.token_record`)."""
    role = str(user["role"])
    owners: tuple[str, ...] | None
    if role == "leader":
        owners = None
    elif role == "manager":
        owners = tuple(store.team_user_ids(str(user["user_id"])))
    else:
        owners = (str(user["user_id"]),)
    return Viewer(
        user_id=str(user["user_id"]),
        role=role,
        name=str(user.get("name") or user["user_id"]),
        owner_ids=owners,
        read_all_at=user.get("read_all_at"),
    )


@dataclass(frozen=True)
class FeedFilters:
    """Filters of the feed; None means 'any'. Defaults give the open feed: not dismissed, not
    actioned, not expired, not snoozed into the future."""

    insight_id: str | None = None
    customer_id: str | None = None
    category: str | None = None
    priority: str | None = None
    type: str | None = None
    status: str | None = None
    """An explicit status shows insights of that status (dismissed ones included)."""
    any_status: bool = False
    date_from: date | None = None
    date_to: date | None = None
    include_expired: bool = False
    include_snoozed: bool = False

    def params(self) -> dict[str, Any]:
        """The bind parameters of the feed SQL."""
        return {
            "insight_id": self.insight_id,
            "customer_id": self.customer_id,
            "category": self.category,
            "priority": self.priority,
            "type": self.type,
            "status": self.status,
            "any_status": self.any_status,
            "date_from": self.date_from,
            "date_to": self.date_to,
            "include_expired": self.include_expired,
            # asking for snoozed insights means asking for the ones still asleep too
            "include_snoozed": self.include_snoozed or self.status == "snoozed",
        }


ANY_INSIGHT = {"any_status": True, "include_expired": True, "include_snoozed": True}
"""Filters that keep every visible insight: lookups by id and the account history."""


@dataclass
class FeedPage:
    """One page of the feed and its totals over every page."""

    rows: pl.DataFrame
    total: int
    unread: int


ROLLUP_COUNTS = ("insights", "open_insights", "unread", "dismissed", "actioned", "snoozed")


def rollup(grain: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Counts summed over `by` (none = one total row), with the two rates:

    - relevance_rate = 1 - dismissed / responded, where responded = dismissed + actioned +
      snoozed (what the CSM did something with); null while nothing was responded to;
    - action_rate = actioned / insights.
    """
    summed = [pl.col(c).sum().cast(pl.Int64) for c in ROLLUP_COUNTS]
    frame = grain.group_by(by, maintain_order=True).agg(summed) if by else grain.select(summed)
    responded = pl.col("dismissed") + pl.col("actioned") + pl.col("snoozed")
    return frame.with_columns(
        pl.when(responded > 0)
        .then(1.0 - pl.col("dismissed") / responded)
        .otherwise(None)
        .round(4)
        .alias("relevance_rate"),
        pl.when(pl.col("insights") > 0)
        .then(pl.col("actioned") / pl.col("insights"))
        .otherwise(None)
        .round(4)
        .alias("action_rate"),
    )


def directory_from_source(location: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """The source's users table, validated by the contract (bad rows left out and counted):
    what `team_directory` and `insight-pipeline token create` sync into the store."""
    from insight_pipeline.lib.contract import CONTRACT, Source, quarantine

    source = Source(location)
    try:
        users = source.read("users")
    finally:
        source.dispose()
    assert users is not None  # a required table: read() raises when it is missing
    clean, _bad, report = quarantine(CONTRACT["users"], users)
    return clean, {k: int(v) for k, v in report.as_metadata().items()}

"""The API's request and response models: what the OpenAPI document publishes.

Validation lives here so that every bad input becomes the same documented 422 shape
(FastAPI's `HTTPValidationError`), with a message that says what to send instead.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from insight_pipeline.lib.signals import CATEGORY_OF_TYPE

Action = Literal["dismiss", "snooze", "actioned"]
Feedback = Literal["not_relevant", "already_knew", "helpful", "took_action"]
Priority = Literal["high", "medium", "low"]
Status = Literal["new", "viewed", "actioned", "dismissed", "snoozed"]
Category = Literal["usage", "engagement", "risk", "opportunity", "benchmark", "timing", "team"]
InsightType = Literal[tuple(CATEGORY_OF_TYPE)]  # type: ignore[valid-type]
Role = Literal["csm", "manager", "leader"]


def _plain_text(value: str) -> str:
    """Reject what the database cannot store (NUL) before it gets there."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


PlainText = Annotated[str, AfterValidator(_plain_text)]


def _iso_date(value: object) -> object:
    """Dates as YYYY-MM-DD only: pydantic would otherwise read "0" as a Unix timestamp."""
    if isinstance(value, str) and not _ISO_DATE.fullmatch(value):
        raise ValueError("use a date as YYYY-MM-DD")
    return value


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
IsoDate = Annotated[date, BeforeValidator(_iso_date)]
UserId = Annotated[PlainText, Field(min_length=1, max_length=200)]


class ErrorOut(BaseModel):
    """An error the API chose to return (401, 403, 404, 503): `detail` says why."""

    detail: str


class Evidence(BaseModel):
    """One fact behind an insight, checkable by the CSM."""

    model_config = ConfigDict(extra="allow")
    metric: str | None = None
    value: float | str | None = None
    comparison: str | None = None
    source: str | None = None


class RecommendedAction(BaseModel):
    """What to do about it; `quick_action_id` names a one-click action in the feed."""

    model_config = ConfigDict(extra="allow")
    type: str | None = None
    description: str | None = None
    quick_action_id: str | None = None


class Share(BaseModel):
    """Set when the insight is in the viewer's feed because a colleague shared it."""

    by_user_id: str
    by_name: str | None
    note: str | None
    at: datetime | None


class InsightOut(BaseModel):
    """One insight as the viewer sees it (the insights table, data contract section 3)."""

    id: str
    customer_id: str | None
    customer_name: str | None
    user_id: str = Field(description="The CSM the insight is for.")
    user_name: str | None = Field(description="That CSM's name.")
    partition_date: date
    last_seen_date: date
    category: str
    type: str
    subject: str | None
    priority: str
    score: float
    title: str
    summary: str
    evidence: list[Evidence]
    so_what: str | None
    recommended_action: RecommendedAction | None
    score_parts: dict[str, Any] | None
    status: str
    feedback: str | None
    snoozed_until: datetime | None
    expires_at: datetime | None
    created_at: datetime | None
    viewed_at: datetime | None
    actioned_at: datetime | None
    unread: bool = Field(description="Not yet opened by the viewer.")
    shared: Share | None = Field(description="Who shared it with the viewer, when shared.")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> InsightOut:
        """From a `store.feed` row (JSON columns are text there)."""
        shared = None
        if row.get("shared_by"):
            shared = Share(
                by_user_id=row["shared_by"],
                by_name=row.get("shared_by_name"),
                note=row.get("share_note"),
                at=row.get("shared_at"),
            )
        evidence = _json(row.get("evidence")) or []
        if not isinstance(evidence, list):
            evidence = [evidence]
        action = _json(row.get("recommended_action"))
        parts = _json(row.get("score_parts"))
        return cls(
            **{k: row.get(k) for k in cls.model_fields if k not in _DERIVED},
            evidence=[e if isinstance(e, dict) else {"value": str(e)} for e in evidence],
            recommended_action=action if isinstance(action, dict) else None,
            score_parts=parts if isinstance(parts, dict) else None,
            unread=bool(row.get("unread")),
            shared=shared,
        )


_DERIVED = {"evidence", "recommended_action", "score_parts", "unread", "shared"}


def _json(text: Any) -> Any:
    if text is None or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return None


class FeedOut(BaseModel):
    """A page of the feed: `total` and `unread` count every page under the same filters."""

    insights: list[InsightOut]
    total: int
    unread: int
    limit: int
    offset: int


class ActionIn(BaseModel):
    """An action on an insight; `snooze_until` goes with `snooze` and only with it."""

    model_config = ConfigDict(extra="forbid")
    action: Action
    feedback: Feedback | None = Field(
        default=None, description="Why: not_relevant, already_knew, helpful or took_action."
    )
    snooze_until: datetime | None = Field(
        default=None, description="Required for snooze; must be in the future (naive = UTC)."
    )

    @field_validator("snooze_until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _snooze_rules(self) -> ActionIn:
        if self.action == "snooze":
            if self.snooze_until is None:
                raise ValueError("snooze_until is required when action is snooze")
            if self.snooze_until <= datetime.now(UTC):
                raise ValueError("snooze_until must be in the future")
        elif self.snooze_until is not None:
            raise ValueError("snooze_until is only allowed when action is snooze")
        return self


class ActionOut(BaseModel):
    """The recorded action (its feedback-history id) and the insight after it."""

    event_id: str
    insight: InsightOut


class ShareIn(BaseModel):
    """Share with colleagues (user ids of the directory), optionally with a note."""

    model_config = ConfigDict(extra="forbid")
    user_ids: list[UserId] = Field(min_length=1, max_length=50)
    note: Annotated[PlainText, Field(max_length=1000)] | None = None


class ShareOut(BaseModel):
    """Who it was shared with (the sharer is left out)."""

    shared_with: list[str]
    insight: InsightOut


class MarkAllReadOut(BaseModel):
    """How many of the caller's own insights went from new to viewed."""

    marked: int


class DigestPreference(BaseModel):
    """How often your digest email arrives: every morning (the default), once a week on the
    morning of `weekday`, or never."""

    model_config = ConfigDict(extra="forbid")
    frequency: Literal["daily", "weekly", "off"]
    weekday: StrictInt | None = Field(
        default=None, ge=0, le=6, description="0 = Monday .. 6 = Sunday; with weekly, and only."
    )


class MeOut(BaseModel):
    """The authenticated user."""

    user_id: str
    name: str
    role: Role
    team: list[str] | None = Field(description="Owners in scope; null for a leader (all).")


class RollupRow(BaseModel):
    """Counts and rates of one group of the team's insights.

    relevance_rate = 1 - dismissed / (dismissed + actioned + snoozed), null until the CSMs
    responded to anything; action_rate = actioned / insights.
    """

    key: str | None = Field(description="The group (user id, category or priority); null = all.")
    label: str | None
    insights: int
    open_insights: int
    unread: int
    dismissed: int
    actioned: int
    snoozed: int
    relevance_rate: float | None
    action_rate: float | None


class TeamOut(BaseModel):
    """The team rollup over insights raised in [date_from, date_to]."""

    date_from: date
    date_to: date
    totals: RollupRow
    by_csm: list[RollupRow]
    by_category: list[RollupRow]
    by_priority: list[RollupRow]
    top: list[InsightOut] = Field(description="The team's best open insights right now.")

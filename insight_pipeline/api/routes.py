"""The JSON API under /api: the feed, one insight, actions, shares, the team rollup.

Every route authenticates (api/auth.py) and reads or writes only through the store, whose SQL
applies the viewer's scope (lib/access.py). Out-of-scope ids answer 404 exactly like unknown
ones; filters and counts never include what the viewer may not see.
"""

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import polars as pl
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError

from insight_pipeline.api.auth import api_viewer, store_of
from insight_pipeline.api.schemas import (
    ActionIn,
    ActionOut,
    Category,
    DigestPreference,
    ErrorOut,
    FeedOut,
    InsightOut,
    InsightType,
    IsoDate,
    MarkAllReadOut,
    MeOut,
    PlainText,
    Priority,
    RollupRow,
    ShareIn,
    ShareOut,
    Status,
    TeamOut,
)
from insight_pipeline.lib.access import ANY_INSIGHT, FeedFilters, Viewer, rollup
from insight_pipeline.lib.store import InsightStore

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or a malformed, expired or revoked one."}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such insight among those you may see."}
}
WITH_BODY: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    400: {"model": ErrorOut, "description": "The body could not be parsed as JSON."},
}
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "Only managers and leaders have a team view."}
}

router = APIRouter(prefix="/api", responses=UNAUTHORIZED)
health_router = APIRouter(prefix="/api")

InsightId = Annotated[uuid.UUID, Path(description="The insight's id (a UUID).")]
CurrentViewer = Annotated[Viewer, Depends(api_viewer)]


Store = Annotated[InsightStore, Depends(store_of)]


def _invalid(loc: tuple[str, ...], message: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's documented shape, for rules checked outside the models."""
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": value}]
    )


def _one(store: InsightStore, viewer: Viewer, insight_id: uuid.UUID) -> InsightOut:
    page = store.feed(viewer, FeedFilters(insight_id=str(insight_id), **ANY_INSIGHT), limit=1)
    if page.rows.height == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "insight not found")
    return InsightOut.from_row(page.rows.row(0, named=True))


@health_router.get("/health", tags=["meta"], summary="Liveness (no authentication)")
def health() -> dict[str, str]:
    """Answers while the process serves; does not touch the store."""
    return {"status": "ok"}


@router.get("/me", response_model=MeOut, tags=["meta"], summary="Who the token belongs to")
def me(viewer: CurrentViewer) -> MeOut:
    """The authenticated user, with the owners whose insights they see."""
    team = list(viewer.owner_ids) if viewer.owner_ids is not None else None
    return MeOut.model_validate(
        {"user_id": viewer.user_id, "name": viewer.name, "role": viewer.role, "team": team}
    )


@router.get(
    "/me/digest", response_model=DigestPreference, tags=["meta"], summary="Your digest's frequency"
)
def get_digest(viewer: CurrentViewer, store: Store) -> DigestPreference:
    """How often your digest email arrives (daily unless you chose otherwise)."""
    frequency, weekday = store.digest_preference(viewer.user_id)
    return DigestPreference.model_validate({"frequency": frequency, "weekday": weekday})


@router.put(
    "/me/digest",
    response_model=DigestPreference,
    responses={400: WITH_BODY[400]},
    tags=["meta"],
    summary="Choose your digest's frequency",
)
def set_digest(body: DigestPreference, viewer: CurrentViewer, store: Store) -> DigestPreference:
    """Daily, weekly on a weekday (0 = Monday), or off: from the next digest on. Your own only."""
    try:
        store.set_digest_preference(viewer.user_id, body.frequency, body.weekday)
    except ValueError as exc:
        raise _invalid(("body",), str(exc), body.model_dump()) from exc
    return get_digest(viewer, store)


@router.get("/insights", response_model=FeedOut, tags=["insights"], summary="The feed")
def list_insights(
    viewer: CurrentViewer,
    store: Store,
    response: Response,
    customer_id: Annotated[PlainText | None, Query(max_length=200)] = None,
    category: Category | None = None,
    priority: Priority | None = None,
    status_: Annotated[
        Status | None,
        Query(alias="status", description="Only this status (dismissed/actioned included)."),
    ] = None,
    type_: Annotated[InsightType | None, Query(alias="type")] = None,
    date_from: Annotated[
        IsoDate | None, Query(alias="from", description="partition_date on or after")
    ] = None,
    date_to: Annotated[
        IsoDate | None, Query(alias="to", description="partition_date on or before")
    ] = None,
    include_expired: bool = False,
    include_snoozed: Annotated[
        bool, Query(description="Also insights snoozed until later (due ones always show).")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> FeedOut:
    """Insights you may see (yours, your team's for managers, all for leaders, plus those
    shared with you), best first: priority, then score, then the most recent. Without a
    `status`, dismissed and actioned insights are left out; expired ones and those snoozed
    into the future too unless asked for. `total` and `unread` count all pages."""
    if date_from and date_to and date_from > date_to:
        raise _invalid(("query", "from"), "from must be on or before to", str(date_from))
    filters = FeedFilters(
        customer_id=customer_id,
        category=category,
        priority=priority,
        status=status_,
        type=type_,
        date_from=date_from,
        date_to=date_to,
        include_expired=include_expired,
        include_snoozed=include_snoozed,
    )
    started = time.perf_counter()
    page = store.feed(viewer, filters, limit=limit, offset=offset)
    took = (time.perf_counter() - started) * 1000
    response.headers["Server-Timing"] = f'feed;dur={took:.2f};desc="store.feed"'
    return FeedOut(
        insights=[InsightOut.from_row(r) for r in page.rows.iter_rows(named=True)],
        total=page.total,
        unread=page.unread,
        limit=limit,
        offset=offset,
    )


@router.post(
    "/insights/mark-all-read",
    response_model=MarkAllReadOut,
    tags=["insights"],
    summary="Mark everything read",
)
def mark_all_read(viewer: CurrentViewer, store: Store) -> MarkAllReadOut:
    """Your new insights become viewed; everything else you see counts as read from now."""
    return MarkAllReadOut(marked=store.mark_all_read(viewer.user_id))


@router.get(
    "/insights/{insight_id:uuid}",
    response_model=InsightOut,
    responses=NOT_FOUND,
    tags=["insights"],
    summary="One insight (marks it viewed)",
)
def get_insight(insight_id: InsightId, viewer: CurrentViewer, store: Store) -> InsightOut:
    """The insight, which is now viewed: by its owner (status new -> viewed) or read by you."""
    _one(store, viewer, insight_id)
    store.mark_viewed(str(insight_id), viewer.user_id)
    return _one(store, viewer, insight_id)


@router.post(
    "/insights/{insight_id:uuid}/action",
    response_model=ActionOut,
    responses=WITH_BODY,
    tags=["insights"],
    summary="Dismiss, snooze or mark actioned",
)
def act(insight_id: InsightId, body: ActionIn, viewer: CurrentViewer, store: Store) -> ActionOut:
    """Updates the insight (status, feedback, snoozed_until, actioned_at) and appends the action
    to the feedback history in the same transaction; ranking learns from that history."""
    _one(store, viewer, insight_id)
    try:
        event_id = store.record_action(
            str(insight_id), viewer.user_id, body.action, body.feedback, body.snooze_until
        )
    except ValueError as exc:
        raise _invalid(("body",), str(exc)) from exc
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "insight not found") from exc
    return ActionOut(event_id=event_id, insight=_one(store, viewer, insight_id))


@router.post(
    "/insights/{insight_id:uuid}/share",
    response_model=ShareOut,
    responses=WITH_BODY,
    tags=["insights"],
    summary="Share with colleagues",
)
def share(insight_id: InsightId, body: ShareIn, viewer: CurrentViewer, store: Store) -> ShareOut:
    """The recipients see it in their feed, marked shared, with who shared it and the note."""
    _one(store, viewer, insight_id)
    try:
        recipients = store.share_insight(str(insight_id), viewer.user_id, body.user_ids, body.note)
    except ValueError as exc:
        raise _invalid(("body", "user_ids"), str(exc), body.user_ids) from exc
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "insight not found") from exc
    return ShareOut(shared_with=recipients, insight=_one(store, viewer, insight_id))


@router.get(
    "/accounts/{customer_id}/insights",
    response_model=FeedOut,
    responses={404: {"model": ErrorOut, "description": "No insight of that account for you."}},
    tags=["insights"],
    summary="An account's insights over time",
)
def account_insights(
    customer_id: Annotated[PlainText, Path(max_length=200)],
    viewer: CurrentViewer,
    store: Store,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> FeedOut:
    """Every insight of the account you may see, whatever its status, newest first."""
    filters = FeedFilters(customer_id=customer_id, **ANY_INSIGHT)
    page = store.feed(viewer, filters, limit=limit)
    if page.total == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no insights for that account")
    rows = page.rows.sort(["partition_date", "score"], descending=True)
    return FeedOut(
        insights=[InsightOut.from_row(r) for r in rows.iter_rows(named=True)],
        total=page.total,
        unread=page.unread,
        limit=limit,
        offset=0,
    )


def team_summary(
    store: InsightStore, viewer: Viewer, date_from: date, date_to: date, top: int = 5
) -> TeamOut:
    """The rollup behind GET /api/team/insights and the feed's team page."""
    grain = store.team_rollup(viewer, date_from, date_to)
    names = dict(zip(grain["user_id"], grain["user_name"], strict=True))

    def rows(by: str | None) -> list[RollupRow]:
        frame = rollup(grain, [by] if by else [])
        out = []
        for r in frame.iter_rows(named=True):
            key = r.get(by) if by else None
            label = (names.get(key) or key) if by == "user_id" else key
            counts = {k: v for k, v in r.items() if k != by}
            out.append(RollupRow(key=key, label=label, **counts))
        return out

    # the team's own insights only: a manager's feed also holds what colleagues shared with them
    top_items: list[InsightOut] = []
    if top:
        best = store.feed(viewer, FeedFilters(), limit=top + 50).rows
        best = best.filter(pl.col("shared_by").is_null()).head(top)
        top_items = [InsightOut.from_row(r) for r in best.iter_rows(named=True)]
    by_csm = sorted(rows("user_id"), key=lambda r: (-r.open_insights, r.label or ""))
    rank = {"high": 0, "medium": 1, "low": 2}
    return TeamOut(
        date_from=date_from,
        date_to=date_to,
        totals=rows(None)[0],
        by_csm=by_csm,
        by_category=rows("category"),
        by_priority=sorted(rows("priority"), key=lambda r: rank.get(r.key or "", 3)),
        top=top_items,
    )


@router.get(
    "/team/insights",
    response_model=TeamOut,
    responses=FORBIDDEN,
    tags=["team"],
    summary="The team rollup (managers and leaders)",
)
def team_insights(
    viewer: CurrentViewer,
    store: Store,
    date_from: Annotated[
        IsoDate | None, Query(alias="from", description="default: 30 days ago")
    ] = None,
    date_to: Annotated[IsoDate | None, Query(alias="to", description="default: today")] = None,
    top: Annotated[int, Query(ge=0, le=50)] = 5,
) -> TeamOut:
    """Your team's insights (everyone reporting to you, transitively; all for a leader) raised
    in the window, counted by CSM, category and priority with relevance and action rates, plus
    the team's best open insights."""
    if not viewer.manages:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the team view is for managers and leaders")
    today = datetime.now(UTC).date()
    date_to = date_to or today
    date_from = date_from or date_to - timedelta(days=30)
    if date_from > date_to:
        raise _invalid(("query", "from"), "from must be on or before to", str(date_from))
    return team_summary(store, viewer, date_from, date_to, top)

"""Team rollups and the leader view: GET /api/team/rollups (+ /history) and the page /feed/leader.

The numbers come from the store's team_rollups table, written daily by the `team_rollups` asset
(defs/team/assets.py, lib/team.py); this module only decides which rows a viewer may see:

- a CSM has no team view (403, as GET /api/team/insights);
- a manager sees the csm and manager rows of people in their team (themselves and everyone
  reporting to them, transitively), the segment rows computed over their team only, and as the
  "total" their own team's row - never a number that includes accounts outside their team;
- a leader sees every row, the segment rows and total over everyone.

A `scope` (a manager's user id) narrows any grouping to that manager's team; a scope outside the
viewer's team answers 404, exactly like one that does not exist.

The charts are inline SVG computed here as plain numbers (no JavaScript, no CDN): open insights
over time from the daily history, ARR at risk and expansion ARR by segment from the latest day.
"""

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from insight_pipeline.api.auth import api_viewer, cookie_viewer, store_of
from insight_pipeline.api.feed import env, render
from insight_pipeline.api.routes import UNAUTHORIZED
from insight_pipeline.api.schemas import ErrorOut, InsightOut, IsoDate, PlainText
from insight_pipeline.lib.access import FeedFilters, Viewer
from insight_pipeline.lib.insights.narrate import fmt_money
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.lib.team import EVERYONE, TEAM_CATEGORY
from insight_pipeline.lib.tokens import csrf_token

GroupBy = Literal["csm", "manager", "segment", "total"]

FORBIDDEN: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    403: {"model": ErrorOut, "description": "Only managers and leaders have a team view."},
    404: {"model": ErrorOut, "description": "No such team among those you may see."},
}

router = APIRouter(tags=["team"])

env.filters.setdefault("money", fmt_money)


# ---------------------------------------------------------------------------- models


class RollupOut(BaseModel):
    """One group's numbers as of the end of the rollup day (see lib/team.py for definitions)."""

    group_by: GroupBy
    scope_id: str = Field(description="'*' = over everyone; else the manager whose team it covers.")
    group_key: str = Field(description="User id (csm, manager), segment, or '*' (total).")
    label: str | None
    accounts: int = Field(description="Customers in the group on the day.")
    arr_total: float
    open_insights: int
    open_high: int
    open_medium: int
    open_low: int
    open_by_category: dict[str, dict[str, int]] = Field(
        description="{category: {priority: open insights}}."
    )
    raised_7d: int = Field(description="Insights raised in the 7 days ending on the day.")
    risk_accounts: int
    arr_at_risk: float = Field(
        description="Sum over accounts with an open risk insight (risk category, usage_drop, "
        "going_dark) of ARR x the highest score among those insights."
    )
    arr_with_open_risk: float = Field(description="The same ARR, unweighted.")
    opportunity_accounts: int
    expansion_arr: float = Field(description="ARR of accounts with an open opportunity insight.")
    acted: int = Field(description="Insights acted on in the trailing 28 days.")
    relevant: int
    actioned: int
    relevance_rate: float | None = Field(description="relevant / acted (null: nothing acted on).")
    action_rate: float | None = Field(description="actioned / acted (null: nothing acted on).")
    actions_timed: int
    median_hours_to_action: float | None = Field(
        description="Median hours from created_at to actioned_at, trailing 28 days."
    )
    open_insights_prev: int = Field(description="Open insights 7 days earlier.")
    arr_at_risk_prev: float = Field(description="ARR at risk 7 days earlier.")
    open_insights_change: int = Field(description="Week over week: open_insights - prev.")
    arr_at_risk_change: float = Field(description="Week over week: arr_at_risk - prev.")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RollupOut":
        cells = json.loads(row.get("open_by_category") or "{}")
        fields = {k: v for k, v in row.items() if k in cls.model_fields}
        fields["open_by_category"] = cells if isinstance(cells, dict) else {}
        return cls(
            **fields,
            open_insights_change=int(row["open_insights"]) - int(row["open_insights_prev"]),
            arr_at_risk_change=round(float(row["arr_at_risk"]) - float(row["arr_at_risk_prev"]), 2),
        )


class RollupsOut(BaseModel):
    """The rows of one grouping the viewer may see, on the latest rollup day on or before
    `date` (null when no rollup was computed yet)."""

    date: date | None
    group_by: GroupBy
    scope_id: str
    rows: list[RollupOut]


class RollupPoint(BaseModel):
    """One day of a rollup row's history."""

    date: date
    open_insights: int
    open_high: int
    arr_at_risk: float
    expansion_arr: float
    raised_7d: int


class RollupHistoryOut(BaseModel):
    """The daily history of the viewer's team total (or of the team of `scope`)."""

    group_by: GroupBy
    group_key: str
    points: list[RollupPoint]


# ---------------------------------------------------------------------------- scope


@dataclass(frozen=True)
class RollupQuery:
    """What to ask the store for one grouping: rows of `group_by` with keys in `keys` (None =
    all) and scope `scope_id` (None = any)."""

    group_by: str
    keys: list[str] | None
    scope_id: str | None


def _require_team_view(viewer: Viewer) -> None:
    if not viewer.manages:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the team view is for managers and leaders")


def _scope_team(store: InsightStore, viewer: Viewer, scope: str | None) -> list[str] | None:
    """The user ids of the team being looked at (None = everyone, a leader without a scope);
    404 for a scope outside the viewer's team."""
    if not scope:
        return None if viewer.sees_all else list(viewer.owner_ids or ())
    if not viewer.sees_all and scope not in (viewer.owner_ids or ()):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such team")
    team = store.team_user_ids(scope)
    if not team:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such team")
    return team


def rollup_query(
    store: InsightStore, viewer: Viewer, group_by: str, scope: str | None = None
) -> RollupQuery:
    """The rows `viewer` may see of `group_by`, within `scope` (a manager's team) when given."""
    _require_team_view(viewer)
    scope = scope or None
    team = _scope_team(store, viewer, scope)
    owner = scope or (None if viewer.sees_all else viewer.user_id)
    if group_by in ("csm", "manager"):
        return RollupQuery(group_by, team, EVERYONE)
    if group_by == "segment":
        return RollupQuery("segment", None, owner or EVERYONE)
    if owner is None:
        return RollupQuery("total", [EVERYONE], EVERYONE)
    return RollupQuery("manager", [owner], EVERYONE)


def visible_rollups(
    store: InsightStore,
    viewer: Viewer,
    group_by: str,
    *,
    day: date | None = None,
    scope: str | None = None,
) -> RollupsOut:
    query = rollup_query(store, viewer, group_by, scope)
    frame = store.team_rollups(query.group_by, day=day, keys=query.keys, scope_id=query.scope_id)
    rows = [RollupOut.from_row(r) for r in frame.iter_rows(named=True)]
    if group_by == "total":
        rows = [r.model_copy(update={"group_by": "total"}) for r in rows]
    rows.sort(key=lambda r: (-r.arr_at_risk, -r.open_insights, r.label or r.group_key))
    return RollupsOut(
        date=frame["rollup_date"][0] if frame.height else None,
        group_by=group_by,  # type: ignore[arg-type]
        scope_id=query.scope_id or EVERYONE,
        rows=rows,
    )


def rollup_history(
    store: InsightStore, viewer: Viewer, first: date, last: date, scope: str | None = None
) -> RollupHistoryOut:
    query = rollup_query(store, viewer, "total", scope)
    key = (query.keys or [EVERYONE])[0]
    frame = store.team_rollup_history(query.group_by, EVERYONE, key, first, last)
    points = [
        RollupPoint(date=r["rollup_date"], **{k: v for k, v in r.items() if k != "rollup_date"})
        for r in frame.iter_rows(named=True)
    ]
    return RollupHistoryOut(group_by=query.group_by, group_key=key, points=points)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- JSON API

CurrentViewer = Annotated[Viewer, Depends(api_viewer)]
Scope = Annotated[
    PlainText | None,
    Query(max_length=200, description="A manager's user id: only that manager's team."),
]


def _store(request: Request) -> InsightStore:
    return store_of(request)


Store = Annotated[InsightStore, Depends(_store)]


@router.get(
    "/api/team/rollups",
    response_model=RollupsOut,
    responses=FORBIDDEN,
    summary="Team rollups by CSM, manager, segment or in total (managers and leaders)",
)
def team_rollups(
    viewer: CurrentViewer,
    store: Store,
    group_by: GroupBy = "csm",
    day: Annotated[
        IsoDate | None,
        Query(alias="date", description="Latest rollup on or before this day; default newest."),
    ] = None,
    scope: Scope = None,
) -> RollupsOut:
    """Open insights by category and priority, ARR at risk, expansion ARR, relevance and action
    rates, median time to action and week-over-week change, per group, as of the end of the
    rollup day. Managers see their team only (segments and the total over their team), leaders
    everything; CSMs get 403."""
    return visible_rollups(store, viewer, group_by, day=day, scope=scope)


@router.get(
    "/api/team/rollups/history",
    response_model=RollupHistoryOut,
    responses=FORBIDDEN,
    summary="Your team's totals day by day",
)
def team_rollup_history(
    viewer: CurrentViewer,
    store: Store,
    days: Annotated[int, Query(ge=1, le=366)] = 90,
    day: Annotated[IsoDate | None, Query(alias="to", description="Last day; default today")] = None,
    scope: Scope = None,
) -> RollupHistoryOut:
    """Open insights, high-priority ones, ARR at risk and expansion ARR per day: the team total
    of a manager (or of `scope`), everyone's for a leader."""
    last = day or datetime.now(UTC).date()
    return rollup_history(store, viewer, last - timedelta(days=days - 1), last, scope)


# ---------------------------------------------------------------------------- charts

CHART_W, CHART_H = 560.0, 170.0
PAD_L, PAD_R, PAD_T, PAD_B = 44.0, 12.0, 12.0, 24.0


@dataclass(frozen=True)
class LineChart:
    """Open insights over time: polylines and labelled ticks in a CHART_W x CHART_H box."""

    open_line: str
    high_line: str
    area: str
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    last_open: int
    last_high: int
    first_day: date
    last_day: date
    width: float = CHART_W
    height: float = CHART_H


@dataclass(frozen=True)
class Bar:
    label: str
    risk: float
    expansion: float
    risk_w: float
    expansion_w: float


def line_chart(points: list[RollupPoint]) -> LineChart | None:
    """The geometry of the open-insights chart; None with fewer than two days."""
    if len(points) < 2:
        return None
    top = max(max(p.open_insights for p in points), 1)
    step = _nice_step(top)
    y_max = step * -(-top // step)
    n = len(points)

    def x(i: int) -> float:
        return round(PAD_L + (CHART_W - PAD_L - PAD_R) * i / (n - 1), 1)

    def y(v: float) -> float:
        return round(CHART_H - PAD_B - (CHART_H - PAD_T - PAD_B) * v / y_max, 1)

    def line(values: list[int]) -> str:
        return " ".join(f"{x(i)},{y(v)}" for i, v in enumerate(values))

    opened = [p.open_insights for p in points]
    base = CHART_H - PAD_B
    area = f"{x(0)},{base} {line(opened)} {x(n - 1)},{base}"
    ticks = [(y(v), f"{v:,}") for v in range(0, y_max + 1, step)]
    every = max(1, n // 5)
    x_ticks = [(x(i), f"{points[i].date:%d %b}") for i in range(0, n, every)]
    return LineChart(
        open_line=line(opened),
        high_line=line([p.open_high for p in points]),
        area=area,
        y_ticks=ticks,
        x_ticks=x_ticks,
        last_open=opened[-1],
        last_high=points[-1].open_high,
        first_day=points[0].date,
        last_day=points[-1].date,
    )


def _nice_step(top: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if top / step <= 4:
            return step
    return max(1, top // 4)


def segment_bars(rows: list[RollupOut]) -> list[Bar]:
    """ARR at risk and expansion ARR per segment, widths in % of the largest value."""
    widest = max([1.0, *(max(r.arr_at_risk, r.expansion_arr) for r in rows)])
    return [
        Bar(
            label=r.label or r.group_key,
            risk=r.arr_at_risk,
            expansion=r.expansion_arr,
            risk_w=round(100 * r.arr_at_risk / widest, 1),
            expansion_w=round(100 * r.expansion_arr / widest, 1),
        )
        for r in sorted(rows, key=lambda r: (-r.arr_at_risk, r.group_key))
    ]


# ---------------------------------------------------------------------------- the page


@router.get("/feed/leader", include_in_schema=False)
def leader_page(request: Request, scope: str | None = None) -> Response:
    """Team and strategic insights with the rollups: KPIs with week-over-week change, open
    insights over 90 days, ARR at risk by segment, the table by manager (leaders) or CSM."""
    session = cookie_viewer(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/feed/login?next={target}", status_code=303)
    viewer, token = session
    if not viewer.manages:
        return render(
            "error.html", 403, message="The leader view is for managers and leaders.", viewer=viewer
        )
    store = store_of(request)
    scope = (scope or "")[:200] or None
    try:
        totals = visible_rollups(store, viewer, "total", scope=scope)
        segments = visible_rollups(store, viewer, "segment", scope=scope)
        grouping = "manager" if viewer.sees_all and scope is None else "csm"
        people = visible_rollups(store, viewer, grouping, scope=scope)
        # the leader's own team row is the total above: the table shows the teams under it
        people.rows = [r for r in people.rows if r.group_key != viewer.user_id]
    except HTTPException as exc:
        return render("error.html", exc.status_code, message="No such team.", viewer=viewer)
    today = datetime.now(UTC).date()
    last = totals.date or today
    history = rollup_history(store, viewer, last - timedelta(days=89), last, scope)
    patterns = store.feed(viewer, FeedFilters(category=TEAM_CATEGORY), limit=20)
    users = store.list_users()
    colleagues = [
        u for u in users.iter_rows(named=True) if u["active"] and u["user_id"] != viewer.user_id
    ]
    return render(
        "leader.html",
        viewer=viewer,
        csrf=csrf_token(token),
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        today=today,
        day=totals.date,
        total=totals.rows[0] if totals.rows else None,
        people=people,
        by_team=grouping == "manager",
        scope=scope,
        segments=segments.rows,
        bars=segment_bars(segments.rows),
        trend=line_chart(history.points),
        patterns=[InsightOut.from_row(r) for r in patterns.rows.iter_rows(named=True)],
        pattern_total=patterns.total,
        colleagues=colleagues,
        charts={},
    )

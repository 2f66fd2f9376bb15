"""The web feed: server-rendered pages for CSMs and their managers, over the API's store and rules.

Login is by API token: the login form puts the token in an HttpOnly, SameSite=Strict cookie
(scripts cannot read it; other sites cannot send it). Every form that changes something also
carries an anti-forgery value derived from that token (`lib.tokens.csrf_token`). Pages work
without JavaScript (forms post and redirect back); `static/feed.js` only makes the actions
feel instant. All customer data goes through Jinja autoescaping.

Forms are parsed here (urlencoded only) rather than with FastAPI's `Form`, which would add
python-multipart as a dependency for four small forms.
"""

import hmac
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from insight_pipeline.api.auth import COOKIE, authenticate, cookie_viewer, store_of
from insight_pipeline.api.charts import CHART_TYPES
from insight_pipeline.api.routes import team_summary
from insight_pipeline.api.schemas import InsightOut
from insight_pipeline.lib.access import ANY_INSIGHT, FeedFilters, Viewer
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.lib.tokens import csrf_token

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "feed"
STATIC_DIR = TEMPLATE_DIR / "static"
PAGE_SIZE = 50
MAX_FORM_BYTES = 16_384

CATEGORIES = ("usage", "engagement", "risk", "opportunity", "benchmark", "timing", "team")
PRIORITIES = ("high", "medium", "low")
PERIODS = {"7": "Last 7 days", "30": "Last 30 days", "90": "Last 90 days", "all": "Any time"}
DISMISS_REASONS = {
    "not_relevant": "Not relevant",
    "already_knew": "Already knew",
    "took_action": "Already handled",
}
FEEDBACK_LABELS = {**DISMISS_REASONS, "helpful": "Helpful"}
SNOOZES = {"1": "Until tomorrow", "7": "For a week", "30": "For a month"}
OPPORTUNITY_TYPES = {"usage_spike", "adoption_trend", "feature_discovery", "outperforming"}

#: Feed sections in order; each insight goes to the first that takes it.
GROUPS: list[tuple[str, str, Any]] = [
    ("shared", "Shared with you", lambda i: i.shared is not None),
    ("team", "Across accounts", lambda i: i.category == "team"),
    ("high", "High priority", lambda i: i.priority == "high"),
    ("risks", "Risks", lambda i: i.category == "risk" or i.type == "usage_drop"),
    (
        "opportunities",
        "Opportunities",
        lambda i: i.category == "opportunity" or i.type in OPPORTUNITY_TYPES,
    ),
    ("trends", "Usage and trends", lambda i: i.category in ("usage", "benchmark")),
    ("engagement", "Engagement and timing", lambda i: i.category in ("engagement", "timing")),
    ("other", "Everything else", lambda i: True),
]

env = Environment(
    loader=FileSystemLoader(TEMPLATE_DIR),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _age(day: date | None, today: date | None = None) -> str:
    if day is None:
        return ""
    days = ((today or datetime.now(UTC).date()) - day).days
    if days <= 0:
        return "today"
    if days == 1:
        return "yesterday"
    if days < 14:
        return f"{days} days ago"
    if days < 60:
        return f"{days // 7} weeks ago"
    return f"{days // 30} months ago"


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 100 or value == int(value):
            return f"{value:,.0f}"
        return f"{value:,.1f}"
    return str(value)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _label(value: str | None) -> str:
    return (value or "").replace("_", " ")


env.filters.update(age=_age, number=_number, percent=_percent, label=_label)
env.globals.update(
    CATEGORIES=CATEGORIES,
    PRIORITIES=PRIORITIES,
    PERIODS=PERIODS,
    DISMISS_REASONS=DISMISS_REASONS,
    FEEDBACK_LABELS=FEEDBACK_LABELS,
    SNOOZES=SNOOZES,
)

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

router = APIRouter(include_in_schema=False)


def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page from templates/feed/ (autoescaped)."""
    html = env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code)


async def form_data(request: Request) -> dict[str, list[str]]:
    """The urlencoded body of a feed form (bounded in size)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)


Form = Annotated[dict[str, list[str]], Depends(form_data)]


def _first(form: dict[str, list[str]], key: str) -> str | None:
    values = form.get(key)
    return values[0] if values else None


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _safe_next(value: str | None, default: str = "/feed") -> str:
    """Redirect targets stay inside the feed (no open redirect)."""
    if value and value.startswith("/feed") and "//" not in value and "\\" not in value:
        return value
    return default


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/feed/login?next={quote(target)}", status_code=303)


def _refuse(request: Request, status_code: int, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"ok": False, "error": message}, status_code=status_code)
    return render("error.html", status_code, message=message, viewer=None)


def _session_for_post(request: Request, form: dict[str, list[str]]) -> Viewer | Response:
    """The caller of a state-changing form, after the anti-forgery check."""
    session = cookie_viewer(request)
    if session is None:
        return _refuse(request, 401, "Your session has ended: sign in again.")
    viewer, token = session
    if not _same(_first(form, "csrf") or "", csrf_token(token)):
        return _refuse(request, 403, "This form has expired: reload the page and try again.")
    return viewer


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _insight_or_none(store: InsightStore, viewer: Viewer, insight_id: str) -> InsightOut | None:
    try:
        key = str(uuid.UUID(insight_id))
    except ValueError:
        return None
    page = store.feed(viewer, FeedFilters(insight_id=key, **ANY_INSIGHT), limit=1)
    return InsightOut.from_row(page.rows.row(0, named=True)) if page.rows.height else None


def _page_context(request: Request, viewer: Viewer, token: str) -> dict[str, Any]:
    return {
        "viewer": viewer,
        "csrf": csrf_token(token),
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "today": datetime.now(UTC).date(),
    }


def _charts(request: Request, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return request.app.state.charts.charts(rows)


def _colleagues(store: InsightStore, viewer: Viewer) -> list[dict[str, Any]]:
    users = store.list_users()
    return [
        u for u in users.iter_rows(named=True) if u["active"] and u["user_id"] != viewer.user_id
    ]


# ------------------------------------------------------------------------------------ pages


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/feed", status_code=303)


@router.get("/feed/login")
def login_page(request: Request, next: str | None = None) -> Response:
    if cookie_viewer(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render("login.html", next=_safe_next(next), error=None, viewer=None)


@router.post("/feed/login")
def login(request: Request, form: Form) -> Response:
    token = (_first(form, "token") or "").strip()
    target = _safe_next(_first(form, "next"))
    viewer = authenticate(store_of(request), token)
    if viewer is None:
        return render("login.html", 401, next=target, error="That token is not valid.", viewer=None)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/feed/logout")
def logout() -> Response:
    response = RedirectResponse("/feed/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/feed")
def feed_page(
    request: Request,
    category: str | None = None,
    priority: str | None = None,
    period: str = "all",
    page: int = 1,
) -> Response:
    session = cookie_viewer(request)
    if session is None:
        return _login_redirect(request)
    viewer, token = session
    store = store_of(request)
    category = category if category in CATEGORIES else None
    priority = priority if priority in PRIORITIES else None
    period = period if period in PERIODS else "all"
    page = max(1, min(page, 1000))
    date_from = None
    if period != "all":
        date_from = datetime.now(UTC).date() - timedelta(days=int(period))
    result = store.feed(
        viewer,
        FeedFilters(category=category, priority=priority, date_from=date_from),
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    frequency, weekday = store.digest_preference(viewer.user_id)
    rows = list(result.rows.iter_rows(named=True))
    insights = [InsightOut.from_row(r) for r in rows]
    groups: list[dict[str, Any]] = []
    taken: set[str] = set()
    for key, title, accepts in GROUPS:
        members = [i for i in insights if i.id not in taken and accepts(i)]
        taken.update(i.id for i in members)
        if members:
            groups.append({"key": key, "title": title, "insights": members})
    return render(
        "feed.html",
        **_page_context(request, viewer, token),
        groups=groups,
        total=result.total,
        unread=result.unread,
        shown=len(insights),
        page=page,
        pages=max(1, -(-result.total // PAGE_SIZE)),
        filters={"category": category, "priority": priority, "period": period},
        charts=_charts(request, rows),
        colleagues=_colleagues(store, viewer),
        digest={"frequency": frequency, "weekday": weekday},
        WEEKDAYS=WEEKDAYS,
    )


@router.get("/feed/insights/{insight_id}")
def insight_page(request: Request, insight_id: str) -> Response:
    session = cookie_viewer(request)
    if session is None:
        return _login_redirect(request)
    viewer, token = session
    store = store_of(request)
    insight = _insight_or_none(store, viewer, insight_id)
    if insight is None:
        return render("error.html", 404, message="No such insight.", viewer=viewer)
    store.mark_viewed(insight.id, viewer.user_id)
    page = store.feed(viewer, FeedFilters(insight_id=insight.id, **ANY_INSIGHT), limit=1)
    rows = list(page.rows.iter_rows(named=True))
    return render(
        "insight.html",
        **_page_context(request, viewer, token),
        insight=InsightOut.from_row(rows[0]),
        charts=_charts(request, rows),
        colleagues=_colleagues(store, viewer),
    )


@router.get("/feed/accounts/{customer_id}")
def account_page(request: Request, customer_id: str) -> Response:
    session = cookie_viewer(request)
    if session is None:
        return _login_redirect(request)
    viewer, token = session
    store = store_of(request)
    if "\x00" in customer_id or len(customer_id) > 200:
        return render("error.html", 404, message="No insights for that account.", viewer=viewer)
    page = store.feed(viewer, FeedFilters(customer_id=customer_id, **ANY_INSIGHT), limit=500)
    if page.total == 0:
        return render("error.html", 404, message="No insights for that account.", viewer=viewer)
    rows = page.rows.sort(["partition_date", "score"], descending=True)
    dicts = list(rows.iter_rows(named=True))
    insights = [InsightOut.from_row(r) for r in dicts]
    charted = [r for r in dicts if r["type"] in CHART_TYPES][:8]
    return render(
        "account.html",
        **_page_context(request, viewer, token),
        customer_id=customer_id,
        customer_name=insights[0].customer_name or customer_id,
        insights=insights,
        total=page.total,
        charts=_charts(request, charted),
        colleagues=_colleagues(store, viewer),
    )


@router.get("/feed/team")
def team_page(request: Request, period: str = "30") -> Response:
    session = cookie_viewer(request)
    if session is None:
        return _login_redirect(request)
    viewer, token = session
    if not viewer.manages:
        return render(
            "error.html", 403, message="The team view is for managers and leaders.", viewer=viewer
        )
    period = period if period in PERIODS and period != "all" else "30"
    today = datetime.now(UTC).date()
    store = store_of(request)
    team = team_summary(store, viewer, today - timedelta(days=int(period)), today, top=5)
    top = store.feed(viewer, FeedFilters(), limit=5)
    return render(
        "team.html",
        **_page_context(request, viewer, token),
        team=team,
        period=period,
        charts=_charts(request, list(top.rows.iter_rows(named=True))),
        colleagues=_colleagues(store, viewer),
    )


# ------------------------------------------------------------------------------------ forms


@router.post("/feed/insights/{insight_id}/action")
def action_form(request: Request, insight_id: str, form: Form) -> Response:
    viewer = _session_for_post(request, form)
    if isinstance(viewer, Response):
        return viewer
    store = store_of(request)
    insight = _insight_or_none(store, viewer, insight_id)
    if insight is None:
        return _refuse(request, 404, "No such insight.")
    action = _first(form, "action") or ""
    feedback = _first(form, "feedback") or None
    snooze_until = None
    if action == "snooze":
        days = _first(form, "snooze_days") or ""
        if days not in SNOOZES:
            return _refuse(request, 422, "Choose how long to snooze.")
        snooze_until = datetime.now(UTC) + timedelta(days=int(days))
    try:
        store.record_action(insight.id, viewer.user_id, action, feedback, snooze_until)
    except ValueError as exc:
        return _refuse(request, 422, str(exc))
    return _after_change(request, viewer, form)


@router.post("/feed/insights/{insight_id}/share")
def share_form(request: Request, insight_id: str, form: Form) -> Response:
    viewer = _session_for_post(request, form)
    if isinstance(viewer, Response):
        return viewer
    store = store_of(request)
    insight = _insight_or_none(store, viewer, insight_id)
    if insight is None:
        return _refuse(request, 404, "No such insight.")
    recipients = [u for u in form.get("user_id", []) if u and "\x00" not in u][:50]
    if not recipients:
        return _refuse(request, 422, "Choose who to share it with.")
    note = (_first(form, "note") or "").replace("\x00", "").strip()[:1000] or None
    try:
        store.share_insight(insight.id, viewer.user_id, recipients, note)
    except ValueError as exc:
        return _refuse(request, 422, str(exc))
    return _after_change(request, viewer, form, keep=True)


@router.post("/feed/digest")
def digest_form(request: Request, form: Form) -> Response:
    """The viewer's own digest frequency: daily, weekly on the chosen weekday, or off."""
    viewer = _session_for_post(request, form)
    if isinstance(viewer, Response):
        return viewer
    frequency = _first(form, "frequency") or ""
    weekday = None
    if frequency == "weekly":  # the weekday field is always sent; it counts only for weekly
        day = _first(form, "weekday") or ""
        if not (day.isascii() and day.isdigit()):
            return _refuse(request, 422, "Choose the weekday a weekly digest arrives on.")
        weekday = int(day)
    try:
        store_of(request).set_digest_preference(viewer.user_id, frequency, weekday)
    except ValueError as exc:
        return _refuse(request, 422, str(exc))
    return _after_change(request, viewer, form)


@router.post("/feed/mark-all-read")
def mark_all_read_form(request: Request, form: Form) -> Response:
    viewer = _session_for_post(request, form)
    if isinstance(viewer, Response):
        return viewer
    store_of(request).mark_all_read(viewer.user_id)
    return _after_change(request, viewer, form)


def _after_change(
    request: Request, viewer: Viewer, form: dict[str, list[str]], keep: bool = False
) -> Response:
    if _wants_json(request):
        counts = store_of(request).feed(viewer, FeedFilters(), limit=1)
        body = {"ok": True, "keep": keep, "total": counts.total, "unread": counts.unread}
        return JSONResponse(body)
    return RedirectResponse(_safe_next(_first(form, "next")), status_code=303)

"""The FastAPI application: the JSON API (/api), the web feed (/feed) and its static files.

A factory rather than a module-level app, so tests, the CLI and the load benchmark each serve
their own store; `insight-pipeline serve` uses `app_from_env` (INSIGHTS_DATABASE_URL,
INSIGHTS_SOURCE). The schema is migrated when the app is built, as the pipeline's store
resource does, so a fresh database serves straight away.
"""

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from insight_pipeline.api.charts import ChartSource
from insight_pipeline.api.feed import STATIC_DIR
from insight_pipeline.api.feed import router as feed_router
from insight_pipeline.api.routes import health_router
from insight_pipeline.api.routes import router as api_router
from insight_pipeline.api.schemas import ErrorOut
from insight_pipeline.api.team import router as team_router
from insight_pipeline.lib.paths import default_database_url, default_source
from insight_pipeline.lib.store import InsightStore

DESCRIPTION = """Daily, ranked, narrated customer-success insights.

Authenticate with `Authorization: Bearer <token>` (`insight-pipeline token create USER_ID`).
A CSM sees their own insights and those shared with them; a manager their team's
(transitively); a leader all. Anything else answers 404 for an id, and is never counted.
"""


STORE_UNAVAILABLE = "the insights store is unavailable; try again shortly"
RETRY_AFTER_SECONDS = 5

#: The 503 of `store_unavailable`, as OpenAPI documents it: added to every operation of the
#: routers whose routes touch the store (authentication alone reads the tokens table).
STORE_UNAVAILABLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorOut,
        "description": "The insights store is unreachable (server down, connection dropped, "
        "DuckDB file locked, connection pool exhausted): a transient condition, retry after "
        "`Retry-After` seconds. Nothing was half-written.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "example": RETRY_AFTER_SECONDS},
            }
        },
    }
}
_log = logging.getLogger(__name__)


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 + Retry-After when the store cannot be reached (server down, connection dropped or
    terminated, DuckDB file locked, pool exhausted): a transient condition the client may retry,
    not a bug (500). Every write is one transaction, so nothing was half-written. The log names
    the error class only: SQLAlchemy's message would carry the statement's parameters."""
    cause = getattr(exc, "orig", None) or exc
    _log.warning(
        "store unavailable for %s %s: %s", request.method, request.url.path, type(cause).__name__
    )
    return JSONResponse(
        {"detail": STORE_UNAVAILABLE},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class ServerTiming:
    """Pure ASGI middleware adding `Server-Timing: app;dur=<ms>` (time spent in the app,
    queueing excluded), so load tests can tell server time from client-side waiting."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - start) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={took:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed_send)


def create_app(
    store_url: str | None = None,
    *,
    store: InsightStore | None = None,
    source: str | None = None,
    migrate: bool = True,
) -> FastAPI:
    """The app over `store` (or a new store for `store_url`, default INSIGHTS_DATABASE_URL).

    `source` (default INSIGHTS_SOURCE) is only read for the feed's usage charts.
    """
    owned = store is None
    insight_store = store or InsightStore(store_url or default_database_url())
    if migrate:
        insight_store.migrate()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            insight_store.dispose()

    app = FastAPI(
        title="insight_pipeline",
        version="1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "insights", "description": "The feed, one insight, actions and shares."},
            {"name": "team", "description": "Rollups for managers and leaders."},
            {"name": "meta", "description": "Health and identity."},
        ],
    )
    app.state.store = insight_store
    app.state.charts = ChartSource(default_source() if source is None else source)
    app.include_router(health_router)
    app.include_router(api_router, responses=STORE_UNAVAILABLE_RESPONSES)
    app.include_router(feed_router)
    app.include_router(team_router, responses=STORE_UNAVAILABLE_RESPONSES)
    app.mount("/feed/static", StaticFiles(directory=STATIC_DIR), name="feed-static")
    for error in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(error, store_unavailable)
    app.add_middleware(ServerTiming)
    return app


def app_from_env() -> FastAPI:
    """The app `insight-pipeline serve` runs (a uvicorn factory, so each worker builds one)."""
    return create_app()

"""A small organisation and its insights, shared by the API, feed and access-control tests.

Reporting lines (manager_id): L1 (leader) <- M1 <- M3, L1 <- M2; CSMs c1, c2 -> M1, c3 -> M3,
c4 -> M2. So M1's team is {M1, M3, c1, c2, c3} (transitively), M2's is {M2, c4}; L1 sees all.
Insights are stated one per line below with their owner, so each test can say which ones a
viewer must see. Times are relative to now, since the API judges expiry and snoozes at now.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import Engine, create_engine, text

from insight_pipeline.lib.store import InsightStore

XSS_NAME = '<img src=x onerror="window.__xss=1"> Bobby & Tables <b>Ltd</b>'

USERS = pl.DataFrame(
    {
        "user_id": ["L1", "M1", "M2", "M3", "c1", "c2", "c3", "c4"],
        "name": [
            "Lee Leader",
            "Mia Manager",
            "Max Manager",
            "Mo Submanager",
            "Cara One",
            "Cody Two",
            "Cleo Three",
            "Cyd Four",
        ],
        "email": [f"{u}@example.com" for u in ["l1", "m1", "m2", "m3", "c1", "c2", "c3", "c4"]],
        "role": ["leader", "manager", "manager", "manager", "csm", "csm", "csm", "csm"],
        "manager_id": [None, "L1", "L1", "M1", "M1", "M1", "M3", "M2"],
    }
)

TEAM = {
    "L1": None,
    "M1": {"M1", "M3", "c1", "c2", "c3"},
    "M2": {"M2", "c4"},
    "M3": {"M3", "c3"},
    "c1": {"c1"},
    "c2": {"c2"},
    "c3": {"c3"},
    "c4": {"c4"},
}


@dataclass(frozen=True)
class Spec:
    key: str
    owner: str
    customer_id: str
    customer_name: str
    category: str
    type: str
    priority: str
    score: float
    age_days: int
    expired: bool = False
    echo_of: str | None = None


SPECS = [
    Spec("a", "c1", "A1", "Acme Health", "usage", "usage_drop", "high", 0.90, 2),
    Spec("b", "c1", "A1", "Acme Health", "usage", "adoption_trend", "medium", 0.60, 5),
    Spec(
        "c",
        "c1",
        "A2",
        "Apex Retail",
        "risk",
        "declining_usage",
        "low",
        0.30,
        8,
        echo_of="usage_drop <b>dau</b>",
    ),
    Spec("d", "c1", "A2", "Apex Retail", "usage", "usage_spike", "medium", 0.50, 20, True),
    Spec("e", "c2", "B1", "Beta Bank", "usage", "usage_drop", "high", 0.80, 1),
    Spec("f", "c2", "B2", "Bolt Energy", "risk", "champion_left", "high", 0.95, 3),
    Spec("g", "c3", "C1", "Cobalt Labs", "timing", "qbr_due", "medium", 0.55, 4),
    Spec("h", "c4", "D1", XSS_NAME, "opportunity", "referral_candidate", "low", 0.20, 6),
    Spec("i", "c4", "D1", XSS_NAME, "usage", "usage_drop", "high", 0.70, 2),
]
BY_KEY = {s.key: s for s in SPECS}


def insight_id(key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"api-test|{key}"))


ID = {s.key: insight_id(s.key) for s in SPECS}
KEY_OF = {v: k for k, v in ID.items()}


def visible_keys(user_id: str, *, include_expired: bool = False) -> set[str]:
    """What the access rules say `user_id` sees (before any shares)."""
    team = TEAM[user_id]
    return {
        s.key
        for s in SPECS
        if (team is None or s.owner in team) and (include_expired or not s.expired)
    }


def insights_frame(today: date | None = None, now: datetime | None = None) -> pl.DataFrame:
    today = today or datetime.now(UTC).date()
    now = now or datetime.now(UTC)
    rows = []
    for s in SPECS:
        day = today - timedelta(days=s.age_days)
        rows.append(
            {
                "id": ID[s.key],
                "customer_id": s.customer_id,
                "customer_name": s.customer_name,
                "user_id": s.owner,
                "partition_date": day,
                "last_seen_date": day,
                "category": s.category,
                "type": s.type,
                "subject": "dau",
                "priority": s.priority,
                "score": s.score,
                "title": f"{s.type} at {s.customer_name} ({s.key})",
                "summary": f"Summary of {s.key}.",
                "evidence": '[{"metric": "dau", "value": 12.0, "comparison": "baseline 20", '
                '"source": "usage_daily"}]',
                "so_what": "It matters.",
                "recommended_action": '{"type": "Schedule a meeting", "description": '
                '"Call them.", "quick_action_id": "schedule_meeting"}',
                "fingerprint": f"{s.customer_id}|{s.type}|{s.key}",
                "score_parts": json.dumps({"severity": 0.5, "echo_of": s.echo_of}),
                "expires_at": now - timedelta(days=1) if s.expired else now + timedelta(days=20),
            }
        )
    return pl.DataFrame(rows).with_columns(pl.col("expires_at").cast(pl.Datetime("us", "UTC")))


def seed(store: InsightStore) -> None:
    """Directory and insights into a migrated store."""
    store.sync_users(USERS)
    store.write_insights(insights_frame(), pl.DataFrame())


def tokens(store: InsightStore) -> dict[str, str]:
    """A bearer token for every user."""
    return {u: store.create_token(u)[1] for u in USERS["user_id"]}


def empty_database(kind: str, request: Any, tmp_path_factory: Any) -> str:
    """Like conftest's `store_url`, for module-scoped fixtures: a new DuckDB file, or the
    session's PostgreSQL database with its public schema reset."""
    if kind == "duckdb":
        return f"duckdb:///{tmp_path_factory.mktemp('api') / 'insights.duckdb'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("drop schema public cascade"))
            conn.execute(text("create schema public"))
    finally:
        engine.dispose()
    return url


def wait_for_a_lock_wait(engine: Engine) -> None:
    """Return once some session of `engine`'s database waits for a row lock (10 s at most)."""
    deadline = time.monotonic() + 60  # a wait, not a timing: generous for a loaded machine
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "select count(*) from pg_stat_activity where datname = current_database() "
                    "and wait_event_type = 'Lock'"
                )
            ).scalar()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("no session ever waited for a row lock")

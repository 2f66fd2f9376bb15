"""Schema evolution on DuckDB and the real PostgreSQL: an old database upgrades without loss.

A store is built "old" by applying only the first migrations of the store's own list (<= 001,
or <= 002), rows are written in that schema, then `migrate()` brings it to the current version.
Every row must be kept column for column, later columns get their defaults, schema_version
lists each migration exactly once and in order, and the upgraded store works (a re-detection
keeps the user's columns, tokens still authenticate, actions are recorded). Also: a migration
that fails half-way leaves no trace, and two migrators racing on one fresh database apply each
migration once.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from sqlalchemy import text

import insight_pipeline.lib.store as store_module
from insight_pipeline.api.auth import authenticate
from insight_pipeline.lib.sql_files import migrations
from insight_pipeline.lib.store import InsightStore

pytestmark = pytest.mark.parametrize("store_url", ["duckdb", "postgres"], indirect=True)

COLUMNS_001 = (
    "id, customer_id, customer_name, user_id, partition_date, last_seen_date, category, type, "
    "subject, priority, score, title, summary, evidence, so_what, recommended_action, "
    "fingerprint, score_parts, status, feedback, snoozed_until, expires_at, created_at, "
    "viewed_at, actioned_at"
)
DAY = date(2025, 6, 2)
AT = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)


def old_store(url: str, upto: int, monkeypatch: pytest.MonkeyPatch) -> InsightStore:
    """A store whose database has only the migrations numbered <= `upto` applied."""
    store = InsightStore(url)
    full = migrations
    monkeypatch.setattr(store_module, "migrations", lambda d: [m for m in full(d) if m[0] <= upto])
    applied = store.migrate()
    monkeypatch.undo()
    assert applied == [name for v, name, _ in migrations(store.dialect) if v <= upto]
    return store


def insight_rows() -> list[dict[str, Any]]:
    """Three insights as a 001-era sink and its users left them: new, dismissed, snoozed."""
    rows = []
    for i, (status, feedback) in enumerate(
        [("new", None), ("dismissed", "not_relevant"), ("snoozed", "already_knew")]
    ):
        key = f"old|c{i}|usage_drop|dau"
        rows.append(
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
                "customer_id": f"c{i}",
                "customer_name": f"Old Customer {i} <b>&</b>",
                "user_id": "u1",
                "partition_date": DAY,
                "last_seen_date": DAY + timedelta(days=i),
                "category": "usage",
                "type": "usage_drop",
                "subject": "dau",
                "priority": ("high", "medium", "low")[i],
                "score": 0.9 - i / 10,
                "title": f"Usage fell at customer {i}",
                "summary": "DAU down 40%.",
                "evidence": '[{"metric": "dau", "value": 12, "comparison": "-40%"}]',
                "so_what": None if i == 2 else "It matters.",
                "recommended_action": '{"type": "call", "description": "Call"}',
                "fingerprint": key,
                "score_parts": '{"severity": 0.5}',
                "status": status,
                "feedback": feedback,
                "snoozed_until": AT + timedelta(days=30) if status == "snoozed" else None,
                "expires_at": AT + timedelta(days=60),
                "created_at": AT,
                "viewed_at": AT if status != "new" else None,
                "actioned_at": None,
            }
        )
    return rows


def insert_old_insights(store: InsightStore) -> None:
    """Rows written with the old schema's columns only (test data, so plain SQL)."""
    json_type = "jsonb" if store.dialect == "postgresql" else "json"
    values = ", ".join(
        f"cast(:{c} as {json_type})"
        if c in ("evidence", "recommended_action", "score_parts")
        else "cast(:id as uuid)"
        if c == "id"
        else f":{c}"
        for c in COLUMNS_001.split(", ")
    )
    with store._engine.begin() as conn:
        for row in insight_rows():
            conn.execute(text(f"insert into insights ({COLUMNS_001}) values ({values})"), row)


def old_columns(store: InsightStore) -> list[tuple[Any, ...]]:
    """The 001 columns of every insight, JSON compared as parsed values."""
    import json

    with store._engine.connect() as conn:
        rows = conn.execute(text(f"select {COLUMNS_001} from insights order by id")).all()
    out = []
    for row in rows:
        values = list(row)
        for i, name in enumerate(COLUMNS_001.split(", ")):
            if name in ("evidence", "recommended_action", "score_parts") and values[i] is not None:
                values[i] = json.loads(values[i]) if isinstance(values[i], str) else values[i]
            if name == "id":
                values[i] = str(values[i])
        out.append(tuple(values))
    return out


def assert_versions_once_in_order(store: InsightStore) -> None:
    expected = [(v, n) for v, n, _ in migrations(store.dialect)]
    got = [(v, n) for v, n, _ in store.schema_versions()]
    assert got == expected
    assert len({v for v, _ in got}) == len(got)


@pytest.mark.parametrize("upto", [1, 2])
def test_an_old_store_upgrades_keeping_every_row(
    store_url: str, upto: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = old_store(store_url, upto, monkeypatch)
    try:
        insert_old_insights(store)
        token = None
        if upto >= 2:
            users = pl.DataFrame(
                {
                    "user_id": ["u1", "m1"],
                    "name": ["Una User", "Max Manager"],
                    "email": ["u1@example.com", "m1@example.com"],
                    "role": ["csm", "manager"],
                    "manager_id": ["m1", None],
                }
            )
            store.sync_users(users)
            token = store.create_token("u1", label="old")[1]
            first = insight_rows()[0]["id"]
            store.record_action(first, "u1", "actioned", "took_action", at=AT)
        before = old_columns(store)
        feedback_before = store.feedback_events() if upto >= 2 else None

        applied = store.migrate()
        assert applied == [n for v, n, _ in migrations(store.dialect) if v > upto]
        assert store.migrate() == []
        assert_versions_once_in_order(store)

        assert old_columns(store) == before  # every row, every old column, unchanged
        table = store.get_insights().sort("id")
        assert table.height == 3
        with store._engine.connect() as conn:  # 005 added `pushed`: old rows count as pushed
            pushed = conn.execute(text("select pushed from insights")).scalars().all()
        assert pushed == [True, True, True]
        if upto >= 2:
            assert store.feedback_events().equals(feedback_before)
            viewer = authenticate(store, token)
            assert viewer is not None and viewer.user_id == "u1"
        # the upgraded store works: a re-detection keeps the user's columns; actions append
        statuses = dict(zip(table["id"], table["status"], strict=True))
        again = table.select(
            [c for c in store_module.UPSERT_SCHEMA if c in table.columns]
        ).with_columns(last_seen_date=pl.lit(DAY + timedelta(days=9)), title=pl.lit("Again"))
        assert store.write_insights(again, pl.DataFrame())["updated"] == 3
        after = store.get_insights().sort("id")
        assert dict(zip(after["id"], after["status"], strict=True)) == statuses
        assert set(after["title"]) == {"Again"}
        store.record_action(after["id"][0], "u1", "dismiss", "helpful")
        assert store.feedback_events().height == (2 if upto >= 2 else 1)
    finally:
        store.dispose()


def test_a_migration_failing_half_way_leaves_no_trace(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InsightStore(store_url)
    try:
        store.migrate()
        insert_old_insights(store)
        before = old_columns(store)
        full = migrations(store.dialect)
        broken = (
            99,
            "099_broken",
            [
                "create table half_done (x integer)",
                "alter table insights add column half_done integer",
                "this is not sql",
            ],
        )
        monkeypatch.setattr(store_module, "migrations", lambda d: [*full, broken])
        with pytest.raises(Exception, match=r"(?i)syntax"):
            store.migrate()
        monkeypatch.undo()
        assert_versions_once_in_order(store)  # 099 not recorded
        assert old_columns(store) == before
        with store._engine.connect() as conn:
            tables = conn.execute(
                text("select table_name from information_schema.tables where table_name = :t"),
                {"t": "half_done"},
            ).all()
            columns = conn.execute(
                text(
                    "select column_name from information_schema.columns "
                    "where table_name = 'insights' and column_name = 'half_done'"
                )
            ).all()
        assert tables == [] and columns == []
        assert store.migrate() == []
    finally:
        store.dispose()


def test_two_migrators_racing_on_a_fresh_database_apply_each_migration_once(
    store_url: str,
) -> None:
    stores = [InsightStore(store_url) for _ in range(2)]
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def migrate(store: InsightStore) -> None:
        start.wait()
        try:
            results.append(store.migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        names = [n for _, n, _ in migrations(stores[0].dialect)]
        assert sorted(results[0] + results[1]) == sorted(names)  # each applied by exactly one
        assert_versions_once_in_order(stores[0])
    finally:
        for s in stores:
            s.dispose()


FIRST_FORM_OF_002 = [  # the feed indexes of 002 as first written (changed before release)
    "create index insights_owner_expiry_idx on insights (user_id, expires_at)",
    "create index insights_expiry_idx on insights (expires_at)",
]


def _indexes(store: InsightStore) -> set[str]:
    with store._engine.connect() as conn:
        rows = conn.execute(text("select indexname from pg_indexes where tablename = 'insights'"))
        return {r[0] for r in rows}


def test_a_store_that_ran_the_first_form_of_002_gets_the_current_feed_indexes(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """002's indexes were changed after it was written; 007 converges both forms."""
    if not store_url.startswith("postgresql"):
        pytest.skip("DuckDB keeps no secondary indexes")
    store = old_store(store_url, 2, monkeypatch)
    try:
        with store._engine.begin() as conn:  # rewind to the first form of 002
            conn.execute(text("drop index insights_open_owner_idx"))
            conn.execute(text("drop index insights_open_idx"))
            for statement in FIRST_FORM_OF_002:
                conn.execute(text(statement))
        insert_old_insights(store)
        before = old_columns(store)
        assert "insights_owner_expiry_idx" in _indexes(store)
        store.migrate()
        indexes = _indexes(store)
        assert {"insights_open_owner_idx", "insights_open_idx"} <= indexes
        assert not {"insights_owner_expiry_idx", "insights_expiry_idx"} & indexes
        assert old_columns(store) == before and len(before) == 3
        assert_versions_once_in_order(store)
    finally:
        store.dispose()

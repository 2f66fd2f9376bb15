"""Tests of the Store (`insight_pipeline.lib.store`) and its SQL files, on both backends.

Covers, against a DuckDB file and the real PostgreSQL: idempotent migrations recorded in
schema_version; idempotent upserts; user columns (status, feedback, snooze, stamps) surviving a
re-upsert; episode widening (least partition_date, greatest last_seen_date/expires_at) by upserts
and by extensions; all-or-nothing writes (bad rows, a failure injected after the first
statement, malformed frames) leaving the table exactly as before; the feed's order, filters and
exclusions; a 100k-row bulk upsert; the DuckDB file being free for other processes between
calls. Plus a lint of `sql/` (headers, one statement per file, lowercase, no stray binds).
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sqlalchemy import event, text

from insight_pipeline.lib.sql_files import SQL_DIR, load_sql, migrations, split_statements
from insight_pipeline.lib.store import (
    EPISODE_SCHEMA,
    INSIGHT_SCHEMA,
    ROLLUP_INSIGHT_SCHEMA,
    InsightStore,
    StoreWriteError,
)

D0 = date(2024, 3, 1)
EXPIRES = datetime(2024, 4, 1, tzinfo=UTC)
AS_OF = datetime(2024, 3, 2, 12, tzinfo=UTC)


def insight_id(key: str) -> str:
    """Ids derive from the fingerprint, as the sink's do."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def insights(n: int = 3, **overrides: Any) -> pl.DataFrame:
    """An upserts frame of n valid insights; overrides replace whole columns (value or list)."""
    keys = [f"c{i}|usage_drop|dau" for i in range(n)]
    columns: dict[str, Any] = {
        "id": [insight_id(k) for k in keys],
        "customer_id": [f"c{i}" for i in range(n)],
        "customer_name": [f"Customer {i}" for i in range(n)],
        "user_id": [f"u{i % 2}" for i in range(n)],
        "partition_date": [D0] * n,
        "last_seen_date": [D0] * n,
        "category": ["usage"] * n,
        "type": ["usage_drop"] * n,
        "subject": ["dau"] * n,
        "priority": [("high", "medium", "low")[i % 3] for i in range(n)],
        "score": [round(0.9 - i * 0.01, 4) for i in range(n)],
        "title": [f"Usage fell at customer {i}" for i in range(n)],
        "summary": ["DAU down 40% week over week."] * n,
        "evidence": ['[{"metric": "dau", "value": 12, "comparison": "-40%", "source": "usage"}]']
        * n,
        "so_what": ["Accounts like this churn more often."] * n,
        "recommended_action": ['{"type": "call", "description": "Call the champion"}'] * n,
        "fingerprint": keys,
        "score_parts": ['{"severity": 0.8, "confidence": 0.9}'] * n,
        "expires_at": [EXPIRES] * n,
    }
    for name, value in overrides.items():
        columns[name] = value if isinstance(value, list) else [value] * n
    return pl.DataFrame(columns).with_columns(pl.col("expires_at").cast(pl.Datetime("us", "UTC")))


def extensions(ids: list[str], last_seen: date, expires: datetime | None) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": ids, "last_seen_date": [last_seen] * len(ids), "expires_at": [expires] * len(ids)},
        schema={"id": pl.String, "last_seen_date": pl.Date, "expires_at": pl.Datetime("us", "UTC")},
    )


NO_EXTENSIONS = pl.DataFrame()


def row(store: InsightStore, key: str) -> dict[str, Any]:
    frame = store.get_insights([key])
    assert frame.height == 1, key
    return frame.row(0, named=True)


# --------------------------------------------------------------------------------- schema


def test_migrate_is_idempotent_and_recorded(store_url: str) -> None:
    first = InsightStore(store_url)
    try:
        expected = [(v, n) for v, n, _ in migrations(first.dialect)]
        assert first.migrate() == [n for _, n in expected]
        assert expected[0] == (1, "001_insights")
        assert first.migrate() == []
    finally:
        first.dispose()
    again = InsightStore(store_url)  # the ledger lives in the database, not in the object
    try:
        assert again.migrate() == []
        versions = again.schema_versions()
        assert [(v, n) for v, n, _ in versions] == expected
        assert versions[0][2].tzinfo is not None
        assert again.count_insights() == 0
    finally:
        again.dispose()


# --------------------------------------------------------------------------------- writes


def test_upserting_the_same_frame_twice_changes_nothing(store: InsightStore) -> None:
    frame = insights(5)
    assert store.write_insights(frame, NO_EXTENSIONS) == {
        "inserted": 5,
        "updated": 0,
        "extended": 0,
    }
    before = store.get_insights()
    assert store.write_insights(frame, NO_EXTENSIONS) == {
        "inserted": 0,
        "updated": 5,
        "extended": 0,
    }
    after = store.get_insights()
    assert store.count_insights() == 5
    assert after.equals(before)
    assert after.schema == pl.Schema(INSIGHT_SCHEMA)
    assert set(after["status"]) == {"new"}
    assert after["created_at"].null_count() == 0


def test_reupsert_refreshes_content_widens_episode_and_keeps_user_columns(
    store: InsightStore,
) -> None:
    frame = insights(3, partition_date=D0 + timedelta(days=1), last_seen_date=D0 + timedelta(1))
    store.write_insights(frame, NO_EXTENSIONS)
    a, b, c = frame["id"].to_list()
    snooze = datetime(2024, 3, 10, 9, tzinfo=UTC)
    store.set_status(a, "snoozed", "already_knew", snoozed_until=snooze, at=AS_OF)
    store.set_status(b, "actioned", "took_action", at=AS_OF)
    before = {k: row(store, k) for k in (a, b, c)}

    later = insights(
        3,
        partition_date=[D0, D0 + timedelta(days=5), D0],  # earlier, later, earlier
        last_seen_date=[D0 + timedelta(days=4), D0, D0 + timedelta(days=4)],
        expires_at=[EXPIRES + timedelta(days=3), EXPIRES - timedelta(days=3), EXPIRES],
        title="New title",
        priority="low",
        score=0.25,
        user_id="u9",
        evidence='[{"metric": "dau", "value": 3}]',
        so_what=None,
    )
    assert store.write_insights(later, NO_EXTENSIONS)["updated"] == 3

    after = {k: row(store, k) for k in (a, b, c)}
    for k in (a, b, c):
        for user_column in (
            "status",
            "feedback",
            "snoozed_until",
            "viewed_at",
            "actioned_at",
            "created_at",
        ):
            assert after[k][user_column] == before[k][user_column], (k, user_column)
        assert after[k]["title"] == "New title"
        assert after[k]["priority"] == "low"
        assert after[k]["score"] == 0.25
        assert after[k]["user_id"] == "u9"
        assert after[k]["so_what"] is None
        assert '"value": 3' in after[k]["evidence"]
    assert after[a]["status"] == "snoozed"
    assert after[a]["snoozed_until"] == snooze
    assert after[b]["actioned_at"] == AS_OF
    # least(partition_date), greatest(last_seen_date), greatest(expires_at)
    assert after[a]["partition_date"] == D0
    assert after[b]["partition_date"] == D0 + timedelta(days=1)
    assert after[a]["last_seen_date"] == D0 + timedelta(days=4)
    assert after[b]["last_seen_date"] == D0 + timedelta(days=1)
    assert after[a]["expires_at"] == EXPIRES + timedelta(days=3)
    assert after[b]["expires_at"] == EXPIRES


def test_new_ids_on_duckdb_are_inserted_as_the_upsert_would_insert_them(
    store: InsightStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write none of whose ids is stored yet goes through `insert_new_insights` on DuckDB
    (the upsert everywhere else, and as soon as one id exists): the same rows as the upsert
    makes, every column (a frame without ranking's columns too, and nulls)."""
    taken: list[str] = []
    for name in ("_insert_new", "_upsert"):
        original = getattr(store, name)

        def spied(conn: Any, name: str = name, original: Any = original) -> None:
            taken.append(name)
            original(conn)

        monkeypatch.setattr(store, name, spied)
    ranked = insights(4, pushed=[True, False, None, True], rank_in_day=[1, None, 3, 2])
    ranked = ranked.with_columns(pl.col("rank_in_day").cast(pl.Int32))
    unranked = insights(6, subject=[None, "dau", "", "x", None, "y"], so_what=None)[4:]

    def table() -> pl.DataFrame:
        with store._engine.connect() as conn:
            ranks = conn.execute(
                text("select cast(id as text), pushed, rank_in_day from insights order by id")
            ).all()
        ranking = pl.DataFrame(ranks, schema=["id", "pushed", "rank_in_day"], orient="row")
        return store.get_insights().drop("created_at").join(ranking, on="id").sort("id")

    assert store.write_insights(ranked, NO_EXTENSIONS)["inserted"] == 4
    assert store.write_insights(unranked, NO_EXTENSIONS)["inserted"] == 2
    new = "_insert_new" if store.dialect == "duckdb" else "_upsert"
    assert taken == [new, new]
    inserted = table()
    assert inserted["pushed"].sum() == 5  # ranked: 2 pushed and 1 undecided; unranked: 2
    assert store.write_insights(insights(5)[3:], NO_EXTENSIONS)["updated"] == 2
    assert taken[-1] == "_upsert"  # some ids stored already
    # the same writes through the upsert, into an empty table
    with store._engine.begin() as conn:
        conn.execute(text("delete from insights"))
    monkeypatch.setattr(store, "_insert_new", store._upsert)
    store.write_insights(ranked, NO_EXTENSIONS)
    store.write_insights(unranked, NO_EXTENSIONS)
    assert inserted.equals(table())


def test_the_duckdb_insert_of_new_ids_is_the_upserts_insert() -> None:
    """`insert_new_insights` is `upsert_insights` up to its conflict clause, to the letter."""
    upsert = load_sql("upsert_insights", "duckdb")
    insert = load_sql("insert_new_insights", "duckdb")
    body = insert[insert.index("insert into insights") :]
    assert upsert[upsert.index("insert into insights") : upsert.index("on conflict")] == (
        body + "\n"
    )


def test_extensions_only_move_dates_later(store: InsightStore) -> None:
    frame = insights(3)
    store.write_insights(frame, NO_EXTENSIONS)
    a, b, c = frame["id"].to_list()
    store.set_status(a, "viewed", at=AS_OF)
    unknown = insight_id("nobody")
    ext = pl.concat(
        [
            extensions([a], D0 + timedelta(days=2), EXPIRES + timedelta(days=2)),
            extensions([b], D0 - timedelta(days=2), EXPIRES - timedelta(days=2)),
            extensions([c, unknown], D0 + timedelta(days=1), None),
        ]
    )
    assert store.write_insights(pl.DataFrame(), ext) == {
        "inserted": 0,
        "updated": 0,
        "extended": 3,
    }
    assert store.count_insights() == 3  # an extension never creates a row
    ra, rb, rc = row(store, a), row(store, b), row(store, c)
    assert (ra["last_seen_date"], ra["expires_at"]) == (D0 + timedelta(2), EXPIRES + timedelta(2))
    assert (rb["last_seen_date"], rb["expires_at"]) == (D0, EXPIRES)
    assert (rc["last_seen_date"], rc["expires_at"]) == (D0 + timedelta(days=1), None)
    assert ra["status"] == "viewed" and ra["title"] == frame["title"][0]


def test_upserts_and_extensions_in_one_call(store: InsightStore) -> None:
    old = insights(2)
    store.write_insights(old, NO_EXTENSIONS)
    new = insights(4)[2:]
    ext = extensions(old["id"].to_list(), D0 + timedelta(days=1), EXPIRES + timedelta(days=1))
    assert store.write_insights(new, ext) == {"inserted": 2, "updated": 0, "extended": 2}
    episodes = store.load_episodes(D0 + timedelta(days=1))
    assert episodes.schema == pl.Schema(EPISODE_SCHEMA)
    assert sorted(episodes["id"]) == sorted(old["id"])
    assert store.load_episodes(D0).height == 4


def test_episodes_are_the_stored_rows_in_their_order(store: InsightStore) -> None:
    """`load_episodes` (Arrow on DuckDB, rows on PostgreSQL) gives each row's stored values,
    a missing expiry and a status included, in the statement's order."""
    frame = insights(4)
    store.write_insights(frame, NO_EXTENSIONS)
    a, b, c, _ = frame["id"].to_list()
    store.set_status(b, "viewed", at=AS_OF)
    store.write_insights(pl.DataFrame(), extensions([a], D0 + timedelta(days=1), None))
    store.write_insights(pl.DataFrame(), extensions([c], D0 + timedelta(days=2), EXPIRES))
    stored = (
        store.get_insights()
        .select([c for c in EPISODE_SCHEMA if c != "score_parts"])
        .sort("fingerprint", "last_seen_date", "id")
    )
    episodes = store.load_episodes(D0)
    assert episodes.schema == pl.Schema(EPISODE_SCHEMA)
    assert_frame_equal(episodes.drop("score_parts"), stored, check_exact=True)
    assert episodes["expires_at"].null_count() == 1
    later = store.load_episodes(D0 + timedelta(days=1))
    assert_frame_equal(later.drop("score_parts"), stored.filter(pl.col("id").is_in([a, c])))


def test_rollup_insights_are_the_stored_rows_in_their_order(store: InsightStore) -> None:
    """`rollup_insights` (Arrow on DuckDB, rows on PostgreSQL) gives each counted row's stored
    values, an action stamp and a missing expiry included, ordered by id."""
    frame = insights(5, score=[0.1 + i / 7 for i in range(5)])
    store.write_insights(frame, NO_EXTENSIONS)
    a, b, *_ = frame["id"].to_list()
    store.set_status(a, "actioned", at=AS_OF)
    store.write_insights(pl.DataFrame(), extensions([b], D0 + timedelta(days=1), None))
    stored = (
        store.get_insights()
        .select(list(ROLLUP_INSIGHT_SCHEMA))
        .with_columns(pl.col("score").cast(pl.Float64))
        .sort("id")
    )
    rows = store.rollup_insights(D0, D0 + timedelta(days=3), lookback_days=7)
    assert rows.schema == pl.Schema(ROLLUP_INSIGHT_SCHEMA)
    assert_frame_equal(rows, stored, check_exact=True)
    assert rows["actioned_at"].null_count() == 4 and rows["expires_at"].null_count() == 1


def test_digest_insights_are_the_stored_rows_in_their_order(store: InsightStore) -> None:
    """`digest_insights` (Arrow on DuckDB, rows on PostgreSQL) equals the same statement's rows
    as Python values, ordered by user and id: scores to the bit, a snoozed and a dismissed
    insight left out."""
    frame = insights(6, score=[0.1 + i / 7 for i in range(6)])
    store.write_insights(frame, NO_EXTENSIONS)
    ids = frame["id"].to_list()
    store.set_status(ids[0], "dismissed", at=AS_OF)
    store.set_status(ids[1], "snoozed", snoozed_until=AS_OF + timedelta(days=3), at=AS_OF)
    store.set_status(ids[2], "viewed", at=AS_OF)
    params = {"last_day": D0, "open_after": AS_OF, "as_of": AS_OF}
    got = store.digest_insights(D0, open_after=AS_OF, as_of=AS_OF)
    with store._engine.connect() as conn:
        rows = store._run(conn, "select_digest_insights", **params)
    assert_frame_equal(got, pl.DataFrame(rows, schema=got.schema, orient="row"), check_exact=True)
    assert sorted(got["id"]) == sorted(ids[2:])
    assert got.sort("user_id", "id")["id"].to_list() == got["id"].to_list()


def test_insights_of_a_churned_customer_close_on_its_churn_day(store: InsightStore) -> None:
    """Open insights of a customer that churned expire on the churn day (the feed hides them
    from then on); one already expired earlier keeps its earlier expiry; the user's columns and
    other customers' insights are untouched; a second pass closes nothing more."""
    frame = insights(3, expires_at=[EXPIRES, None, datetime(2024, 3, 3, tzinfo=UTC)]).with_columns(
        pl.lit("c0").alias("customer_id")
    )
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 2)
        .then(pl.lit("c9"))
        .otherwise("customer_id")
        .alias("customer_id")
    )
    store.write_insights(frame, NO_EXTENSIONS)
    a, b, other = frame["id"].to_list()
    store.set_status(a, "viewed", at=AS_OF)
    churn = datetime(2024, 3, 10, tzinfo=UTC)
    churned = pl.DataFrame({"customer_id": ["c0", "c9"], "churned_at": [churn, EXPIRES]})
    before = store.get_insights([other])
    written = store.write_insights(pl.DataFrame(), pl.DataFrame(), churned)
    assert written == {"inserted": 0, "updated": 0, "extended": 0, "closed": 2}
    assert row(store, a)["expires_at"] == churn and row(store, a)["status"] == "viewed"
    assert row(store, b)["expires_at"] == churn  # never expiring: closed too
    assert store.get_insights([other]).equals(before)  # expired before its churn day: as it was
    feed = store.query_insights(as_of=churn + timedelta(hours=1))
    assert not set(feed["id"]) & {a, b}
    assert store.write_insights(pl.DataFrame(), pl.DataFrame(), churned)["closed"] == 0


def test_open_insights_follow_their_account_to_its_new_csm(store: InsightStore) -> None:
    """A customer moved from u0 to u5: its insights still open at the run's moment move to u5
    (status and feedback as they were); one dismissed, one actioned and one already expired
    stay with u0, as do the insights of customers whose CSM did not change. Idempotent."""
    expired = datetime(2024, 3, 1, 6, tzinfo=UTC)
    frame = insights(6, customer_id="c0", user_id="u0",
                     expires_at=[EXPIRES, None, EXPIRES, EXPIRES, expired, EXPIRES])  # fmt: skip
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("c9")).otherwise("customer_id")
        .alias("customer_id"),
        pl.Series("fingerprint", [f"c0|usage_drop|m{i}" for i in range(6)]),
    )  # fmt: skip
    frame = frame.with_columns(pl.col("fingerprint").map_elements(insight_id).alias("id"))
    store.write_insights(frame, NO_EXTENSIONS)
    ids = frame["id"].to_list()
    store.set_status(ids[1], "viewed", at=AS_OF)
    store.set_status(ids[2], "dismissed", at=AS_OF)
    store.set_status(ids[3], "actioned", at=AS_OF)
    owners = pl.DataFrame({"customer_id": ["c0", "c9", "c7"], "user_id": ["u5", "u0", "u3"]})
    written = store.write_insights(pl.DataFrame(), pl.DataFrame(), owners=owners, as_of=AS_OF)
    assert written["reassigned"] == 2
    assert [row(store, i)["user_id"] for i in ids] == ["u5", "u5", "u0", "u0", "u0", "u0"]
    assert row(store, ids[1])["status"] == "viewed"
    again = store.write_insights(pl.DataFrame(), pl.DataFrame(), owners=owners, as_of=AS_OF)
    assert again["reassigned"] == 0
    with pytest.raises(ValueError, match="owners need as_of"):
        store.write_insights(pl.DataFrame(), pl.DataFrame(), owners=owners)


def test_a_rerun_of_an_older_day_does_not_reopen_an_insight_closed_since(
    store: InsightStore,
) -> None:
    """Re-running an older day extends its open episodes to the stored last day (read back)
    with that day's expiry: it must change nothing, and in particular not move back out the
    expiry of an insight a churn closed since. A later day's detection still extends."""
    last = D0 + timedelta(days=5)
    frame = insights(1, last_seen_date=last)
    store.write_insights(frame, NO_EXTENSIONS)
    (a,) = frame["id"].to_list()
    churn = datetime(2024, 3, 8, tzinfo=UTC)
    churned = pl.DataFrame({"customer_id": ["c0"], "churned_at": [churn]})
    store.write_insights(pl.DataFrame(), pl.DataFrame(), churned)
    assert row(store, a)["expires_at"] == churn
    rerun = extensions([a], last, EXPIRES + timedelta(days=30))
    store.write_insights(pl.DataFrame(), rerun)
    assert (row(store, a)["last_seen_date"], row(store, a)["expires_at"]) == (last, churn)
    later = extensions([a], last + timedelta(days=1), EXPIRES + timedelta(days=30))
    store.write_insights(pl.DataFrame(), later)
    assert row(store, a)["expires_at"] == EXPIRES + timedelta(days=30)


def test_empty_frames_are_a_no_op(store: InsightStore) -> None:
    assert store.write_insights(pl.DataFrame(), pl.DataFrame()) == {
        "inserted": 0,
        "updated": 0,
        "extended": 0,
    }
    assert store.write_insights(insights(0), extensions([], D0, None))["inserted"] == 0
    assert store.count_insights() == 0


def _null_title(frame: pl.DataFrame) -> pl.DataFrame:
    titles = frame["title"].to_list()
    titles[-1] = None
    return frame.with_columns(pl.Series("title", titles, dtype=pl.String))


def _bad_json(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.lit("{not json").alias("score_parts"))


def _bad_priority(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.lit("urgent").alias("priority"))


def _duplicate_id(frame: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([frame, frame.tail(1)])


def _missing_column(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop("summary")


@pytest.mark.parametrize(
    "spoil",
    [_null_title, _bad_json, _bad_priority, _duplicate_id, _missing_column],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_bad_frame_fails_whole_and_leaves_the_table_as_before(
    store: InsightStore, spoil: Any
) -> None:
    store.write_insights(insights(4), NO_EXTENSIONS)
    store.set_status(insights(1)["id"][0], "viewed", at=AS_OF)
    before = store.get_insights()
    # rewrites of existing rows (first) plus new rows, the last one spoilt
    frame = spoil(insights(8, title="changed", score=0.01, last_seen_date=D0 + timedelta(1)))
    ext = extensions(before["id"].to_list(), D0 + timedelta(days=9), None)
    with pytest.raises(StoreWriteError) as failure:
        store.write_insights(frame, ext)
    assert "nothing was written" in str(failure.value)
    assert store.get_insights().equals(before)


def test_a_failure_after_the_first_statement_rolls_everything_back(
    store: InsightStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_insights(insights(2), NO_EXTENSIONS)
    before = store.get_insights()

    def boom(self: InsightStore, conn: Any) -> None:
        raise RuntimeError("injected after the upsert ran")

    monkeypatch.setattr(InsightStore, "_extend", boom)
    frame = insights(6, title="changed")  # 2 updates, 4 inserts: both really executed
    ext = extensions(before["id"].to_list(), D0 + timedelta(days=3), None)
    with pytest.raises(StoreWriteError, match=r"while extending.*injected"):
        store.write_insights(frame, ext)
    assert store.get_insights().equals(before)
    monkeypatch.undo()
    assert store.write_insights(frame, ext)["inserted"] == 4  # the store is still usable


# --------------------------------------------------------------------------------- reads


def test_query_orders_by_priority_score_recency_then_id(store: InsightStore) -> None:
    spec = [  # key, priority, score, partition_date
        ("low-top-score", "low", 1.0, D0),
        ("high-0.5", "high", 0.5, D0),
        ("high-0.9-old", "high", 0.9, D0 - timedelta(days=3)),
        ("high-0.9-new", "high", 0.9, D0),
        ("medium-0.99", "medium", 0.99, D0),
        ("tie-x", "medium", 0.3, D0),
        ("tie-y", "medium", 0.3, D0),
    ]
    keys = [s[0] for s in spec]
    frame = insights(
        len(spec),
        id=[insight_id(k) for k in keys],
        fingerprint=keys,
        priority=[s[1] for s in spec],
        score=[s[2] for s in spec],
        partition_date=[s[3] for s in spec],
        user_id="u1",
    )
    store.write_insights(frame, NO_EXTENSIONS)
    ties = sorted(["tie-x", "tie-y"], key=insight_id)
    expected = ["high-0.9-new", "high-0.9-old", "high-0.5", "medium-0.99", *ties, "low-top-score"]
    got = store.query_insights(as_of=AS_OF, limit=100)
    assert got["fingerprint"].to_list() == expected
    assert got.schema == pl.Schema(INSIGHT_SCHEMA)
    page = store.query_insights(as_of=AS_OF, limit=2, offset=2)
    assert page["fingerprint"].to_list() == expected[2:4]


def test_query_filters_users_and_customers(store: InsightStore) -> None:
    frame = insights(6)  # users alternate u0, u1
    store.write_insights(frame, NO_EXTENSIONS)
    assert set(store.query_insights(user_ids=["u1"], as_of=AS_OF)["user_id"]) == {"u1"}
    assert store.query_insights(user_ids=["u0", "u1"], as_of=AS_OF).height == 6
    assert store.query_insights(user_ids=[], as_of=AS_OF).height == 0
    assert store.query_insights(user_ids=["nobody"], as_of=AS_OF).height == 0
    assert store.query_insights(customer_id="c3", as_of=AS_OF)["customer_id"].to_list() == ["c3"]
    assert store.query_insights(user_ids=["u0"], customer_id="c3", as_of=AS_OF).height == 0


def test_query_hides_expired_dismissed_and_snoozed(store: InsightStore) -> None:
    keys = ["open", "expired", "expires-at-as-of", "never-expires", "dismissed", "snoozed",
            "snooze-over", "actioned"]  # fmt: skip
    expires: list[datetime | None] = [EXPIRES] * len(keys)
    expires[1] = AS_OF - timedelta(hours=1)
    expires[2] = AS_OF
    expires[3] = None
    frame = insights(
        len(keys), id=[insight_id(k) for k in keys], fingerprint=keys, expires_at=expires
    )
    store.write_insights(frame, NO_EXTENSIONS)
    store.set_status(insight_id("dismissed"), "dismissed", "not_relevant", at=AS_OF)
    later, earlier = AS_OF + timedelta(days=1), AS_OF - timedelta(minutes=1)
    store.set_status(insight_id("snoozed"), "snoozed", snoozed_until=later, at=AS_OF)
    store.set_status(insight_id("snooze-over"), "snoozed", snoozed_until=earlier, at=AS_OF)
    store.set_status(insight_id("actioned"), "actioned", "took_action", at=AS_OF)
    shown = set(store.query_insights(as_of=AS_OF, limit=100)["fingerprint"])
    assert shown == {"open", "never-expires", "snooze-over", "actioned"}
    # naive as_of is UTC; the snooze ends and the expiry comes as time passes
    shown_later = set(store.query_insights(as_of=datetime(2024, 3, 20), limit=100)["fingerprint"])
    assert shown_later == {"open", "never-expires", "snooze-over", "actioned", "snoozed"}


def test_set_status_stamps_once_and_rejects_unknowns(store: InsightStore) -> None:
    frame = insights(1)
    store.write_insights(frame, NO_EXTENSIONS)
    key = frame["id"][0]
    store.set_status(key, "viewed", at=AS_OF)
    store.set_status(key, "actioned", "helpful", at=AS_OF + timedelta(hours=1))
    store.set_status(key, "viewed", at=AS_OF + timedelta(hours=2))
    got = row(store, key)
    assert (got["status"], got["feedback"]) == ("viewed", "helpful")
    assert got["viewed_at"] == AS_OF
    assert got["actioned_at"] == AS_OF + timedelta(hours=1)
    with pytest.raises(LookupError):
        store.set_status(insight_id("missing"), "viewed")
    with pytest.raises(ValueError):
        store.set_status(key, "archived")
    with pytest.raises(ValueError):
        store.set_status(key, "viewed", feedback="meh")
    with pytest.raises(ValueError):
        store.set_status("not-a-uuid", "viewed")


def test_bulk_upsert_of_100k_rows(store: InsightStore) -> None:
    n = 100_000
    template = insights(1)
    keys = pl.select(pl.format("bulk|{}", pl.int_range(n))).to_series()
    frame = template.select(pl.all().repeat_by(n).explode()).with_columns(
        fingerprint=keys,
        id=keys.map_elements(insight_id, return_dtype=pl.String),
        user_id=pl.format("u{}", pl.int_range(n) % 50),
        score=(pl.int_range(n) % 1000) / 1000,
    )
    assert store.write_insights(frame, NO_EXTENSIONS)["inserted"] == n
    ext = frame.select("id", "expires_at", last_seen_date=pl.lit(D0 + timedelta(days=1)))
    again = frame.with_columns(title=pl.lit("again"))
    assert store.write_insights(again, ext) == {"inserted": 0, "updated": n, "extended": n}
    assert store.count_insights() == n
    assert store.load_episodes(D0 + timedelta(days=1)).height == n


def test_duckdb_file_is_free_between_calls(tmp_path: Any) -> None:
    path = tmp_path / "deep" / "insights.duckdb"
    store = InsightStore(f"duckdb:///{path}")
    try:
        store.migrate()
        store.write_insights(insights(3), NO_EXTENSIONS)
        script = "import duckdb,sys; c=duckdb.connect(sys.argv[1]); " + (
            "print(c.execute('select count(*) from insights').fetchone()[0])"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "3"
        # another process holding the lock for a moment is waited for, not an error
        holder = subprocess.Popen(
            [sys.executable, "-c", "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); "
             "print('locked', flush=True); time.sleep(0.5)", str(path)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert store.count_insights() == 3
        holder.wait(timeout=60)
    finally:
        store.dispose()


def test_duckdb_session_opens_the_file_once_and_frees_it_after(tmp_path: Any) -> None:
    path = tmp_path / "insights.duckdb"
    store = InsightStore(f"duckdb:///{path}")
    opened: list[object] = []
    event.listen(store._engine, "connect", lambda *_: opened.append(1))
    try:
        with store.session():
            store.migrate()  # on a new file: its failed read of schema_version is rolled back
            store.write_insights(insights(3), NO_EXTENSIONS)
            assert store.count_insights() == 3
            with pytest.raises(LookupError):  # raised inside a transaction: rolled back
                store.share_insight(insight_id("absent"), "u1", ["u2"])
            with store.session():  # nested: the same connection
                assert store.load_episodes(D0).height == 3
        assert len(opened) == 1
        out = subprocess.run(
            [sys.executable, "-c", "import duckdb,sys; duckdb.connect(sys.argv[1])", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr  # the file is free again
        assert store.count_insights() == 3 and len(opened) == 2  # a call alone opens it again
    finally:
        store.dispose()


# --------------------------------------------------------------------------------- sql files

SQL_FILES = sorted(SQL_DIR.rglob("*.sql"))
UPPER_KEYWORD = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE|CREATE|TABLE|INDEX|INTO|VALUES|ORDER|GROUP|"
    r"JOIN|ON|CONFLICT|SET|AND|OR|NOT|NULL|AS|CAST|CASE|WHEN|THEN|ELSE|END|LIMIT|COPY)\b"
)


@pytest.mark.parametrize("path", SQL_FILES, ids=lambda p: str(p.relative_to(SQL_DIR)))
def test_sql_files_follow_the_house_rules(path: Any) -> None:
    source = path.read_text(encoding="utf-8")
    assert source.startswith("-- "), "a header comment says what the statement is for"
    code = "\n".join(line.split("--")[0] for line in source.splitlines())
    assert not UPPER_KEYWORD.search(code), "keywords are lowercase"
    for line in source.splitlines():
        if "--" in line:  # text() would take ':word' in a comment for a bind parameter
            assert not re.search(r"(?<!:):[A-Za-z_]", line.split("--", 1)[1]), line
    statements = split_statements(source)
    if path.parent.name != "migrations":
        assert len(statements) == 1


def test_sql_loader_prefers_the_dialect_folder_and_lists_migrations() -> None:
    assert "cast(s.evidence as json)" in load_sql("upsert_insights", "duckdb")
    assert "cast(s.evidence as json)" not in load_sql("upsert_insights", "postgresql")
    assert load_sql("count_insights", "duckdb") == load_sql("count_insights", "postgres")
    with pytest.raises(FileNotFoundError):
        load_sql("stage_upserts_copy", "duckdb")
    with pytest.raises(ValueError):
        load_sql("../secrets", "duckdb")
    for dialect in ("duckdb", "postgresql"):
        found = migrations(dialect)
        assert found[0][:2] == (1, "001_insights")
        assert [v for v, _, _ in found] == list(range(1, len(found) + 1))
    assert split_statements("-- a; b\nselect ';' ; /* x; */ select $$;$$;\n-- tail") == [
        "-- a; b\nselect ';'",
        "/* x; */ select $$;$$",
    ]

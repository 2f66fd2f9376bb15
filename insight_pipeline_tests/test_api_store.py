"""The store's API methods on DuckDB and the real PostgreSQL (lib/store.py, lib/access.py).

Covers the writes and what they change: directory sync (insert, update, deactivate,
refusals); teams through manager_id, transitively and safe against cycles; tokens stored as
hashes, revocable; unread counts through views, receipts and mark-all-read; every action
updating the insight and appending to the feedback history in one transaction (a failure
leaves neither); snoozes coming back when they end; shares; the team rollup's counts and
rates; the feedback_events frame the ranking reads. Read-only scope, filter and paging checks
live in test_api_access.py (one seeded store per backend for the whole module).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from insight_pipeline.lib.access import FeedFilters, Viewer, resolve_viewer, rollup
from insight_pipeline.lib.sql_files import load_sql
from insight_pipeline.lib.store import FEEDBACK_SCHEMA, InsightStore, StoreWriteError
from insight_pipeline_tests.api_data import ID, KEY_OF, USERS, seed

NOW = datetime.now(UTC)


@pytest.fixture
def org(store: InsightStore) -> InsightStore:
    seed(store)
    return store


def viewer(store: InsightStore, user_id: str) -> Viewer:
    user = store.get_user(user_id)
    assert user is not None
    return resolve_viewer(store, user)


def keys(
    store: InsightStore, user_id: str, filters: FeedFilters | None = None, **kw: Any
) -> list[str]:
    page = store.feed(viewer(store, user_id), filters, limit=100, **kw)
    return [KEY_OF[i] for i in page.rows["id"]]


def one(store: InsightStore, key: str) -> dict[str, Any]:
    return store.get_insights([ID[key]]).row(0, named=True)


# ------------------------------------------------------------------------------- directory


def test_sync_users_inserts_updates_and_deactivates(store: InsightStore) -> None:
    assert store.sync_users(USERS) == {"inserted": 8, "updated": 0, "deactivated": 0}
    assert store.sync_users(USERS) == {"inserted": 0, "updated": 8, "deactivated": 0}
    renamed = USERS.filter(pl.col("user_id") != "c4").with_columns(
        pl.when(pl.col("user_id") == "c1")
        .then(pl.lit("Cara Renamed"))
        .otherwise("name")
        .alias("name")
    )
    assert store.sync_users(renamed) == {"inserted": 0, "updated": 7, "deactivated": 1}
    assert store.get_user("c1")["name"] == "Cara Renamed"
    gone = store.get_user("c4")
    assert gone is not None and gone["active"] is False  # kept, so history still names them
    assert store.sync_users(USERS)["updated"] == 8
    assert store.get_user("c4")["active"] is True


def test_sync_users_refuses_bad_directories(store: InsightStore) -> None:
    store.sync_users(USERS)
    bad = {
        "empty directory": USERS.head(0),
        "role not in": USERS.with_columns(pl.lit("admin").alias("role")),
        "duplicate user_id": pl.concat([USERS, USERS.head(1)]),
        "lacks columns": USERS.drop("manager_id"),
    }
    for message, frame in bad.items():
        with pytest.raises(StoreWriteError, match=message):
            store.sync_users(frame)
    assert store.list_users().height == 8
    assert store.list_users()["active"].all()


def test_teams_are_transitive_and_cycles_end(store: InsightStore) -> None:
    store.sync_users(USERS)
    assert set(store.team_user_ids("M1")) == {"M1", "M3", "c1", "c2", "c3"}
    assert set(store.team_user_ids("L1")) == set(USERS["user_id"])
    assert store.team_user_ids("c1") == ["c1"]
    assert store.team_user_ids("nobody") == []
    looped = USERS.with_columns(
        pl.when(pl.col("user_id") == "M1")
        .then(pl.lit("c3"))
        .otherwise("manager_id")
        .alias("manager_id")
    )
    store.sync_users(looped)  # M1 -> c3 -> M3 -> M1: a cycle in the source
    assert set(store.team_user_ids("M1")) == {"M1", "M3", "c1", "c2", "c3"}


# ---------------------------------------------------------------------------------- tokens


def test_tokens_are_stored_hashed_and_revocable(store: InsightStore) -> None:
    store.sync_users(USERS)
    token_id, token = store.create_token("c1", label="laptop")
    record = store.token_record(token_id)
    assert record is not None and record["user_id"] == "c1" and record["role"] == "csm"
    assert record["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    secret = token.split("_", 2)[2]  # ipt_<id>_<secret>; the secret itself may hold "_"
    assert token not in str(record) and secret not in str(record)
    assert store.list_tokens("c1")["label"].to_list() == ["laptop"]
    assert store.revoke_token(token_id)
    assert store.token_record(token_id)["revoked_at"] is not None
    assert not store.revoke_token("0000000000000000")
    with pytest.raises(LookupError):
        store.create_token("nobody")


# ------------------------------------------------------------------------------------ feed


def test_unread_counts_follow_views_and_mark_all_read(org: InsightStore) -> None:
    c1, m1 = viewer(org, "c1"), viewer(org, "M1")
    assert org.feed(c1).unread == 3
    org.mark_viewed(ID["a"], "c1")
    assert one(org, "a")["status"] == "viewed" and one(org, "a")["viewed_at"] is not None
    assert org.feed(c1).unread == 2
    # a manager's read is a receipt: the CSM's status is untouched
    assert org.feed(m1).unread == 6
    org.mark_viewed(ID["b"], "M1")
    assert one(org, "b")["status"] == "new"
    assert org.feed(m1).unread == 5 and org.feed(c1).unread == 2
    unread_rows = org.feed(m1).rows.filter(pl.col("unread"))["id"].to_list()
    assert ID["b"] not in unread_rows and ID["a"] in unread_rows
    assert org.mark_all_read("c1") == 3  # b, c and the expired d
    assert org.feed(c1).unread == 0
    assert org.mark_all_read("M1") == 0  # M1 owns nothing; everything it sees is read now
    assert org.feed(viewer(org, "M1")).unread == 0


# --------------------------------------------------------------------------------- actions


def test_every_action_updates_the_insight_and_appends_feedback(org: InsightStore) -> None:
    at = NOW
    org.record_action(ID["a"], "c1", "dismiss", "not_relevant", at=at)
    a = one(org, "a")
    assert (a["status"], a["feedback"]) == ("dismissed", "not_relevant")
    later = at + timedelta(seconds=1)
    org.record_action(ID["b"], "c1", "actioned", "took_action", at=later)
    b = one(org, "b")
    assert (b["status"], b["feedback"], b["actioned_at"]) == ("actioned", "took_action", later)
    until = at + timedelta(days=7)
    org.record_action(ID["c"], "M1", "snooze", None, until, at=at + timedelta(seconds=2))
    c = one(org, "c")
    assert (c["status"], c["feedback"], c["snoozed_until"]) == ("snoozed", None, until)
    org.record_action(ID["c"], "c1", "actioned", at=at + timedelta(hours=1))
    c = one(org, "c")
    assert c["snoozed_until"] is None and c["status"] == "actioned"

    events = org.feedback_events()
    assert events.schema == pl.Schema(FEEDBACK_SCHEMA)
    assert events.select("insight_id", "user_id", "action", "feedback").rows() == [
        (ID["a"], "c1", "dismiss", "not_relevant"),
        (ID["b"], "c1", "actioned", "took_action"),
        (ID["c"], "M1", "snooze", None),
        (ID["c"], "c1", "actioned", None),
    ]
    first = events.row(0, named=True)
    assert (first["insight_type"], first["category"], first["customer_id"]) == (
        "usage_drop",
        "usage",
        "A1",
    )
    assert events.row(2, named=True)["snoozed_until"] == until
    # none since the day after the last event (an hour after `at`: the next day after 23:00 UTC)
    last_day = (at + timedelta(hours=1)).date()
    assert org.feedback_events(since=last_day + timedelta(days=1)).height == 0
    assert org.feedback_events(since=at.date()).height == 4
    # done insights leave the open feed; asking for their status brings them back
    assert keys(org, "c1") == []
    assert keys(org, "c1", FeedFilters(status="dismissed")) == ["a"]
    assert set(keys(org, "c1", FeedFilters(status="actioned"))) == {"b", "c"}


def test_bad_actions_write_nothing(org: InsightStore) -> None:
    bad = [
        ("archive", None, None, "action must be one of"),
        ("dismiss", "meh", None, "feedback must be one of"),
        ("snooze", None, None, "snooze_until is required"),
        ("snooze", None, NOW - timedelta(minutes=1), "must be in the future"),
        ("dismiss", None, NOW + timedelta(days=1), "only to the snooze"),
    ]
    for action, feedback, until, message in bad:
        with pytest.raises(ValueError, match=message):
            org.record_action(ID["a"], "c1", action, feedback, until, at=NOW)
    assert one(org, "a")["status"] == "new"
    assert org.feedback_events().height == 0


def test_unknown_insight_and_failed_history_write_roll_back(
    org: InsightStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(LookupError):
        org.record_action("00000000-0000-0000-0000-000000000000", "c1", "dismiss")
    real_run = org._run

    def failing(conn: Any, name: str, /, *args: Any, **kw: Any) -> Any:
        if name == "insert_feedback":
            raise RuntimeError("injected")
        return real_run(conn, name, *args, **kw)

    monkeypatch.setattr(org, "_run", failing)
    with pytest.raises(RuntimeError, match="injected"):
        org.record_action(ID["a"], "c1", "dismiss", "not_relevant")
    monkeypatch.undo()
    assert one(org, "a")["status"] == "new"  # the status update rolled back with it
    assert org.feedback_events().height == 0


def test_a_snooze_ends_and_the_insight_comes_back(org: InsightStore) -> None:
    until = NOW + timedelta(hours=1)
    org.record_action(ID["a"], "c1", "snooze", snooze_until=until, at=NOW)
    c1 = viewer(org, "c1")
    assert "a" not in keys(org, "c1")
    assert "a" in keys(org, "c1", FeedFilters(include_snoozed=True))
    assert "a" in keys(org, "c1", FeedFilters(status="snoozed"))
    later = org.feed(c1, as_of=until + timedelta(seconds=1))
    assert ID["a"] in later.rows["id"].to_list()
    assert later.total == 3


# ---------------------------------------------------------------------------------- shares


def test_shares_reach_the_recipient_only_and_are_unread(org: InsightStore) -> None:
    assert org.share_insight(ID["a"], "c1", ["c4", "c1", "c4"], note="<b>look</b>") == ["c4"]
    c4 = viewer(org, "c4")
    page = org.feed(c4, FeedFilters(customer_id="A1"))
    row = page.rows.row(0, named=True)
    assert (page.total, page.unread) == (1, 1)
    assert (row["shared_by"], row["shared_by_name"], row["share_note"]) == (
        "c1",
        "Cara One",
        "<b>look</b>",
    )
    assert "a" not in keys(org, "M2")  # a share is the recipient's, not their manager's
    org.mark_viewed(ID["a"], "c4")
    assert org.feed(c4, FeedFilters(customer_id="A1")).unread == 0
    assert one(org, "a")["status"] == "new"  # the owner's state is the owner's
    org.share_insight(ID["a"], "c2", ["c4"], note="again")  # a new share is news again
    again = org.feed(c4, FeedFilters(customer_id="A1")).rows.row(0, named=True)
    assert (again["unread"], again["shared_by"], again["share_note"]) == (True, "c2", "again")
    assert "a" not in keys(org, "c3")
    with pytest.raises(ValueError, match="nobody"):
        org.share_insight(ID["a"], "c1", ["c2", "nobody"])
    with pytest.raises(LookupError):
        org.share_insight("00000000-0000-0000-0000-000000000000", "c1", ["c2"])


# ---------------------------------------------------------------------------------- rollup


def test_team_rollup_counts_and_rates(org: InsightStore) -> None:
    org.record_action(ID["a"], "c1", "dismiss", "not_relevant")
    org.record_action(ID["b"], "c1", "actioned", "took_action")
    org.record_action(ID["e"], "c2", "actioned")
    org.record_action(ID["f"], "c2", "snooze", snooze_until=NOW + timedelta(days=2))
    org.share_insight(ID["i"], "c4", ["M1"])  # shares are not the team's
    today = NOW.date()
    grain = org.team_rollup(viewer(org, "M1"), today - timedelta(days=30), today)
    assert set(grain["user_id"]) == {"c1", "c2", "c3"}
    by_csm = {r["user_id"]: r for r in rollup(grain, ["user_id"]).iter_rows(named=True)}
    c1 = by_csm["c1"]
    assert (c1["insights"], c1["dismissed"], c1["actioned"], c1["open_insights"]) == (4, 1, 1, 1)
    assert c1["relevance_rate"] == 0.5 and c1["action_rate"] == 0.25
    c2 = by_csm["c2"]
    assert c2["relevance_rate"] == 1.0 and c2["action_rate"] == 0.5
    assert by_csm["c3"]["relevance_rate"] is None
    total = rollup(grain, []).row(0, named=True)
    assert total["insights"] == 7 and total["unread"] == 3
    assert org.team_rollup(viewer(org, "M2"), today, today).height == 0
    everyone = org.team_rollup(viewer(org, "L1"), today - timedelta(days=30), today)
    assert int(everyone["insights"].sum()) == 9


def test_feedback_since_is_a_utc_day(store: InsightStore) -> None:
    seed(store)
    at = datetime(2030, 1, 2, 0, 30, tzinfo=UTC)
    store.record_action(ID["a"], "c1", "dismiss", at=at)
    assert store.feedback_events(since=date(2030, 1, 2)).height == 1
    assert store.feedback_events(since=date(2030, 1, 3)).height == 0


def test_feed_page_and_count_share_their_visibility_and_filters() -> None:
    """count_api_feed.sql answers for empty pages: it must mean exactly what the page means."""

    def shared_part(name: str) -> str:
        sql = load_sql(name, "postgresql")
        start = sql.index("with visible as (")
        return sql[start : sql.index("\n)", sql.index("matched as (")) + 2]

    assert shared_part("select_api_feed") == shared_part("count_api_feed")

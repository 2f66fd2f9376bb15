"""Lock ordering on the real PostgreSQL: mark-all-read and the sink lock the insight rows they
change in id order, whatever order the rows are stored, indexed or staged in, so the two queue
behind each other instead of deadlocking (the soak's deadlock, docs/reliability.md).

Each test holds the lowest id from a second connection, lets the store's call wait for it, and
then checks that the call holds no other row meanwhile: `for update nowait` on a higher id
succeeds. Before the fix both calls had already locked the higher ids (scan or staging order),
which is half of a deadlock. A writer locking the other way still deadlocks and is retried,
and a threaded race checks that the sink and mark-all-read never deadlock.
(DuckDB has no row locks; its statements are unchanged and covered by test_lib_store.py.)
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

import polars as pl
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

import insight_pipeline.lib.store as store_module
from insight_pipeline.lib.store import UPSERT_SCHEMA, InsightStore
from insight_pipeline_tests.api_data import wait_for_a_lock_wait

D0 = date(2026, 3, 1)
EXPIRES = datetime(2026, 4, 1, tzinfo=UTC)


def insights(ids: list[str], *, user: str = "u1", title: str = "Usage fell") -> pl.DataFrame:
    """Upserts for these ids; priority and score rise with the id, so that an index on
    (user_id, status, priority, score desc) lists them in descending id order too."""
    n = len(ids)
    rank = {key: i for i, key in enumerate(sorted(ids))}
    return pl.DataFrame(
        {
            "id": ids,
            "customer_id": [f"c{rank[i]}" for i in ids],
            "customer_name": [f"Customer {rank[i]}" for i in ids],
            "user_id": [user] * n,
            "partition_date": [D0] * n,
            "last_seen_date": [D0] * n,
            "category": ["usage"] * n,
            "type": ["usage_drop"] * n,
            "subject": ["dau"] * n,
            "priority": ["low" if rank[i] < n // 2 else "high" for i in ids],
            "score": [rank[i] / max(n, 1) for i in ids],
            "title": [f"{title} {rank[i]}" for i in ids],
            "summary": ["DAU down."] * n,
            "evidence": ["[]"] * n,
            "so_what": [None] * n,
            "recommended_action": ['{"description": "Call"}'] * n,
            "fingerprint": [f"c{rank[i]}|usage_drop|dau" for i in ids],
            "score_parts": ["{}"] * n,
            "expires_at": [EXPIRES] * n,
        },
        schema=UPSERT_SCHEMA,
    )


def extensions(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": ids,
            "last_seen_date": [D0.replace(day=2)] * len(ids),
            "expires_at": [EXPIRES] * len(ids),
        },
        schema={"id": pl.String, "last_seen_date": pl.Date, "expires_at": pl.Datetime("us", "UTC")},
    )


def sorted_ids(n: int) -> list[str]:
    return sorted(str(uuid.uuid4()) for _ in range(n))


def stored_in_descending_id_order(store: InsightStore, ids: list[str]) -> None:
    """One write per row, highest id first: the heap (a sequential scan) lists them backwards."""
    for key in reversed(ids):
        store.write_insights(insights([key]), pl.DataFrame())


@pytest.fixture
def other(pg_url: str) -> Iterator[Engine]:
    """A second writer's engine (and the observer of pg_stat_activity)."""
    engine = create_engine(pg_url)
    try:
        yield engine
    finally:
        engine.dispose()


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # reported by the assertion on the outcome
            outcome.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls on threads released together; their results (or exceptions), in order."""
    start = threading.Barrier(len(calls))

    def released(call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            start.wait()
            return call()

        return run

    threads = [in_thread(released(call)) for call in calls]
    outcomes = []
    for thread, outcome in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
        outcomes.extend(outcome)
    return outcomes


def lockable_now(engine: Engine, ids: list[str]) -> list[str]:
    """Which of these rows a third connection can lock without waiting."""
    free = []
    with engine.connect() as conn:
        for key in ids:
            try:
                conn.execute(
                    text("select 1 from insights where id = cast(:id as uuid) for update nowait"),
                    {"id": key},
                )
                free.append(key)
            except OperationalError as exc:
                assert getattr(exc.orig, "sqlstate", None) == "55P03", exc  # lock not available
            conn.rollback()
    return free


def test_mark_all_read_locks_the_rows_in_id_order(pg: InsightStore, other: Engine) -> None:
    ids = sorted_ids(4)
    stored_in_descending_id_order(pg, ids)
    with other.connect() as holder:
        holder.execute(
            text("select 1 from insights where id = cast(:id as uuid) for update"), {"id": ids[0]}
        )
        thread, outcome = in_thread(lambda: pg.mark_all_read("u1"))
        wait_for_a_lock_wait(other)  # waiting for the lowest id ...
        assert lockable_now(other, ids[1:]) == ids[1:]  # ... while holding none of the others
        holder.rollback()
    thread.join(timeout=30)
    assert outcome == [4], outcome
    assert set(pg.get_insights()["status"]) == {"viewed"}


def test_a_sink_write_locks_every_row_in_id_order_before_changing_any(
    pg: InsightStore, other: Engine
) -> None:
    ids = sorted_ids(4)
    stored_in_descending_id_order(pg, ids)
    # rewrites staged highest id first; the lowest id is only extended, by the last statement
    rewrite = insights(list(reversed(ids[1:])), title="Rewritten")
    with other.connect() as holder:
        holder.execute(
            text("select 1 from insights where id = cast(:id as uuid) for update"), {"id": ids[0]}
        )
        thread, outcome = in_thread(lambda: pg.write_insights(rewrite, extensions([ids[0]])))
        wait_for_a_lock_wait(other)
        assert lockable_now(other, ids[1:]) == ids[1:]
        holder.rollback()
    thread.join(timeout=30)
    assert outcome == [{"inserted": 0, "updated": 3, "extended": 1}], outcome
    table = pg.get_insights().sort("id")
    assert table["title"].str.starts_with("Rewritten").to_list() == [False, True, True, True]
    assert table["last_seen_date"].to_list()[0] == D0.replace(day=2)


@pytest.mark.parametrize("call", ["mark_all_read", "write_insights"])
def test_a_deadlock_with_a_writer_locking_the_other_way_is_still_retried(
    pg: InsightStore, other: Engine, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """Another writer taking the higher id first can still deadlock with the store's call
    (which now locks the lower one first): PostgreSQL fails the store's side, which runs its
    transaction again and succeeds."""
    conflicts = watch_conflicts(monkeypatch)
    low, high = ids = sorted_ids(2)
    pg.write_insights(insights(ids), pl.DataFrame())
    calls = {
        "mark_all_read": (partial(pg.mark_all_read, "u1"), 2),
        "write_insights": (
            partial(pg.write_insights, insights(ids, title="Rewritten"), pl.DataFrame()),
            {"inserted": 0, "updated": 2, "extended": 0},
        ),
    }
    store_call, expected = calls[call]
    # a column neither call writes, so both sides' changes can be checked
    update = text("update insights set feedback = 'helpful' where id = cast(:id as uuid)")
    with other.connect() as writer:
        writer.execute(text("set deadlock_timeout = '20s'"))  # the store's side detects it
        writer.execute(update, {"id": high})
        thread, outcome = in_thread(store_call)
        wait_for_a_lock_wait(other)  # the store holds `low` and waits for `high`
        writer.execute(update, {"id": low})  # a deadlock, which PostgreSQL breaks after 1 s
        writer.commit()
    thread.join(timeout=30)
    assert outcome == [expected], outcome
    # at least the one deadlock; on a loaded machine the retry can meet the writer again
    assert conflicts, "the store met no deadlock: the test did not make one"
    assert set(pg.get_insights()["feedback"]) == {"helpful"}


def watch_conflicts(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """The deadlocks and serialization failures the store meets (and retries silently)."""
    conflicts: list[BaseException] = []
    is_conflict = store_module._is_conflict

    def watched(exc: BaseException) -> bool:
        found = is_conflict(exc)
        if found:
            conflicts.append(exc)
        return found

    monkeypatch.setattr(store_module, "_is_conflict", watched)
    return conflicts


def test_mark_all_read_racing_the_sink_never_deadlocks(
    pg: InsightStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds of a sink rewriting and extending one user's new insights in a shuffled order
    while the user marks all read: every call succeeds at once, none is a deadlock's victim
    (the store would retry one silently, so the retry check itself is watched). Timing-bound:
    before the fix it saw a deadlock in some runs only; the two tests above are the
    deterministic check."""
    conflicts = watch_conflicts(monkeypatch)
    shuffle = random.Random(7)
    for round_ in range(8):
        ids = sorted_ids(1200)
        stored_in_descending_id_order(pg, ids[:4])
        pg.write_insights(insights(ids[4:]), pl.DataFrame())
        rewritten, extended = ids[: len(ids) // 2], ids[len(ids) // 2 :]
        shuffle.shuffle(rewritten)
        shuffle.shuffle(extended)
        wrote, marked = at_once(
            partial(
                pg.write_insights,
                insights(rewritten, title=f"Round {round_}"),
                extensions(extended),
            ),
            partial(pg.mark_all_read, "u1"),
        )
        assert wrote == {"inserted": 0, "updated": 600, "extended": 600}, wrote
        assert marked == 1200, marked
    assert conflicts == []
    assert set(pg.get_insights()["status"]) == {"viewed"}

"""Faults, against the real PostgreSQL unless said otherwise: nothing half-written, nothing lost.

- A sink write (`write_insights`: COPY, count, upsert, extend, commit) whose connection dies at
  each step - the backend terminated from a second connection (`pg_terminate_backend`) or the
  TCP connection cut by a proxy - raises StoreWriteError, leaves the table exactly as before
  (every column of every row compared) and a re-run with the same store object succeeds. The
  same with a terminator racing a large write at a random moment.
- The one ambiguous case: the connection lost after the server committed but before the client
  heard so. The error must not claim nothing was written; the re-run converges (idempotent).
- The API's write path (record_action) losing its connection, and the API with the store down:
  503 with Retry-After (never 500), no half-written action, and the retry works.
- A user's action racing the sink's rewrite of the same insight, many rounds on threads, on both
  backends: the action wins (status, feedback) and every action is in the feedback history.
- SMTP unreachable: the digest is recorded failed; a later run sends it exactly once.
(Claude unreachable and the sink's retry policy: test_reliability_pipeline.py.)
"""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import insight_pipeline.lib.store as store_module
from insight_pipeline.api.app import STORE_UNAVAILABLE, create_app
from insight_pipeline.api.auth import COOKIE
from insight_pipeline.lib.digest import build_digests, digest_window
from insight_pipeline.lib.email import SmtpConfig, SmtpTransport, deliver_digests
from insight_pipeline.lib.store import STATUS_OF_ACTION, InsightStore, StoreWriteError
from insight_pipeline_tests.api_data import ID, empty_database, seed, tokens, wait_for_a_lock_wait

D0 = date(2026, 3, 1)
EXPIRES = datetime(2026, 4, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------ helpers


def frame(keys: range, *, title: str = "Usage fell", day: date = D0) -> pl.DataFrame:
    """An upserts frame of valid insights, one per key (ids derive from the fingerprint)."""
    n = len(keys)
    prints = [f"c{k}|usage_drop|dau" for k in keys]
    return pl.DataFrame(
        {
            "id": [str(uuid.uuid5(uuid.NAMESPACE_URL, p)) for p in prints],
            "customer_id": [f"c{k}" for k in keys],
            "customer_name": [f"Customer {k}" for k in keys],
            "user_id": [f"u{k % 7}" for k in keys],
            "partition_date": [day] * n,
            "last_seen_date": [day] * n,
            "category": ["usage"] * n,
            "type": ["usage_drop"] * n,
            "subject": ["dau"] * n,
            "priority": [("high", "medium", "low")[k % 3] for k in keys],
            "score": [(k % 997) / 997 for k in keys],
            "title": [f"{title} at customer {k}" for k in keys],
            "summary": ["DAU down 40% week over week."] * n,
            "evidence": ['[{"metric": "dau", "value": 12, "comparison": "-40%"}]'] * n,
            "so_what": ["Accounts like this churn more often."] * n,
            "recommended_action": ['{"type": "call", "description": "Call the champion"}'] * n,
            "fingerprint": prints,
            "score_parts": ['{"severity": 0.8}'] * n,
            "expires_at": [EXPIRES] * n,
        },
        schema_overrides={"expires_at": pl.Datetime("us", "UTC")},
    )


def extensions(ids: list[str], day: date) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": ids, "last_seen_date": [day] * len(ids), "expires_at": [EXPIRES] * len(ids)},
        schema={"id": pl.String, "last_seen_date": pl.Date, "expires_at": pl.Datetime("us", "UTC")},
    )


def snapshot(store: InsightStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every column of every insight and every feedback event, in a stable order."""
    return store.get_insights().sort("id"), store.feedback_events().sort("id")


def assert_unchanged(store: InsightStore, before: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    after = snapshot(store)
    assert after[0].equals(before[0]), "the insights table changed"
    assert after[1].equals(before[1]), "the feedback history changed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_pid(conn: Any) -> int:
    """The server process behind a SQLAlchemy Connection (psycopg 3)."""
    return int(conn.connection.driver_connection.info.backend_pid)


class FaultProxy:
    """A TCP proxy in front of PostgreSQL that can cut every connection on demand, or drop the
    server's answer to a COMMIT and cut (the server committed; the client never hears it)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_after_commit = False
        self.cuts = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            state = {"committing": False}
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, state, True)).start()
            threading.Thread(target=self._pump, args=(server, client, state, False)).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self.cut_after_commit and b"COMMIT\x00" in data:
                    state["committing"] = True
                elif not upstream and state["committing"]:
                    self.cuts += 1
                    break  # the server's "COMMIT" answer is never forwarded
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _close(s)

    def cut(self) -> None:
        """Every current connection dies at once, like a network partition."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                _close(s)
        self.cuts += len(pairs)

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def admin(pg_url: str) -> Iterator[Engine]:
    """A second connection's engine, for pg_terminate_backend."""
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        yield engine
    finally:
        engine.dispose()


def terminate(admin: Engine, pid: int) -> None:
    with admin.connect() as conn:
        # waits (up to 5 s) until the backend is gone, so the fault is certain, not a race
        assert conn.execute(text("select pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar()


def seeded(store: InsightStore) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Yesterday's 800 insights with user actions on three; then today's write plan: 1,200
    upserts (400 rewrites of existing rows, 800 new) and 400 extensions."""
    store.write_insights(frame(range(800)), pl.DataFrame())
    ids = store.get_insights()["id"].sort().to_list()
    store.record_action(ids[500], "u1", "dismiss", "not_relevant")
    store.record_action(ids[700], "u2", "actioned", "took_action")
    store.mark_viewed(ids[10], "u3")
    day = D0 + timedelta(days=1)
    ups = frame(range(400, 1600), title="Rewritten", day=day)
    ext = extensions(frame(range(400))["id"].to_list(), day)
    return ups, ext, store.get_insights().sort("id")


EXPECTED = {"inserted": 800, "updated": 400, "extended": 400}


def converged(store: InsightStore, ups: pl.DataFrame) -> None:
    """The table is what the write plan makes of yesterday's, user columns kept."""
    table = store.get_insights()
    assert table.height == 1600
    rewritten = table.join(ups.select("id"), on="id")
    assert rewritten["title"].str.starts_with("Rewritten").all()
    assert table.filter(pl.col("last_seen_date") == D0 + timedelta(days=1)).height == 1600
    acted = table.filter(pl.col("status").is_in(["dismissed", "actioned"]))
    assert sorted(acted["feedback"].to_list()) == ["not_relevant", "took_action"]
    assert store.feedback_events().height == 2


# ------------------------------------------------------------------------------ sink writes

FAULT_POINTS = ["mid-copy", "before-upsert", "after-upsert", "before-commit"]
STEP_OF = {
    "mid-copy": "staging upserts",
    "before-upsert": "upserting",
    "after-upsert": "staging extensions",
    "before-commit": "committing",
}


@pytest.mark.parametrize("how", ["terminate", "network-cut"])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_sink_write_losing_its_connection_leaves_the_table_as_before(
    pg_url: str, admin: Engine, monkeypatch: pytest.MonkeyPatch, point: str, how: str
) -> None:
    proxy = FaultProxy(("127.0.0.1", make_url(pg_url).port or 5432))
    store = InsightStore(proxy.url(pg_url))
    try:
        store.migrate()
        ups, ext, _ = seeded(store)
        before = snapshot(store)
        pids: list[int] = []
        fired: list[str] = []

        def fault() -> None:
            fired.append(point)
            if how == "terminate":
                terminate(admin, pids[-1])
            else:
                proxy.cut()

        run = store._run

        def recording_run(conn: Any, sql_name: str, /, *args: Any, **kw: Any) -> Any:
            pids.append(backend_pid(conn))
            return run(conn, sql_name, *args, **kw)

        monkeypatch.setattr(store, "_run", recording_run)
        if point == "mid-copy":
            csv_ready = store_module._csv_ready

            class Chunks:
                """The COPY's rows, cut off after the third chunk went to the server."""

                def __init__(self, frame: pl.DataFrame) -> None:
                    self.frame = frame

                def iter_slices(self, n: int) -> Iterator[pl.DataFrame]:
                    for i, chunk in enumerate(self.frame.iter_slices(n)):
                        if i == 3:
                            fault()
                        yield chunk

            monkeypatch.setattr(store_module, "_COPY_CHUNK_ROWS", 100)
            monkeypatch.setattr(store_module, "_csv_ready", lambda f: Chunks(csv_ready(f)))
        else:
            method = "_extend" if point == "before-commit" else "_upsert"
            original = getattr(store, method)

            def faulty(conn: Any) -> None:
                if point == "before-upsert":
                    fault()
                original(conn)
                if point != "before-upsert":
                    fault()

            monkeypatch.setattr(store, method, faulty)

        with pytest.raises(StoreWriteError) as failure:
            store.write_insights(ups, ext)
        assert fired == [point]
        message = str(failure.value)
        assert f"while {STEP_OF[point]}" in message, message
        # a commit that fails cannot know whether the server applied it (see below)
        assert ("unknown" if point == "before-commit" else "rolled back") in message
        monkeypatch.undo()

        assert_unchanged(store, before)
        assert store.write_insights(ups, ext) == EXPECTED  # the same store object recovers
        converged(store, ups)
        assert store._engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        store.dispose()
        proxy.close()


def test_a_terminator_racing_large_writes_never_leaves_half_a_write(
    pg: InsightStore, admin: Engine
) -> None:
    """pg_terminate_backend from a second connection at a random moment of a 15,000-row write
    (whatever statement runs then, commit included), four rounds each writing new content:
    after each, the table is exactly the one before or exactly the round's, never a mix."""
    rng = random.Random(9)
    base = frame(range(5_000))
    pg.write_insights(base, pl.DataFrame())
    ext = extensions(base["id"].head(2_500).to_list(), D0 + timedelta(days=1))
    with admin.connect() as conn:
        me = conn.execute(text("select pg_backend_pid()")).scalar()
    hits = 0
    for round_ in range(4):
        big = frame(range(2_500, 17_500), title=f"Raced {round_}")
        before = snapshot(pg)
        stop = threading.Event()

        def killer(delay: float, stop: threading.Event = stop) -> None:
            time.sleep(delay)
            with admin.connect() as conn:
                while not stop.is_set():
                    pid = conn.execute(
                        text(
                            "select pid from pg_stat_activity "
                            "where datname = current_database() and pid <> :me "
                            "and state = 'active' and backend_type = 'client backend'"
                        ),
                        {"me": me},
                    ).scalar()
                    if pid:
                        conn.execute(text("select pg_terminate_backend(:p)"), {"p": pid})
                        return
                    time.sleep(0.002)

        thread = threading.Thread(target=killer, args=(rng.uniform(0.0, 0.15),))
        thread.start()
        try:
            pg.write_insights(big, ext)
        except StoreWriteError as exc:
            hits += 1
            message = str(exc)
            assert "rolled back" in message or "unknown" in message, message
        finally:
            stop.set()
            thread.join()
        table = pg.get_insights()
        titles = table.filter(pl.col("title").str.starts_with("Raced"))["title"]
        whole = table.height == 17_500 and set(titles.str.extract(r"^(Raced \d+)")) == {
            f"Raced {round_}"
        }
        if not whole:
            assert_unchanged(pg, before)
    assert hits >= 1, "the terminator never hit a write"
    pg.write_insights(frame(range(2_500, 17_500), title="Raced"), ext)  # and the store recovers
    assert pg.count_insights() == 17_500


def test_a_connection_lost_after_the_server_committed_is_reported_as_unknown_and_a_rerun_converges(
    pg_url: str,
) -> None:
    """The server commits, its answer never arrives. The write did happen, so the error must
    not say "nothing was written"; it says the outcome is unknown and re-running is safe."""
    proxy = FaultProxy(("127.0.0.1", make_url(pg_url).port or 5432))
    store = InsightStore(proxy.url(pg_url))
    try:
        store.migrate()
        ups, ext, _ = seeded(store)
        proxy.cut_after_commit = True
        with pytest.raises(StoreWriteError) as failure:
            store.write_insights(ups, ext)
        proxy.cut_after_commit = False
        assert proxy.cuts == 1
        message = str(failure.value)
        assert "while committing" in message and "nothing was written" not in message, message
        assert "unknown" in message and "re-run" in message
        converged(store, ups)  # it had committed
        assert store.write_insights(ups, ext) == {"inserted": 0, "updated": 1200, "extended": 400}
        converged(store, ups)
    finally:
        store.dispose()
        proxy.close()


# ------------------------------------------------------------------------------ API writes


@pytest.fixture
def api_pg(pg: InsightStore) -> Iterator[tuple[InsightStore, TestClient, dict[str, str]]]:
    seed(pg)
    with TestClient(create_app(store=pg, source=""), raise_server_exceptions=False) as client:
        yield pg, client, tokens(pg)


@pytest.mark.parametrize("statement", ["set_status", "insert_feedback"])
def test_an_action_whose_connection_dies_is_a_503_and_writes_nothing(
    api_pg: tuple[InsightStore, TestClient, dict[str, str]],
    admin: Engine,
    monkeypatch: pytest.MonkeyPatch,
    statement: str,
) -> None:
    store, client, toks = api_pg
    before = snapshot(store)
    run = store._run
    armed = [True]

    def dying_run(conn: Any, sql_name: str, /, *args: Any, **kw: Any) -> Any:
        if sql_name == statement and armed[0]:
            armed[0] = False
            terminate(admin, backend_pid(conn))
        return run(conn, sql_name, *args, **kw)

    monkeypatch.setattr(store, "_run", dying_run)
    path = f"/api/insights/{ID['a']}/action"
    auth = {"Authorization": f"Bearer {toks['c1']}"}
    body = {"action": "dismiss", "feedback": "not_relevant"}
    failed = client.post(path, json=body, headers=auth)
    assert failed.status_code == 503, failed.text
    assert failed.json() == {"detail": STORE_UNAVAILABLE}
    assert failed.headers["retry-after"] == "5"
    assert not armed[0]
    assert_unchanged(store, before)

    retried = client.post(path, json=body, headers=auth)
    assert retried.status_code == 200, retried.text
    assert retried.json()["insight"]["status"] == "dismissed"
    events = store.feedback_events()
    assert events.height == 1 and events["feedback"].to_list() == ["not_relevant"]


def test_the_api_with_its_store_down_answers_503_and_stays_alive() -> None:
    down = InsightStore(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    app = create_app(store=down, source="", migrate=False)
    token = f"ipt_{'0' * 16}_{'A' * 43}"  # well formed, so authentication asks the store
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/api/health").status_code == 200
        for method, path in [
            ("GET", "/api/insights"),
            ("GET", f"/api/insights/{ID['a']}"),
            ("POST", f"/api/insights/{ID['a']}/action"),
            ("GET", "/api/team/insights"),
        ]:
            got = client.request(method, path, headers=auth, json={"action": "dismiss"})
            assert (got.status_code, got.json()) == (503, {"detail": STORE_UNAVAILABLE}), path
            assert token not in got.text
        client.cookies.set(COOKIE, token)
        assert client.get("/feed").status_code == 503
    down.dispose()


# ------------------------------------------------------------------------------ races


def test_mark_all_read_crossing_a_concurrent_writer_succeeds(
    pg: InsightStore, pg_url: str, admin: Engine
) -> None:
    """Mark-all-read updates many rows while another transaction updates two of them one after
    the other (the soak saw this as a deadlock and a 503). Mark-all-read now locks in id order, so
    it queues rather than deadlocks; where a deadlock still happens (a writer locking in the
    opposite order, test_reliability_lock_order.py) the rolled-back transaction is run again.
    Either way the user's click succeeds and the other writer's change is kept."""
    plan = frame(range(2)).with_columns(user_id=pl.lit("u1"))
    plan = plan.with_columns(expires_at=pl.Series([EXPIRES, EXPIRES + timedelta(days=1)]))
    pg.write_insights(plan, pl.DataFrame())
    first, second = plan["id"].to_list()
    outcome: list[Any] = []
    other = create_engine(pg_url)
    try:
        with other.connect() as writer:
            writer.execute(text("set deadlock_timeout = '20s'"))  # the store's side detects it
            writer.execute(text("update insights set title = 'w' where id = :i"), {"i": second})
            thread = threading.Thread(
                target=lambda: outcome.append(_attempt(lambda: pg.mark_all_read("u1")))
            )
            thread.start()
            wait_for_a_lock_wait(admin)  # mark-all-read waits for the row the writer holds
            # the writer takes the other row too (before the lock ordering: a deadlock)
            writer.execute(text("update insights set title = 'w' where id = :i"), {"i": first})
            writer.commit()
    finally:
        other.dispose()
    thread.join(timeout=30)
    assert outcome == [2], outcome
    table = pg.get_insights()
    assert set(table["status"]) == {"viewed"} and set(table["title"]) == {"w"}


def test_a_sink_write_crossing_a_concurrent_writer_lands_whole(
    pg: InsightStore, pg_url: str, admin: Engine
) -> None:
    """The same crossing with the sink (the soak saw it deadlock too): the sink queues behind
    the writer (or, in a deadlock, is rolled back and run again) and lands whole."""
    base = frame(range(2))
    pg.write_insights(base, pl.DataFrame())
    first, second = base["id"].to_list()
    rewrite = frame(range(2), title="Rewritten")  # staged (and locked) in this order
    outcome: list[Any] = []
    other = create_engine(pg_url)
    try:
        with other.connect() as writer:
            writer.execute(text("set deadlock_timeout = '20s'"))
            writer.execute(text("update insights set status = 'viewed' where id = :i"),
                           {"i": second})  # fmt: skip
            thread = threading.Thread(
                target=lambda: outcome.append(
                    _attempt(lambda: pg.write_insights(rewrite, pl.DataFrame()))
                )
            )
            thread.start()
            wait_for_a_lock_wait(admin)
            writer.execute(text("update insights set status = 'viewed' where id = :i"),
                           {"i": first})  # fmt: skip
            writer.commit()
    finally:
        other.dispose()
    thread.join(timeout=30)
    assert outcome == [{"inserted": 0, "updated": 2, "extended": 0}], outcome
    table = pg.get_insights()
    assert set(table["title"].str.extract(r"^(\w+)")) == {"Rewritten"}
    assert set(table["status"]) == {"viewed"}  # and the other writer's change is kept


def test_two_actions_on_one_insight_end_with_the_status_of_the_last_in_the_history(
    pg: InsightStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two users act on the same insight at once (the soak saw it once in 3,460 actions): one
    requested first reaches the database last. The status the row keeps must be the history's
    last action: an action is stamped only once it holds the row."""
    pg.write_insights(frame(range(1)), pl.DataFrame())
    insight = str(frame(range(1))["id"][0])
    slow: dict[str, Any] = {}
    original = pg._run

    def delayed(conn: Any, sql_name: str, /, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is slow.get("thread") and not slow.get("slept"):
            slow["slept"] = True
            time.sleep(0.5)  # requested, but not yet at the database
        return original(conn, sql_name, *args, **kwargs)

    monkeypatch.setattr(pg, "_run", delayed)
    outcome: list[Any] = []
    first = threading.Thread(
        target=lambda: outcome.append(
            _attempt(lambda: pg.record_action(insight, "u0", "dismiss", "not_relevant"))
        )
    )
    slow["thread"] = first
    first.start()
    time.sleep(0.1)
    pg.record_action(insight, "u1", "actioned", "took_action")  # requested second, lands first
    first.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], str), outcome
    events = pg.feedback_events().filter(pl.col("insight_id") == insight).sort("created_at")
    assert events.height == 2
    status = pg.get_insights([insight])["status"][0]
    assert events["action"][-1] == "dismiss"
    assert status == STATUS_OF_ACTION[events["action"][-1]] == "dismissed"


def _attempt(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc


@pytest.mark.parametrize("backend", ["postgres", "duckdb"])
def test_actions_racing_the_sink_on_the_same_insights_all_win_and_none_is_lost(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One thread re-upserts 40 insights (new content each round, as a re-run of the sink
    does); two user threads act on them meanwhile, each on its own half, and a reader polls.
    At the end every insight shows its user's last action, every action is in the history, and
    the content is the sink's last round. (On DuckDB this also covers threads of one process
    opening the file at once, which DuckDB 2.0 got wrong until the store serialised it.)"""
    store = InsightStore(empty_database(backend, request, tmp_path_factory))
    store.migrate()
    rounds, actions_per_user = (25, 60) if backend == "postgres" else (12, 25)
    plan = frame(range(40))
    ids = plan["id"].to_list()
    store.write_insights(plan, pl.DataFrame())
    errors: list[str] = []
    last_action: dict[str, tuple[str, str]] = {}
    done = [0]
    lock = threading.Lock()

    def sink() -> None:
        for r in range(rounds):
            try:
                day = D0 + timedelta(days=r)
                store.write_insights(
                    frame(range(40), title=f"Round {r}", day=day), extensions(ids, day)
                )
            except Exception as exc:
                errors.append(f"sink: {exc}")

    def reader() -> None:
        while threads[0].is_alive():
            try:
                store.count_insights()
            except Exception as exc:
                errors.append(f"reader: {exc}")

    def user(mine: list[str], seed_: int) -> None:
        rng = random.Random(seed_)
        for _ in range(actions_per_user):
            target = rng.choice(mine)
            action, feedback = rng.choice(
                [("dismiss", "not_relevant"), ("actioned", "took_action"), ("dismiss", "helpful")]
            )
            try:
                store.record_action(target, "u1", action, feedback)
            except Exception as exc:
                errors.append(f"user: {exc}")
                continue
            with lock:
                last_action[target] = (action, feedback)
                done[0] += 1

    threads = [
        threading.Thread(target=sink),
        threading.Thread(target=user, args=(ids[:20], 1)),
        threading.Thread(target=user, args=(ids[20:], 2)),
        threading.Thread(target=reader),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        table = store.get_insights()
        assert table.height == 40
        assert set(table["title"].str.extract(r"^(Round \d+)")) == {f"Round {rounds - 1}"}
        status = {"dismiss": "dismissed", "actioned": "actioned"}
        for row in table.iter_rows(named=True):
            if row["id"] in last_action:
                action, feedback = last_action[row["id"]]
                assert (row["status"], row["feedback"]) == (status[action], feedback)
            else:
                assert row["status"] == "new"
        events = store.feedback_events()
        assert events.height == done[0] == 2 * actions_per_user
    finally:
        store.dispose()


# ------------------------------------------------------------------------------ SMTP


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


def test_smtp_unreachable_is_recorded_failed_and_a_later_run_sends_exactly_once(
    pg: InsightStore,
) -> None:
    users = pl.DataFrame(
        {
            "user_id": ["C1", "C2"],
            "name": ["Cal Csm", "Cora Csm"],
            "email": ["cal@example.com", "cora@example.com"],
            "role": ["csm", "csm"],
            "manager_id": [None, None],
        }
    )
    day = date(2026, 11, 24)
    rows = pl.DataFrame(
        [
            {
                "id": str(uuid.uuid4()),
                "customer_id": f"a{u}",
                "customer_name": f"Acct {u}",
                "user_id": u,
                "partition_date": day,
                "last_seen_date": day,
                "category": "usage",
                "type": "usage_drop",
                "priority": "high",
                "score": 0.9,
                "title": "Usage down",
                "summary": "s",
                "recommended_action": '{"description": "Call them"}',
                "status": "new",
            }
            for u in ("C1", "C2")
        ]
    )
    digests = build_digests(digest_window("daily", day), users, rows, ["C1", "C2"], cap=10)
    port = free_port()
    smtp = SmtpTransport(SmtpConfig.from_url(f"smtp://127.0.0.1:{port}?timeout=2"))
    kw: dict[str, Any] = {"sender": "Insights <i@example.com>", "feed_url": "http://x/feed"}
    quick: dict[str, Callable[[float], None]] = {"sleep": lambda _s: None}

    down = deliver_digests(pg, smtp, digests, max_attempts=2, **kw, **quick)
    assert down.counts()["failed"] == 2
    ledger = pg.digests(day, day)
    assert ledger["status"].to_list() == ["failed", "failed"]
    assert all("Connection" in (e or "") for e in ledger["last_error"])

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        up = deliver_digests(pg, smtp, digests, **kw, **quick)
        again = deliver_digests(pg, smtp, digests, **kw, **quick)
    finally:
        smtp.close()
        controller.stop()
    assert up.counts()["sent"] == 2 and again.counts()["already_sent"] == 2
    assert len(inbox.messages) == 2
    ledger = pg.digests(day, day)
    assert ledger["status"].to_list() == ["sent", "sent"]
    assert ledger["attempts"].to_list() == [3, 3]

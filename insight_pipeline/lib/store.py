"""The Store: the one module that runs SQL on the product's tables (architecture, "Store" seam).

The SQL itself lives in `sql/` (see `sql_files`); this module binds values, owns transactions and
hides the differences between PostgreSQL and the embedded DuckDB default:

- PostgreSQL (`postgresql+psycopg://...`): pooled engine; bulk writes COPY a CSV rendering of the
  frame into a temp table, then one INSERT .. SELECT .. ON CONFLICT.
- DuckDB (`duckdb:///path`): a connection per call (NullPool) so the file lock is held only while
  a call runs and another process can open the file between calls; opening retries for a while
  when another process holds the lock. A `session()` lets a few calls in a row share one
  connection (each open costs ~25 ms of CPU). Bulk writes register the Arrow table on the
  connection.

Conventions of the frames going in and out:
- ids are UUID strings; dates are `pl.Date`; instants are `pl.Datetime("us", "UTC")` (naive input
  is taken as UTC); JSON columns are JSON text.
- `expires_at` null means "never expires": the feed keeps it and `greatest` treats it as latest.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import Connection, Engine, String, Uuid, bindparam, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.types import TypeEngine

from insight_pipeline.lib.access import (
    ACTIONS,
    STATUS_OF_ACTION,
    FeedFilters,
    FeedPage,
    Viewer,
)
from insight_pipeline.lib.sql_files import load_sql, migrations

PRIORITIES = ("high", "medium", "low")
STATUSES = ("new", "viewed", "actioned", "dismissed", "snoozed")
FEEDBACKS = ("not_relevant", "already_knew", "helpful", "took_action")

_UTC = pl.Datetime("us", "UTC")

#: Columns of the upserts frame given to `write_insights`, in staging order, with their types.
UPSERT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "customer_id": pl.String(),
    "customer_name": pl.String(),
    "user_id": pl.String(),
    "partition_date": pl.Date(),
    "last_seen_date": pl.Date(),
    "category": pl.String(),
    "type": pl.String(),
    "subject": pl.String(),
    "priority": pl.String(),
    "score": pl.Float64(),
    "title": pl.String(),
    "summary": pl.String(),
    "evidence": pl.String(),
    "so_what": pl.String(),
    "recommended_action": pl.String(),
    "fingerprint": pl.String(),
    "score_parts": pl.String(),
    "expires_at": _UTC,
}

#: Columns of the extensions frame given to `write_insights`.
EXTENSION_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "last_seen_date": pl.Date(),
    "expires_at": _UTC,
}

#: Columns of the churned customers given to `write_insights` (their churn day, as an instant).
CHURNED_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "churned_at": _UTC,
}

OWNERS_SCHEMA: dict[str, pl.DataType] = {"customer_id": pl.String(), "user_id": pl.String()}
"""Each customer's CSM now (customers.csm_user_id): what open insights follow."""

#: Ranking columns an upsert may carry (ranking's daily cap, migration 005); a frame without
#: them is written as pushed (everything was delivered before ranking decided).
PUSH_SCHEMA: dict[str, pl.DataType] = {
    "pushed": pl.Boolean(),
    "rank_in_day": pl.Int32(),
}

#: Columns of `load_episodes`.
EPISODE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "fingerprint": pl.String(),
    "partition_date": pl.Date(),
    "last_seen_date": pl.Date(),
    "status": pl.String(),
    "expires_at": _UTC,
    "customer_id": pl.String(),
    "category": pl.String(),
    "type": pl.String(),
    "subject": pl.String(),
    "score_parts": pl.String(),
}

#: Columns of `query_insights` and `get_insights`: the whole insights row.
INSIGHT_SCHEMA: dict[str, pl.DataType] = {
    **{k: v for k, v in UPSERT_SCHEMA.items() if k != "expires_at"},
    "status": pl.String(),
    "feedback": pl.String(),
    "snoozed_until": _UTC,
    "expires_at": _UTC,
    "created_at": _UTC,
    "viewed_at": _UTC,
    "actioned_at": _UTC,
}

# --- ranking ---

#: Columns of `pushed_insights`.
PUSHED_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "customer_id": pl.String(),
    "customer_name": pl.String(),
    "user_id": pl.String(),
    "partition_date": pl.Date(),
    "category": pl.String(),
    "type": pl.String(),
    "subject": pl.String(),
    "priority": pl.String(),
    "score": pl.Float64(),
    "rank_in_day": pl.Int32(),
    "status": pl.String(),
    "feedback": pl.String(),
    "snoozed_until": _UTC,
    "expires_at": _UTC,
    "score_parts": pl.String(),
    "title": pl.String(),
}

#: Columns of the insight_quality table (`write_quality`, `quality`).
QUALITY_COLUMNS: dict[str, pl.DataType] = {
    "quality_date": pl.Date(),
    "window_days": pl.Int32(),
    "scope": pl.String(),
    "scope_key": pl.String(),
    "acted": pl.Int64(),
    "relevant": pl.Int64(),
    "actioned": pl.Int64(),
    "relevance_rate": pl.Float64(),
    "action_rate": pl.Float64(),
}

# --- team and strategic ---

#: Columns of `rollup_insights`: what the team rollups (lib/team.py) count.
ROLLUP_INSIGHT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "customer_id": pl.String(),
    "user_id": pl.String(),
    "category": pl.String(),
    "type": pl.String(),
    "priority": pl.String(),
    "score": pl.Float64(),
    "partition_date": pl.Date(),
    "expires_at": _UTC,
    "created_at": _UTC,
    "actioned_at": _UTC,
}

#: Columns of `team_rollup_history`: one rollup row's daily series.
ROLLUP_HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "rollup_date": pl.Date(),
    "open_insights": pl.Int64(),
    "open_high": pl.Int64(),
    "arr_at_risk": pl.Float64(),
    "expansion_arr": pl.Float64(),
    "raised_7d": pl.Int64(),
}

# --- users, tokens, feedback, shares (API) ---

#: Columns of `get_user` / `list_users`: the directory as the API knows it.
USER_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "name": pl.String(),
    "email": pl.String(),
    "role": pl.String(),
    "manager_id": pl.String(),
    "active": pl.Boolean(),
    "read_all_at": _UTC,
}

#: Columns of `feedback_events`: the insight_feedback table, what ranking learns from.
FEEDBACK_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "insight_id": pl.String(),
    "user_id": pl.String(),
    "action": pl.String(),
    "feedback": pl.String(),
    "snoozed_until": _UTC,
    "insight_type": pl.String(),
    "category": pl.String(),
    "customer_id": pl.String(),
    "created_at": _UTC,
}

#: Columns of `feed` rows: the insights row plus owner name, share and unread-to-the-viewer.
FEED_SCHEMA: dict[str, pl.DataType] = {
    **INSIGHT_SCHEMA,
    "user_name": pl.String(),
    "shared_by": pl.String(),
    "shared_by_name": pl.String(),
    "share_note": pl.String(),
    "shared_at": _UTC,
    "unread": pl.Boolean(),
}

#: Columns of `team_rollup`: counts per CSM x category x priority (lib/access.rollup sums them).
ROLLUP_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "user_name": pl.String(),
    "category": pl.String(),
    "priority": pl.String(),
    "insights": pl.Int64(),
    "open_insights": pl.Int64(),
    "unread": pl.Int64(),
    "dismissed": pl.Int64(),
    "actioned": pl.Int64(),
    "snoozed": pl.Int64(),
}

#: Columns of `list_tokens` (never the hash).
TOKEN_SCHEMA: dict[str, pl.DataType] = {
    "token_id": pl.String(),
    "user_id": pl.String(),
    "label": pl.String(),
    "created_at": _UTC,
    "expires_at": _UTC,
    "revoked_at": _UTC,
}

_USER_COLUMNS = ("user_id", "name", "email", "role", "manager_id")
_ROLES = ("csm", "manager", "leader")

_JSON_COLUMNS = ("evidence", "recommended_action", "score_parts")
_STAGE_UPSERTS = "stage_insight_upserts"
_STAGE_EXTENSIONS = "stage_insight_extensions"
_STAGE_CHURNED = "stage_churned_customers"
_STAGE_OWNERS = "stage_account_owners"
_MIGRATION_LOCK_KEY = 7_351_946_020_001  # arbitrary, fixed: "insight_pipeline migrations"
_COPY_CHUNK_ROWS = 50_000


_CONFLICT_RETRIES = 3


def _is_conflict(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the server rolled the transaction back and says
    that running it again can succeed (SQLSTATE class 40)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in ("40P01", "40001")


class StoreWriteError(RuntimeError):
    """A write failed and was rolled back: the insights table is exactly as before the call.

    Except when the connection was lost while committing: the server may have committed before
    the client heard back, so the outcome is unknown (the message says so). Every write is
    idempotent, so re-running it is safe either way."""


def _outcome(step: str) -> str:
    """What a failed write left behind, as its error message says it."""
    if step == "committing":
        return (
            "the commit's outcome is unknown (the server may have applied it before the "
            "connection failed); the write is idempotent, re-run it"
        )
    return "rolled back, nothing was written"


class InsightStore:
    """Every read and write of the insights tables: for the sink, API, digest and CLI."""

    def __init__(self, url: str, *, pool_size: int = 5, lock_timeout: float = 10.0) -> None:
        """Open an engine for `url` (no connection yet); a DuckDB file's folder is created.

        `lock_timeout` (DuckDB files only): seconds to keep retrying while another process
        holds the file's lock.
        """
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        self._shared_engine = False
        if backend == "duckdb":
            database = parsed.database or ":memory:"
            if database == ":memory:":
                # one shared connection, else every call would see a fresh empty database
                engine = create_engine(parsed, poolclass=StaticPool)
            else:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                engine = _duckdb_file_engine(parsed, database, lock_timeout)
                self._shared_engine = True
        elif backend in ("postgresql", "postgres"):
            driver = parsed.get_driver_name()
            if parsed.drivername in ("postgresql", "postgres"):
                parsed = parsed.set(drivername="postgresql+psycopg")
            elif driver != "psycopg":
                raise ValueError(
                    f"PostgreSQL URLs must use psycopg 3 (postgresql+psycopg://), not {driver!r}"
                )
            engine = create_engine(parsed, pool_size=pool_size, pool_pre_ping=True)
        else:
            raise ValueError(
                f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
                "use postgresql+psycopg://... or duckdb:///path"
            )
        self._engine: Engine = engine
        self._held = threading.local()  # the connection of this thread's `session`, if any
        self.dialect: str = engine.dialect.name
        self.url: str = parsed.render_as_string(hide_password=True)

    def __enter__(self) -> InsightStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"InsightStore({self.url!r})"

    # ---------------------------------------------------------------------------- schema

    def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded, each in its own transaction; idempotent.

        Returns the names applied by this call (empty when the schema is current).
        """
        pending = migrations(self.dialect)
        # Fast path (every run opens the store several times): one read of what is applied.
        # Anything missing goes through the locked loop below, which checks again under the lock.
        if {version for version, _, _ in pending} <= self._recorded_versions():
            return []
        applied: list[str] = []
        for version, name, statements in pending:
            with self._begin() as conn:
                if self.dialect == "postgresql":
                    self._run(conn, "migration_lock", lock_key=_MIGRATION_LOCK_KEY)
                self._run(conn, "schema_version_create")
                done = {row[0] for row in self._run(conn, "schema_version_select")}
                if version in done:
                    continue
                for statement in statements:
                    _fetch(conn.execute(text(statement)))
                self._run(
                    conn,
                    "schema_version_insert",
                    version=version,
                    name=name,
                    applied_at=datetime.now(UTC),
                )
            applied.append(name)
        return applied

    def _recorded_versions(self) -> set[int]:
        """The versions in schema_version, creating nothing (two creators racing on PostgreSQL
        collide in its catalog; creation happens under the migration lock only)."""
        try:
            with self._connect() as conn:
                return {int(row[0]) for row in self._run(conn, "schema_version_select")}
        except DBAPIError:  # no such table yet (or no database): the locked path decides
            return set()

    def schema_versions(self) -> list[tuple[int, str, datetime]]:
        """The applied migrations as (version, name, applied_at), oldest first."""
        with self._begin() as conn:
            self._run(conn, "schema_version_create")
            return [(int(v), str(n), a) for v, n, a in self._run(conn, "schema_version_select")]

    # ---------------------------------------------------------------------------- writes

    def write_insights(
        self,
        upserts: pl.DataFrame,
        extensions: pl.DataFrame,
        churned: pl.DataFrame | None = None,
        owners: pl.DataFrame | None = None,
        as_of: datetime | None = None,
    ) -> dict[str, int]:
        """Upsert new and re-detected insights and extend continuing episodes, in ONE transaction.

        Upserts insert as status 'new'; an existing id gets fresh content, the earliest
        partition_date and the latest last_seen_date/expires_at, and keeps every user column
        (status, feedback, snoozed_until, viewed_at, actioned_at) and created_at. Upserts may
        carry ranking's `pushed` and `rank_in_day` (PUSH_SCHEMA; absent = pushed). Extensions
        (id, last_seen_date, expires_at) only move those two later; unknown ids are ignored.
        Duplicate ids within a frame are rejected (their outcome would depend on row order).

        On PostgreSQL the transaction first locks every existing row it will change, in id
        order, as mark-all-read does, so the two queue rather than deadlock. A transaction
        PostgreSQL still fails to break a deadlock (with some other writer) or a serialization
        conflict is run again, up to 3 times.

        `churned` (customer_id, churned_at): customers that churned; their insights still open
        past the churn day are closed there (expires_at moved back, nothing else changed), in
        the same transaction - an insight about an account that is gone is no one's work.

        `owners` (customer_id, user_id): each customer's CSM now; insights still open at `as_of`
        (not dismissed or actioned, expiring after it) of a customer whose CSM changed move to
        the new one (`reassign_insights.sql`), in the same transaction - the account's new owner
        sees them, the old one no longer does.

        Returns {"inserted", "updated", "extended"} (and "closed" when `churned` is given,
        "reassigned" when `owners` is). Raises StoreWriteError after rollback.
        """
        if owners is not None and as_of is None:
            raise ValueError("owners need as_of: the moment whose open insights follow them")
        attempt = 0
        while True:
            try:
                return self._write_insights_once(upserts, extensions, churned, owners, as_of)
            except StoreWriteError as exc:
                if attempt == _CONFLICT_RETRIES or not _is_conflict(exc.__cause__):
                    raise
                time.sleep(0.05 * 2**attempt)
                attempt += 1

    def _write_insights_once(
        self,
        upserts: pl.DataFrame,
        extensions: pl.DataFrame,
        churned: pl.DataFrame | None,
        owners: pl.DataFrame | None = None,
        as_of: datetime | None = None,
    ) -> dict[str, int]:
        """One attempt of `write_insights`: one transaction, rolled back on any error."""
        ups = _prepare(_with_push_defaults(upserts), UPSERT_SCHEMA | PUSH_SCHEMA, "upserts")
        ext = _prepare(extensions, EXTENSION_SCHEMA, "extensions")
        gone = _prepare(
            churned if churned is not None else pl.DataFrame(), CHURNED_SCHEMA, "churned"
        )
        moved = _prepare(
            owners if owners is not None else pl.DataFrame(), OWNERS_SCHEMA, "owners"
        ).drop_nulls()
        counts = {"inserted": 0, "updated": 0, "extended": 0}
        if churned is not None:
            counts["closed"] = 0
        if owners is not None:
            counts["reassigned"] = 0
        if ups.is_empty() and ext.is_empty() and gone.is_empty() and moved.is_empty():
            return counts
        step = "opening a transaction"
        try:
            with self._begin() as conn:
                if self.dialect == "postgresql":
                    step = "locking rows"
                    self._lock_rows(conn, ups, ext)
                if not ups.is_empty():
                    step = "staging upserts"
                    with self._staged(conn, "upserts", _STAGE_UPSERTS, ups):
                        step = "counting existing ids"
                        updated = self._scalar(conn, "count_existing_upserts")
                        step = "upserting"
                        if updated == 0 and self.dialect == "duckdb":
                            self._insert_new(conn)
                        else:
                            self._upsert(conn)
                    counts["updated"] = updated
                    counts["inserted"] = ups.height - updated
                if not ext.is_empty():
                    step = "staging extensions"
                    with self._staged(conn, "extensions", _STAGE_EXTENSIONS, ext):
                        step = "counting extended ids"
                        counts["extended"] = self._scalar(conn, "count_existing_extensions")
                        step = "extending"
                        self._extend(conn)
                if not gone.is_empty():
                    step = "staging churned customers"
                    with self._staged(conn, "churned", _STAGE_CHURNED, gone):
                        step = "counting insights of churned customers"
                        counts["closed"] = self._scalar(conn, "count_churned_open")
                        step = "closing insights of churned customers"
                        self._run(conn, "close_churned")
                if not moved.is_empty():
                    step = "staging account owners"
                    with self._staged(conn, "owners", _STAGE_OWNERS, moved):
                        step = "counting insights of reassigned accounts"
                        counts["reassigned"] = self._scalar(
                            conn, "count_reassigned", as_of=_utc(as_of)
                        )
                        if counts["reassigned"]:
                            step = "moving open insights to their account's CSM"
                            self._run(conn, "reassign_insights", as_of=_utc(as_of))
                step = "committing"
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreWriteError(
                f"write_insights failed while {step} ({ups.height} upserts, {ext.height} "
                f"extensions, {gone.height} churned) on {self.dialect}; {_outcome(step)}: "
                f"{type(cause).__name__}: {cause}"
            ) from exc
        return counts

    def _lock_rows(self, conn: Connection, ups: pl.DataFrame, ext: pl.DataFrame) -> None:
        """Lock the existing insights among the write's ids, in id order (PostgreSQL only)."""
        ids = pl.concat([ups.get_column("id"), ext.get_column("id")]).unique().to_list()
        self._run(conn, "lock_insights", ids=ids)

    def _upsert(self, conn: Connection) -> None:
        """The upsert statement; a separate method so tests can inject a failure after it."""
        self._run(conn, "upsert_insights", created_at=datetime.now(UTC))

    def _insert_new(self, conn: Connection) -> None:
        """The upsert when none of its ids is stored yet (DuckDB only): a plain insert of the
        same rows, without the conflict checks, which cost DuckDB more than the insert (a 10k
        year's 68k insights into a new store: ~1.2 -> ~0.8 s). No writer can add one of the ids
        between the count and the insert: the process holds the file's lock, and its own
        threads take turns (`_DUCKDB_FILE_LOCKS`). On PostgreSQL another transaction could, so
        it always upserts."""
        self._run(conn, "insert_new_insights", created_at=datetime.now(UTC))

    def _extend(self, conn: Connection) -> None:
        """The extension statement; a separate method so tests can inject a failure."""
        self._run(conn, "extend_insights")

    def set_status(
        self,
        insight_id: str,
        status: str,
        feedback: str | None = None,
        snoozed_until: datetime | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        """Record a CSM's action on one insight (the API's write path; tests simulate users).

        feedback is kept when not given; snoozed_until is replaced (None clears it); viewed_at
        and actioned_at are stamped with `at` (default now) the first time they apply.
        Raises ValueError for an unknown status/feedback and LookupError for an unknown id.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        if feedback is not None and feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {FEEDBACKS}, not {feedback!r}")
        with self._begin() as conn:
            rows = self._run(
                conn,
                "set_status",
                id=_uuid_text(insight_id),
                status=status,
                feedback=feedback,
                snoozed_until=_utc(snoozed_until),
                at=_utc(at) or datetime.now(UTC),
            )
        if not rows:
            raise LookupError(f"no insight with id {insight_id!r}")

    # ---------------------------------------------------------------------------- reads

    def load_episodes(self, since: date) -> pl.DataFrame:
        """Every insight last seen on or after `since` (the sink decides continuation)."""
        with self._connect() as conn:
            return self._run_frame(conn, "select_episodes", EPISODE_SCHEMA, since=since)

    def query_insights(
        self,
        *,
        user_ids: list[str] | None = None,
        customer_id: str | None = None,
        limit: int = 20,
        offset: int = 0,
        as_of: datetime | None = None,
    ) -> pl.DataFrame:
        """The feed: open insights best first (priority high..low, score, newest, id).

        Hides insights expired at `as_of` (default now), dismissed ones and those snoozed past
        `as_of`. `user_ids=None` means every CSM; an empty list matches nobody.
        """
        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_feed",
                _expanding={"user_ids": String()},
                as_of=_utc(as_of) or datetime.now(UTC),
                all_users=user_ids is None,
                user_ids=list(user_ids or []),
                customer_id=customer_id,
                limit=int(limit),
                offset=int(offset),
            )
        return _frame(rows, INSIGHT_SCHEMA)

    def get_insights(self, ids: list[str] | None = None) -> pl.DataFrame:
        """Every column of the given insights (all when None), by id; unknown ids are absent."""
        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_insights",
                _expanding={"ids": Uuid(as_uuid=False)},
                all_ids=ids is None,
                ids=[_uuid_text(i) for i in ids or []],
            )
        return _frame(rows, INSIGHT_SCHEMA)

    def count_insights(self) -> int:
        """Number of rows in the insights table."""
        with self._connect() as conn:
            return self._scalar(conn, "count_insights")

    def dispose(self) -> None:
        """Close pooled connections (a DuckDB file is then free for other processes).

        A DuckDB file's engine is shared by the process and pools nothing (NullPool): every
        connection is already closed when its call or `session` ends, so nothing is left to
        close."""
        if not self._shared_engine:
            self._engine.dispose()

    @contextmanager
    def session(self) -> Iterator[InsightStore]:
        """The calls this thread makes inside the block share ONE connection, closed at its end.

        For a few calls in a row (a step's reads, or a write and its count): a DuckDB file is
        opened once instead of once per call (each open costs ~25 ms of CPU). Keep computation
        out of the block: the file is held, by this process, for the block's whole length.
        Each call keeps its own transaction. Other threads, and other stores, are unaffected
        (they wait for the file as for any call). A no-op on PostgreSQL and in-memory DuckDB,
        whose pools already keep their connections, and inside another session."""
        if not self._shared_engine or getattr(self._held, "conn", None) is not None:
            yield self
            return
        with self._engine.connect() as conn:
            self._held.conn = conn
            try:
                yield self
            finally:
                self._held.conn = None

    # --- narrative cache (Claude) ---

    def get_narratives(self, keys: list[str]) -> dict[str, dict[str, str]]:
        """Cached narratives by cache key ({title, summary, so_what, action}); absent keys are
        simply missing. The Claude narrator asks once per run for all its keys."""
        if not keys:
            return {}
        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_narrative_cache",
                _expanding={"keys": String()},
                keys=sorted(set(keys)),
            )
        return {
            str(key): {"title": t, "summary": s, "so_what": w, "action": a}
            for key, t, s, w, a in rows
        }

    def put_narratives(self, rows: list[dict[str, Any]]) -> int:
        """Keep validated narratives (keys: cache_key, insight_type, model, prompt_version,
        title, summary, so_what, action, input_tokens, output_tokens) in one transaction; a key
        already cached is left as it is (first writer wins, so concurrent runs agree).

        Returns the number of rows given (not how many were new: both backends count an ignored
        conflict differently)."""
        if not rows:
            return 0
        now = datetime.now(UTC)
        with self._begin() as conn:
            for row in rows:
                self._run(
                    conn,
                    "insert_narrative_cache",
                    cache_key=row["cache_key"],
                    insight_type=row["insight_type"],
                    model=row["model"],
                    prompt_version=row["prompt_version"],
                    title=row["title"],
                    summary=row["summary"],
                    so_what=row["so_what"],
                    action=row["action"],
                    input_tokens=int(row.get("input_tokens") or 0),
                    output_tokens=int(row.get("output_tokens") or 0),
                    created_at=now,
                )
        return len(rows)

    # --- digests ---

    def digest_insights(
        self, last_day: date, *, open_after: datetime, as_of: datetime
    ) -> pl.DataFrame:
        """Insights a digest covering up to `last_day` may carry (lib/digest.py picks the top).

        Raised on or before `last_day`, not expired at `open_after` (the start of the covered
        window, or its end for a daily digest), neither dismissed nor actioned, and not snoozed
        past `as_of`. Status is today's: the table keeps no history of it.
        """
        with self._connect() as conn:
            return self._run_frame(
                conn,
                "select_digest_insights",
                {
                    "id": pl.String(),
                    "customer_id": pl.String(),
                    "customer_name": pl.String(),
                    "user_id": pl.String(),
                    "partition_date": pl.Date(),
                    "last_seen_date": pl.Date(),
                    "category": pl.String(),
                    "type": pl.String(),
                    "priority": pl.String(),
                    "score": pl.Float64(),
                    "title": pl.String(),
                    "summary": pl.String(),
                    "recommended_action": pl.String(),
                    "status": pl.String(),
                    "score_parts": pl.String(),
                },
                last_day=last_day,
                open_after=_utc(open_after),
                as_of=_utc(as_of),
            )

    def digest_preferences(self) -> pl.DataFrame:
        """Stored preferences (user_id, frequency, weekday); users without one get daily."""
        with self._connect() as conn:
            rows = self._run(conn, "select_digest_preferences")
        schema = {"user_id": pl.String(), "frequency": pl.String(), "weekday": pl.Int16()}
        return _frame(rows, schema)

    def digest_preference(self, user_id: str) -> tuple[str, int | None]:
        """One user's (frequency, weekday): what they chose, or daily (the default)."""
        with self._connect() as conn:
            rows = self._run(conn, "select_digest_preference", user_id=str(user_id))
        if not rows:
            return "daily", None
        frequency, weekday = rows[0]
        return str(frequency), None if weekday is None else int(weekday)

    def set_digest_preference(
        self,
        user_id: str,
        frequency: str,
        weekday: int | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        """Store a user's choice: 'daily', 'weekly' with the weekday it arrives (0 = Monday),
        or 'off'. Raises ValueError for anything else, before the database sees it."""
        if frequency not in ("daily", "weekly", "off"):
            raise ValueError(f"frequency must be daily, weekly or off, not {frequency!r}")
        if (frequency == "weekly") != (weekday is not None):
            raise ValueError("a weekday (0 = Monday .. 6 = Sunday) goes with weekly, and only it")
        if weekday is not None and not 0 <= int(weekday) <= 6:
            raise ValueError(f"weekday must be 0 (Monday) .. 6 (Sunday), not {weekday!r}")
        with self._begin() as conn:
            self._run(
                conn,
                "upsert_digest_preference",
                user_id=str(user_id),
                frequency=frequency,
                weekday=None if weekday is None else int(weekday),
                updated_at=_utc(at) or datetime.now(UTC),
            )

    def claim_digest(
        self,
        user_id: str,
        digest_date: date,
        kind: str,
        *,
        message_id: str,
        recipient: str,
        subject: str,
        item_count: int,
        now: datetime,
        stale_before: datetime,
    ) -> tuple[str, int] | None:
        """Register the digest (once) and claim it for sending, atomically.

        Returns (Message-ID to send with, attempts so far), or None when it was already sent or
        another run holds a claim newer than `stale_before`. The first registration's
        Message-ID is kept, so a retry is recognisably the same message.
        """
        key = {"user_id": str(user_id), "digest_date": digest_date, "kind": kind}
        with self._begin() as conn:
            self._run(conn, "insert_digest", **key, message_id=message_id, created_at=_utc(now))
            rows = self._run(
                conn,
                "claim_digest",
                **key,
                recipient=recipient,
                subject=subject,
                item_count=int(item_count),
                now=_utc(now),
                stale_before=_utc(stale_before),
            )
        if not rows:
            return None
        return str(rows[0][0]), int(rows[0][1])

    def finish_digest(
        self,
        user_id: str,
        digest_date: date,
        kind: str,
        *,
        sent: bool,
        attempts: int,
        error: str | None,
        at: datetime,
    ) -> None:
        """Record a claimed send's outcome (sent at `at`, or failed with `error`); `attempts`
        made by this run are added to the total and the claim is released."""
        with self._begin() as conn:
            self._run(
                conn,
                "finish_digest",
                user_id=str(user_id),
                digest_date=digest_date,
                kind=kind,
                status="sent" if sent else "failed",
                attempts=int(attempts),
                last_error=None if sent else error,
                sent_at=_utc(at) if sent else None,
            )

    def digests(self, first_day: date, last_day: date) -> pl.DataFrame:
        """The digest ledger for days in [first_day, last_day], for metadata, the CLI and tests."""
        with self._connect() as conn:
            rows = self._run(conn, "select_digests", first_day=first_day, last_day=last_day)
        return _frame(
            rows,
            {
                "user_id": pl.String(),
                "digest_date": pl.Date(),
                "kind": pl.String(),
                "message_id": pl.String(),
                "recipient": pl.String(),
                "subject": pl.String(),
                "item_count": pl.Int64(),
                "status": pl.String(),
                "attempts": pl.Int64(),
                "last_error": pl.String(),
                "claimed_at": _UTC,
                "created_at": _UTC,
                "sent_at": _UTC,
            },
        )

    # --- ranking ---

    def pushed_insights(
        self, day: date, *, as_of: datetime, user_ids: list[str] | None = None
    ) -> pl.DataFrame:
        """What CSMs are pushed on `day` (PUSHED_SCHEMA), each CSM's best first: their new
        insights of that day that made the daily cap (`pushed`), plus snoozed insights whose
        snooze ends during that day; dismissed, actioned and insights expired at `as_of` left
        out. `user_ids=None` means every CSM."""
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_pushed",
                _expanding={"user_ids": String()},
                all_users=user_ids is None,
                user_ids=list(user_ids or []),
                day=day,
                day_start=start,
                day_end=start + timedelta(days=1),
                as_of=_utc(as_of),
            )
        return _frame(rows, PUSHED_SCHEMA)

    def write_quality(self, frame: pl.DataFrame, first_day: date, last_day: date) -> int:
        """Replace the quality metrics of [first_day, last_day] with `frame` (QUALITY_SCHEMA of
        lib/ranking/quality.py), in ONE transaction; returns the rows written."""
        return self._replace_days(
            "quality", "stage_insight_quality", QUALITY_COLUMNS, frame, first_day, last_day
        )

    def quality(
        self,
        first_day: date,
        last_day: date,
        *,
        window_days: int | None = None,
        scope: str | None = None,
    ) -> pl.DataFrame:
        """Relevance and action rates of [first_day, last_day] (QUALITY_COLUMNS), optionally of
        one window length (1 or 28 days by default) and one scope (overall, user, type): what the
        API shows as "how useful are the insights"."""
        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_quality",
                first_day=first_day,
                last_day=last_day,
                window_days=window_days,
                scope=scope,
            )
        return _frame(rows, QUALITY_COLUMNS)

    # --- team and strategic ---

    def rollup_insights(
        self, first_day: date, last_day: date, *, lookback_days: int
    ) -> pl.DataFrame:
        """The account insights the team rollups of [first_day, last_day] count
        (ROLLUP_INSIGHT_SCHEMA): raised by `last_day` and able to matter from `lookback_days`
        before `first_day` on (not expired by then, actioned since, raised since, or with
        feedback since). Team insights (no customer) are left out."""
        since_day = first_day - timedelta(days=lookback_days)
        since = datetime(since_day.year, since_day.month, since_day.day, tzinfo=UTC)
        with self._connect() as conn:
            return self._run_frame(
                conn,
                "select_rollup_insights",
                ROLLUP_INSIGHT_SCHEMA,
                last_day=last_day,
                since=since,
                since_day=since_day,
            )

    def write_team_rollups(self, frame: pl.DataFrame, first_day: date, last_day: date) -> int:
        """Replace the team rollups of [first_day, last_day] with `frame` (lib/team.py's
        ROLLUP_COLUMNS), in ONE transaction; returns the rows written."""
        from insight_pipeline.lib.team import ROLLUP_COLUMNS

        return self._replace_days(
            "team_rollups", "stage_team_rollups", ROLLUP_COLUMNS, frame, first_day, last_day
        )

    def team_rollups(
        self,
        group_by: str,
        *,
        day: date | None = None,
        keys: list[str] | None = None,
        scope_id: str | None = None,
    ) -> pl.DataFrame:
        """One grouping (csm, manager, segment, total) of the team rollups on the latest day on
        or before `day` (the newest without one), ROLLUP_COLUMNS: only the groups in `keys`
        (None = all) and of `scope_id` (None = every scope). Who may see which rows is the
        caller's business (api/team.py, from lib/access.py's Viewer)."""
        from insight_pipeline.lib.team import ROLLUP_COLUMNS

        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_team_rollups",
                _expanding={"keys": String()},
                group_by=group_by,
                day=day,
                all_keys=keys is None,
                keys=list(keys or []),
                scope_id=scope_id,
            )
        return _frame(rows, ROLLUP_COLUMNS)

    def team_rollup_history(
        self, group_by: str, scope_id: str, group_key: str, first_day: date, last_day: date
    ) -> pl.DataFrame:
        """One rollup row's daily series over [first_day, last_day] (ROLLUP_HISTORY_SCHEMA):
        what the leader view charts."""
        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_team_rollup_history",
                group_by=group_by,
                scope_id=scope_id,
                group_key=group_key,
                first_day=first_day,
                last_day=last_day,
            )
        return _frame(rows, ROLLUP_HISTORY_SCHEMA)

    # --- users, tokens, feedback, shares (API) ---

    def sync_users(self, frame: pl.DataFrame, *, at: datetime | None = None) -> dict[str, int]:
        """Make the users table the directory in `frame` (user_id, name, email, role,
        manager_id), in ONE transaction: new users inserted, known ones refreshed and
        reactivated, users missing from the frame deactivated (their tokens stop working; rows
        are kept so history still names them).

        Returns {"inserted", "updated", "deactivated"}. Raises StoreWriteError, with nothing
        written, for an empty frame (it would lock everyone out), missing columns, null or
        duplicate ids, null names or an unknown role.
        """
        users = self._prepare_users(frame)
        step = "opening a transaction"
        try:
            with self._begin() as conn:
                step = "staging users"
                with self._staged(conn, "users", "stage_users", users):
                    existing = self._scalar(conn, "count_existing_users")
                    step = "upserting users"
                    self._run(conn, "upsert_users", synced_at=_utc(at) or datetime.now(UTC))
                    step = "deactivating users"
                    gone = self._run(conn, "deactivate_users")
                step = "committing"
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreWriteError(
                f"sync_users failed while {step} ({users.height} users) on {self.dialect}; "
                f"{_outcome(step)}: {type(cause).__name__}: {cause}"
            ) from exc
        return {
            "inserted": users.height - existing,
            "updated": existing,
            "deactivated": len(gone),
        }

    @staticmethod
    def _prepare_users(frame: pl.DataFrame) -> pl.DataFrame:
        missing = [c for c in _USER_COLUMNS if c not in frame.columns]
        if missing:
            raise StoreWriteError(f"users frame lacks columns {missing}; nothing was written")
        users = frame.select(pl.col(c).cast(pl.String) for c in _USER_COLUMNS)
        if users.height == 0:
            raise StoreWriteError("refusing to sync an empty directory; nothing was written")
        problems = {
            "null user_id": users.filter(pl.col("user_id").is_null()),
            "duplicate user_id": users.filter(pl.col("user_id").is_duplicated()),
            "null name": users.filter(pl.col("name").is_null()),
            f"role not in {_ROLES}": users.filter(~pl.col("role").is_in(_ROLES).fill_null(False)),
        }
        for problem, bad in problems.items():
            if bad.height:
                raise StoreWriteError(
                    f"users frame has {bad.height} row(s) with {problem}, e.g. "
                    f"{bad.row(0, named=True)}; nothing was written"
                )
        return users

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        """One directory row as a dict (USER_SCHEMA keys), or None for an unknown user."""
        with self._connect() as conn:
            rows = self._run(conn, "select_user", user_id=str(user_id))
        return _frame(rows, USER_SCHEMA).row(0, named=True) if rows else None

    def list_users(self) -> pl.DataFrame:
        """The whole directory (inactive users included), by name."""
        with self._connect() as conn:
            rows = self._run(conn, "select_users")
        return _frame(rows, USER_SCHEMA)

    def team_user_ids(self, user_id: str) -> list[str]:
        """The user and everyone reporting to them, transitively (empty for an unknown user)."""
        with self._connect() as conn:
            rows = self._run(conn, "select_team", user_id=str(user_id))
        return [str(r[0]) for r in rows]

    def create_token(
        self,
        user_id: str,
        *,
        expires_at: datetime | None = None,
        label: str | None = None,
        at: datetime | None = None,
    ) -> tuple[str, str]:
        """A new bearer token for an active user, as (token_id, token). Only the token's sha256
        is stored; the token itself cannot be recovered later. LookupError for an unknown or
        inactive user."""
        from insight_pipeline.lib.tokens import new_token

        user = self.get_user(user_id)
        if user is None or not user["active"]:
            raise LookupError(f"no active user {user_id!r} in the users table")
        token_id, token, token_hash = new_token()
        with self._begin() as conn:
            self._run(
                conn,
                "insert_token",
                token_id=token_id,
                token_hash=token_hash,
                user_id=str(user_id),
                label=label,
                created_at=_utc(at) or datetime.now(UTC),
                expires_at=_utc(expires_at),
            )
        return token_id, token

    def token_record(self, token_id: str) -> dict[str, Any] | None:
        """A token's hash, expiry and revocation with its user's directory row, or None. The
        caller (api/auth.py) compares the hash in constant time and checks the dates."""
        with self._connect() as conn:
            rows = self._run(conn, "select_token", token_id=str(token_id))
        if not rows:
            return None
        schema = {
            "token_hash": pl.String(),
            "expires_at": _UTC,
            "revoked_at": _UTC,
            **{k: v for k, v in USER_SCHEMA.items()},
        }
        return _frame(rows, schema).row(0, named=True)

    def revoke_token(self, token_id: str, *, at: datetime | None = None) -> bool:
        """Revoke a token by its public id; False when there is no such token."""
        with self._begin() as conn:
            rows = self._run(
                conn, "revoke_token", token_id=str(token_id), at=_utc(at) or datetime.now(UTC)
            )
        return bool(rows)

    def list_tokens(self, user_id: str) -> pl.DataFrame:
        """A user's tokens (ids, labels, dates; never hashes)."""
        with self._connect() as conn:
            rows = self._run(conn, "select_tokens", user_id=str(user_id))
        return _frame(rows, TOKEN_SCHEMA)

    def record_action(
        self,
        insight_id: str,
        user_id: str,
        action: str,
        feedback: str | None = None,
        snooze_until: datetime | None = None,
        at: datetime | None = None,
    ) -> str:
        """A user's action on an insight: the insight's status, feedback, snoozed_until and
        actioned_at change AND a row is appended to insight_feedback, in ONE transaction. The
        single write path of the API and of the feedback simulation; returns the event id.

        dismiss -> dismissed, snooze -> snoozed until `snooze_until` (required, after `at`),
        actioned -> actioned (actioned_at stamped once). Feedback is kept when not given.
        Raises ValueError for bad input and LookupError for an unknown insight (nothing
        written). Who may act is the caller's business (lib/access.py).
        """
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
        if feedback is not None and feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {FEEDBACKS}, not {feedback!r}")
        when = _utc(at) or datetime.now(UTC)
        until = _utc(snooze_until)
        if action == "snooze":
            if until is None:
                raise ValueError("snooze_until is required to snooze")
            if until <= when:
                raise ValueError(f"snooze_until must be in the future (after {when.isoformat()})")
        elif until is not None:
            raise ValueError("snooze_until applies only to the snooze action")
        key = _uuid_text(insight_id)
        event_id = str(uuid.uuid4())
        with self._begin() as conn:
            if self.dialect == "postgresql":
                # Stamp the action only once its row is locked: a concurrent action on the same
                # insight then commits either wholly before (earlier time) or after (later
                # time), so the history's last action is the status the row shows. (DuckDB
                # runs one transaction at a time per file here.)
                if not self._run(conn, "lock_insight", id=key):
                    raise LookupError(f"no insight with id {insight_id!r}")
                when = _utc(at) or datetime.now(UTC)
            if not self._run(
                conn,
                "set_status",
                id=key,
                status=STATUS_OF_ACTION[action],
                feedback=feedback,
                snoozed_until=until,
                at=when,
            ):
                raise LookupError(f"no insight with id {insight_id!r}")
            self._run(
                conn,
                "insert_feedback",
                id=event_id,
                insight_id=key,
                user_id=str(user_id),
                action=action,
                feedback=feedback,
                snoozed_until=until,
                at=when,
            )
        return event_id

    def feedback_events(self, since: date | None = None) -> pl.DataFrame:
        """The feedback history (FEEDBACK_SCHEMA), oldest first; from midnight UTC of `since`
        when given. What the ranking's preference learning reads."""
        start = datetime(since.year, since.month, since.day, tzinfo=UTC) if since else None
        with self._connect() as conn:
            return self._run_frame(conn, "select_feedback", FEEDBACK_SCHEMA, since=start)

    def mark_viewed(self, insight_id: str, user_id: str, *, at: datetime | None = None) -> None:
        """`user_id` opened the insight: the owner's new becomes viewed (viewed_at stamped
        once); any other viewer gets a read receipt. Visibility is the caller's business."""
        key = _uuid_text(insight_id)
        when = _utc(at) or datetime.now(UTC)
        with self._begin() as conn:
            if not self._run(conn, "mark_viewed", insight_id=key, user_id=str(user_id), at=when):
                self._run(conn, "insert_read", insight_id=key, user_id=str(user_id), at=when)

    def mark_all_read(self, user_id: str, *, at: datetime | None = None) -> int:
        """Everything `user_id` sees is read as of `at`: their own new insights become viewed,
        and whatever else they see that was raised or shared before `at` counts as read.
        Returns how many of their own insights changed."""
        when = _utc(at) or datetime.now(UTC)
        attempt = 0
        while True:
            try:
                with self._begin() as conn:
                    changed = self._run(conn, "mark_all_viewed", user_id=str(user_id), at=when)
                    self._run(conn, "set_read_all", user_id=str(user_id), at=when)
                return len(changed)
            except OperationalError as exc:
                # It updates many rows. It locks them in id order, as the sink does, but any
                # other writer locking several of them in another order can still deadlock
                # with it: PostgreSQL then fails one side. The whole transaction was rolled
                # back and is idempotent, so it is simply run again.
                if attempt == _CONFLICT_RETRIES or not _is_conflict(exc):
                    raise
                time.sleep(0.05 * 2**attempt)
                attempt += 1

    def share_insight(
        self,
        insight_id: str,
        from_user_id: str,
        to_user_ids: list[str],
        note: str | None = None,
        *,
        at: datetime | None = None,
    ) -> list[str]:
        """Share an insight with colleagues (it shows in their feed, marked shared, with who
        shared it and the note; unread to them until they open it). Sharing again replaces
        the note. Returns the recipients (deduplicated, the sharer left out).

        Raises LookupError for an unknown insight and ValueError naming recipients who are not
        active users; nothing is written then.
        """
        key = _uuid_text(insight_id)
        when = _utc(at) or datetime.now(UTC)
        recipients = [u for u in dict.fromkeys(str(u) for u in to_user_ids) if u != from_user_id]
        with self._begin() as conn:
            found = self._run(
                conn,
                "select_insights",
                _expanding={"ids": Uuid(as_uuid=False)},
                all_ids=False,
                ids=[key],
            )
            if not found:
                raise LookupError(f"no insight with id {insight_id!r}")
            active = {
                u: _frame(self._run(conn, "select_user", user_id=u), USER_SCHEMA)
                .get_column("active")
                .any()
                for u in recipients
            }
            unknown = [u for u, ok in active.items() if not ok]
            if unknown:
                raise ValueError(f"not active users: {', '.join(unknown)}")
            for user in recipients:
                self._run(
                    conn,
                    "upsert_share",
                    insight_id=key,
                    to_user_id=user,
                    from_user_id=str(from_user_id),
                    note=note,
                    at=when,
                )
                self._run(conn, "delete_read", insight_id=key, user_id=user)
        return recipients

    def feed(
        self,
        viewer: Viewer,
        filters: FeedFilters | None = None,
        *,
        limit: int = 20,
        offset: int = 0,
        as_of: datetime | None = None,
    ) -> FeedPage:
        """One page of what `viewer` may see (their scope plus insights shared with them) under
        `filters`, best first, with the total and unread counts over all pages. Nothing outside
        the scope is ever counted."""
        filters = filters or FeedFilters()
        params = filters.params()
        if params["insight_id"] is not None:
            params["insight_id"] = _uuid_text(params["insight_id"])
        params.update(
            viewer_id=viewer.user_id,
            all_users=viewer.sees_all,
            owner_ids=list(viewer.owner_ids or ()),
            read_all_at=_utc(viewer.read_all_at),
            as_of=_utc(as_of) or datetime.now(UTC),
        )
        owners = {"owner_ids": String()}
        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_api_feed",
                _expanding=owners,
                limit=int(limit),
                offset=int(offset),
                **params,
            )
            if rows:  # the page's rows carry the totals (window counts)
                total, unread = rows[0][-2:]
            else:
                total, unread = self._run(conn, "count_api_feed", _expanding=owners, **params)[0]
        frame = _frame([r[:-2] for r in rows], FEED_SCHEMA)
        return FeedPage(frame, int(total), int(unread or 0))

    def team_rollup(
        self, viewer: Viewer, date_from: date, date_to: date, *, as_of: datetime | None = None
    ) -> pl.DataFrame:
        """Counts per CSM x category x priority (ROLLUP_SCHEMA) of the insights raised in
        [date_from, date_to] for the owners in `viewer`'s scope (shares excluded); sum them
        with `lib.access.rollup`."""
        with self._connect() as conn:
            rows = self._run(
                conn,
                "select_team_rollup",
                _expanding={"owner_ids": String()},
                all_users=viewer.sees_all,
                owner_ids=list(viewer.owner_ids or ()),
                date_from=date_from,
                date_to=date_to,
                as_of=_utc(as_of) or datetime.now(UTC),
            )
        return _frame(rows, ROLLUP_SCHEMA)

    # ---------------------------------------------------------------------------- helpers

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection for reads: the session's (its transaction rolled back after, as closing
        a connection does) or a fresh one, closed after."""
        held: Connection | None = getattr(self._held, "conn", None)
        if held is None:
            with self._engine.connect() as conn:
                yield conn
            return
        transaction = held.begin()
        try:
            yield held
        finally:
            transaction.rollback()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A connection in a transaction, committed at the end or rolled back on error: on the
        session's connection or a fresh one, closed after."""
        held: Connection | None = getattr(self._held, "conn", None)
        if held is None:
            with self._engine.begin() as conn:
                yield conn
            return
        with held.begin():
            yield held

    def _run(
        self,
        conn: Connection,
        sql_name: str,
        /,
        _expanding: Mapping[str, TypeEngine[Any]] | None = None,
        **params: Any,
    ) -> list[tuple[Any, ...]]:
        """Execute the named SQL file with bound params and always drain the result.

        Draining matters on DuckDB: an unfetched result blocks the next statement.
        """
        statement = text(load_sql(sql_name, self.dialect))
        if _expanding:
            # typed, so an empty list still compiles and PostgreSQL compares like with like
            statement = statement.bindparams(
                *(bindparam(p, expanding=True, type_=t) for p, t in _expanding.items())
            )
        return _fetch(conn.execute(statement, params))

    def _run_frame(
        self, conn: Connection, sql_name: str, schema: dict[str, pl.DataType], /, **params: Any
    ) -> pl.DataFrame:
        """`_run`'s rows as a frame of `schema`. DuckDB's are fetched as Arrow: as Python tuples
        (aware datetimes), a day run's 10k episodes or 70k rollup insights cost 0.1-0.3 s more."""
        if self.dialect != "duckdb":
            return _frame(self._run(conn, sql_name, **params), schema)
        # A relation's Arrow, not a DB-API cursor's (which DuckDB copies, with a warning): the
        # statement compiled to DuckDB's positional parameters.
        compiled = text(load_sql(sql_name, self.dialect)).compile(dialect=conn.dialect)
        bound = compiled.construct_params(params)
        relation = conn.connection.driver_connection.sql(
            str(compiled), params=[bound[name] for name in compiled.positiontup or []]
        )
        return pl.from_arrow(relation.to_arrow_table()).cast(schema)  # instants kept, in UTC

    def _scalar(self, conn: Connection, sql_name: str, /, **params: Any) -> int:
        rows = self._run(conn, sql_name, **params)
        return int(rows[0][0])

    def _replace_days(
        self,
        kind: str,
        stage: str,
        columns: Mapping[str, pl.DataType],
        frame: pl.DataFrame,
        first_day: date,
        last_day: date,
    ) -> int:
        """Replace a day-keyed table's rows of [first_day, last_day] with `frame` in ONE
        transaction (`delete_<kind>`, then `insert_<kind>` from the staged rows); returns the
        rows written. Re-running a range is idempotent."""
        rows = frame.select([pl.col(c).cast(t) for c, t in columns.items()])
        with self._begin() as conn:
            self._run(conn, f"delete_{kind}", first_day=first_day, last_day=last_day)
            if rows.height:
                with self._staged(conn, kind, stage, rows):
                    self._run(conn, f"insert_{kind}", computed_at=datetime.now(UTC))
        return rows.height

    @contextmanager
    def _staged(
        self, conn: Connection, kind: str, table: str, frame: pl.DataFrame
    ) -> Iterator[None]:
        """Make `frame` queryable as `table` inside the current transaction, in bulk."""
        if self.dialect == "postgresql":
            self._run(conn, f"stage_{kind}_create")
            copy_sql = load_sql(f"stage_{kind}_copy", self.dialect)
            raw = conn.connection.driver_connection
            with raw.cursor() as cursor, cursor.copy(copy_sql) as pg_copy:
                for chunk in _csv_ready(frame).iter_slices(_COPY_CHUNK_ROWS):
                    pg_copy.write(chunk.write_csv(include_header=False, quote_style="non_numeric"))
            yield  # the temp table is dropped at commit or rollback
            return
        raw = conn.connection.driver_connection
        raw.register(table, frame.to_arrow())
        try:
            yield
        finally:
            # cleanup only: after a failed statement DuckDB may refuse; the error that matters
            # is the one propagating, and the view dies with the connection anyway
            with suppress(Exception):
                raw.unregister(table)


# Connections of one process to one DuckDB file, one at a time (connect to close). DuckDB 2.0
# misbehaves when threads of a process hold connections to the same file at once, and the store
# runs in threaded servers (the API) and threaded tests:
# - opening races: a connection can get the database instance before the client registered its
#   Arrow scan, and `register` then fails ("Table Function with name python_arrow_scan does not
#   exist");
# - lost updates: an `update .. returning` (record_action's set_status) running while another
#   connection upserts other columns of the same row can silently put back the row's older
#   values (the sink's new title is gone, no error raised), even with the transactions
#   themselves serialised.
# Both reproduce in test_reliability_faults.py. Other processes cannot use the file meanwhile
# anyway (DuckDB's file lock), and a store call holds its connection for milliseconds.
_DUCKDB_FILE_LOCKS: dict[str, threading.RLock] = {}
_DUCKDB_FILE_LOCKS_GUARD = threading.Lock()
_HOLDS_FILE_LOCK = "insight_pipeline_file_lock"


# Engines of DuckDB files, one per URL and lock timeout per process: a NullPool engine holds no
# connection, so sharing it keeps every call's open-to-close of the file as it was, and a run,
# which opens the store once per step, pays create_engine and the dialect's first-connect set-up
# once instead of once per step.
_DUCKDB_ENGINES: dict[tuple[str, str, float], Engine] = {}


def _duckdb_file_engine(parsed: URL, database: str, lock_timeout: float) -> Engine:
    """The process's engine of a DuckDB file (NullPool, with the file-lock retry and hold)."""
    key = (
        parsed.render_as_string(hide_password=False),
        str(Path(database).expanduser().resolve()),
        lock_timeout,
    )
    with _DUCKDB_FILE_LOCKS_GUARD:
        engine = _DUCKDB_ENGINES.get(key)
    if engine is None:
        engine = create_engine(parsed, poolclass=NullPool)
        _retry_duckdb_lock(engine, database, lock_timeout)
        with _DUCKDB_FILE_LOCKS_GUARD:
            engine = _DUCKDB_ENGINES.setdefault(key, engine)
    return engine


def _retry_duckdb_lock(engine: Engine, database: str, timeout: float) -> None:
    """Retry opening a DuckDB file while another process holds its lock, up to `timeout` s;
    and hold this process's lock of the file from connect to close (see above)."""
    key = str(Path(database).expanduser().resolve())
    with _DUCKDB_FILE_LOCKS_GUARD:
        file_lock = _DUCKDB_FILE_LOCKS.setdefault(key, threading.RLock())

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Mapping[str, Any]) -> Any:
        deadline = time.monotonic() + timeout
        delay = 0.02
        file_lock.acquire()
        try:
            while True:
                try:
                    # duckdb_engine pops keys out of cparams, so every attempt gets a fresh copy
                    conn = dialect.connect(*cargs, **copy.deepcopy(dict(cparams)))
                    conn_rec.info[_HOLDS_FILE_LOCK] = True
                    return conn
                except Exception as exc:
                    if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
        except BaseException:
            file_lock.release()
            raise

    def _closed(dbapi_conn: Any, conn_rec: Any, *_: Any) -> None:
        # invalidation is followed by close: release once
        if conn_rec.info.pop(_HOLDS_FILE_LOCK, False):
            file_lock.release()

    event.listen(engine, "close", _closed)
    event.listen(engine, "invalidate", _closed)


def _fetch(result: Any) -> list[tuple[Any, ...]]:
    """All rows of a result (none for statements that return nothing), result closed."""
    try:
        return [tuple(row) for row in result.fetchall()] if result.returns_rows else []
    finally:
        result.close()


def _with_push_defaults(frame: pl.DataFrame) -> pl.DataFrame:
    """Upserts written without ranking's decision are pushed, with no rank (as before 005)."""
    missing = {"pushed": pl.lit(True), "rank_in_day": pl.lit(None, dtype=pl.Int32)}
    return frame.with_columns(
        expr.alias(name) for name, expr in missing.items() if name not in frame.columns
    )


def _prepare(frame: pl.DataFrame, schema: dict[str, pl.DataType], label: str) -> pl.DataFrame:
    """The frame reduced to `schema`'s columns and types, or StoreWriteError saying what is off."""
    if frame.height == 0:
        return pl.DataFrame(schema=schema)
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise StoreWriteError(f"{label} frame lacks columns {missing}; nothing was written")
    exprs = []
    for name, dtype in schema.items():
        col = frame.get_column(name)
        if dtype == _UTC:
            if isinstance(col.dtype, pl.Datetime):
                expr = pl.col(name).cast(pl.Datetime("us", col.dtype.time_zone))
                expr = (
                    expr.dt.convert_time_zone("UTC")
                    if col.dtype.time_zone
                    else expr.dt.replace_time_zone("UTC")
                )
            elif col.dtype in (pl.Null, pl.Date):
                expr = pl.col(name).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            else:
                raise StoreWriteError(
                    f"{label}.{name} must be a datetime (UTC), not {col.dtype}; nothing was written"
                )
        elif name in _JSON_COLUMNS and col.dtype not in (pl.String, pl.Null):
            raise StoreWriteError(
                f"{label}.{name} must be JSON text (str), not {col.dtype}; nothing was written"
            )
        else:
            expr = pl.col(name).cast(dtype, strict=True)
        exprs.append(expr.alias(name))
    try:
        prepared = frame.select(exprs)
    except Exception as exc:
        raise StoreWriteError(f"{label} frame has bad values: {exc}; nothing was written") from exc
    key = "id" if "id" in schema else next(iter(schema))
    duplicated = prepared.filter(pl.col(key).is_duplicated())
    if not duplicated.is_empty():
        raise StoreWriteError(
            f"{label} frame repeats {duplicated.get_column(key).n_unique()} {key}(s), e.g. "
            f"{duplicated.item(0, key)!r}; nothing was written"
        )
    return prepared


def _csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """Instants as explicit UTC ISO text, so COPY never depends on the session time zone."""
    return frame.with_columns(
        pl.col(c).dt.strftime("%Y-%m-%d %H:%M:%S%.6f+00:00")
        for c, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime)
    )


def _frame(rows: list[tuple[Any, ...]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Rows as a frame of the documented schema (instants converted to UTC)."""
    return pl.DataFrame(rows, schema=schema, orient="row")


def _utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime; naive input is taken as UTC (the house convention)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _uuid_text(value: str) -> str:
    """Canonical UUID text, or ValueError naming the bad id (before it reaches the database)."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"not an insight id (UUID): {value!r}") from None

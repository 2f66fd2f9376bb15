"""The Store: the one module that runs SQL on the product's tables (architecture, "Store" seam).

The SQL itself lives in `sql/` (see `sql_files`); this module binds values, owns transactions and
hides the differences between PostgreSQL and the embedded DuckDB default:

- PostgreSQL (`postgresql+psycopg://...`): pooled engine; bulk writes COPY a CSV rendering of the
  frame into a temp table, then one INSERT .. SELECT .. ON CONFLICT.
- DuckDB (`duckdb:///path`): a connection per call (NullPool) so the file lock is held only while
  a call runs and another process can open the file between calls; opening retries for a while
  when another process holds the lock. Bulk writes register the Arrow table on the connection.

Conventions of the frames going in and out:
- ids are UUID strings; dates are `pl.Date`; instants are `pl.Datetime("us", "UTC")` (naive input
  is taken as UTC); JSON columns are JSON text.
- `expires_at` null means "never expires": the feed keeps it and `greatest` treats it as latest.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import Connection, Engine, String, Uuid, bindparam, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.types import TypeEngine

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

#: Columns of `load_episodes`.
EPISODE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "fingerprint": pl.String(),
    "partition_date": pl.Date(),
    "last_seen_date": pl.Date(),
    "status": pl.String(),
    "expires_at": _UTC,
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

_JSON_COLUMNS = ("evidence", "recommended_action", "score_parts")
_STAGE_UPSERTS = "stage_insight_upserts"
_STAGE_EXTENSIONS = "stage_insight_extensions"
_MIGRATION_LOCK_KEY = 7_351_946_020_001  # arbitrary, fixed: "insight_pipeline migrations"
_COPY_CHUNK_ROWS = 50_000


class StoreWriteError(RuntimeError):
    """A write failed and was rolled back: the insights table is exactly as before the call."""


class InsightStore:
    """Every read and write of the insights tables: for the sink, API, digest and CLI."""

    def __init__(self, url: str, *, pool_size: int = 5, lock_timeout: float = 10.0) -> None:
        """Open an engine for `url` (no connection yet); a DuckDB file's folder is created.

        `lock_timeout` (DuckDB files only): seconds to keep retrying while another process
        holds the file's lock.
        """
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "duckdb":
            database = parsed.database or ":memory:"
            if database == ":memory:":
                # one shared connection, else every call would see a fresh empty database
                engine = create_engine(parsed, poolclass=StaticPool)
            else:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(parsed, poolclass=NullPool)
                _retry_duckdb_lock(engine, lock_timeout)
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
        applied: list[str] = []
        for version, name, statements in migrations(self.dialect):
            with self._engine.begin() as conn:
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

    def schema_versions(self) -> list[tuple[int, str, datetime]]:
        """The applied migrations as (version, name, applied_at), oldest first."""
        with self._engine.begin() as conn:
            self._run(conn, "schema_version_create")
            return [(int(v), str(n), a) for v, n, a in self._run(conn, "schema_version_select")]

    # ---------------------------------------------------------------------------- writes

    def write_insights(self, upserts: pl.DataFrame, extensions: pl.DataFrame) -> dict[str, int]:
        """Upsert new and re-detected insights and extend continuing episodes, in ONE transaction.

        Upserts insert as status 'new'; an existing id gets fresh content, the earliest
        partition_date and the latest last_seen_date/expires_at, and keeps every user column
        (status, feedback, snoozed_until, viewed_at, actioned_at) and created_at. Extensions
        (id, last_seen_date, expires_at) only move those two later; unknown ids are ignored.
        Duplicate ids within a frame are rejected (their outcome would depend on row order).

        Returns {"inserted", "updated", "extended"}. Raises StoreWriteError after rollback.
        """
        ups = _prepare(upserts, UPSERT_SCHEMA, "upserts")
        ext = _prepare(extensions, EXTENSION_SCHEMA, "extensions")
        counts = {"inserted": 0, "updated": 0, "extended": 0}
        if ups.is_empty() and ext.is_empty():
            return counts
        step = "opening a transaction"
        try:
            with self._engine.begin() as conn:
                if not ups.is_empty():
                    step = "staging upserts"
                    with self._staged(conn, "upserts", _STAGE_UPSERTS, ups):
                        step = "counting existing ids"
                        updated = self._scalar(conn, "count_existing_upserts")
                        step = "upserting"
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
                step = "committing"
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreWriteError(
                f"write_insights failed while {step} ({ups.height} upserts, {ext.height} "
                f"extensions) on {self.dialect}; rolled back, nothing was written: "
                f"{type(cause).__name__}: {cause}"
            ) from exc
        return counts

    def _upsert(self, conn: Connection) -> None:
        """The upsert statement; a separate method so tests can inject a failure after it."""
        self._run(conn, "upsert_insights", created_at=datetime.now(UTC))

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
        with self._engine.begin() as conn:
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
        with self._engine.connect() as conn:
            rows = self._run(conn, "select_episodes", since=since)
        return _frame(rows, EPISODE_SCHEMA)

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
        with self._engine.connect() as conn:
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
        with self._engine.connect() as conn:
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
        with self._engine.connect() as conn:
            return self._scalar(conn, "count_insights")

    def dispose(self) -> None:
        """Close pooled connections (a DuckDB file is then free for other processes)."""
        self._engine.dispose()

    # ---------------------------------------------------------------------------- helpers

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

    def _scalar(self, conn: Connection, sql_name: str, /, **params: Any) -> int:
        rows = self._run(conn, sql_name, **params)
        return int(rows[0][0])

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


def _retry_duckdb_lock(engine: Engine, timeout: float) -> None:
    """Retry opening a DuckDB file while another process holds its lock, up to `timeout` s."""

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Mapping[str, Any]) -> Any:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                # duckdb_engine pops keys out of cparams, so every attempt gets a fresh copy
                return dialect.connect(*cargs, **copy.deepcopy(dict(cparams)))
            except Exception as exc:
                if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)


def _fetch(result: Any) -> list[tuple[Any, ...]]:
    """All rows of a result (none for statements that return nothing), result closed."""
    try:
        return [tuple(row) for row in result.fetchall()] if result.returns_rows else []
    finally:
        result.close()


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
    duplicated = prepared.filter(pl.col("id").is_duplicated())
    if not duplicated.is_empty():
        raise StoreWriteError(
            f"{label} frame repeats {duplicated.get_column('id').n_unique()} id(s), e.g. "
            f"{duplicated.item(0, 'id')!r}; nothing was written"
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

"""The source side of the data contract: table specs, reading, validation and quarantine.

A source is a directory (one `<table>.parquet` or `<table>.csv` per table) or any SQLAlchemy URL.
Structural problems (a missing required table or column, an unparseable value) fail with a
`ContractError` naming table, column and an example row. Row-level problems (duplicate keys,
negative usage, unknown ids, null keys) are split off into a quarantine frame and counted, never
silently dropped and never double counted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import sqlalchemy as sa

from insight_pipeline.lib.paths import data_dir

TEXT = pl.String
DATE = pl.Date
TS = pl.Datetime("us", "UTC")
FLOAT = pl.Float64
INT = pl.Int64


@dataclass(frozen=True)
class TableSpec:
    """What the contract says about one source table."""

    name: str
    required: bool
    columns: dict[str, pl.DataType]
    key: tuple[str, ...] = ()
    refs: dict[str, str] = field(default_factory=dict)
    """column -> referenced table (by its first key column); unknown ids are quarantined."""
    non_negative: tuple[str, ...] = ()
    not_null: tuple[str, ...] = ()
    """Columns besides the key without which a row means nothing (a measurement's value, a
    customer's CSM): a null there is quarantined and counted, never read as 0 or dropped."""
    date_column: str | None = None
    """The column a look-back window filters on (rows after the partition day are never read)."""
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    """Columns of the contract's lower_snake labels (roles, meeting types, priorities,
    segments, directions, metric names): exports spell them `QBR`, `Check-in`, `Mid Market`,
    `DAU`, so case, spaces and hyphens are normalised when typed (a label the contract does
    not name, `P1` or `Demo call`, is spelt alike and matches no rule: `demo_call`)."""
    synonyms: dict[str, dict[str, str]] = field(default_factory=dict)
    """column -> {label as normalised: the contract's label}: the vocabularies of common tools
    for the same thing (a ticket's `P1` or `Critical` is the contract's `urgent`), mapped when
    typed so that a rule keyed on the contract's label sees them (`LABEL_SYNONYMS`)."""

    def only(self, columns: Sequence[str]) -> TableSpec:
        """This table read for some of its columns (and its date column, which windows it):
        typed and checked like the whole table, but a reader that needs three columns of a
        wide table does not decode or hold the rest."""
        unknown = [c for c in columns if c not in self.columns]
        if unknown:
            raise ValueError(f"table {self.name!r} has no column(s) {unknown}")
        keep = [c for c in self.columns if c in columns or c == self.date_column]
        return replace(
            self,
            columns={c: self.columns[c] for c in keep},
            key=tuple(c for c in self.key if c in keep),
            refs={c: t for c, t in self.refs.items() if c in keep},
            non_negative=tuple(c for c in self.non_negative if c in keep),
            not_null=tuple(c for c in self.not_null if c in keep),
            enums={c: v for c, v in self.enums.items() if c in keep},
            labels=tuple(c for c in self.labels if c in keep),
            synonyms={c: v for c, v in self.synonyms.items() if c in keep},
        )


LABEL_SYNONYMS: dict[str, dict[str, str]] = {
    # Zendesk and Freshdesk use the contract's four; Jira highest..lowest; ServiceNow
    # "1 - Critical".."5 - Planning"; many teams P1..P4 or Sev1..Sev4.
    "priority": {
        **{
            f"{prefix}{sep}{n}": level
            for prefix in ("p", "sev", "severity", "priority")
            for sep in ("", "_")
            for n, level in enumerate(["urgent", "urgent", "high", "normal", "low", "low"])
        },
        "critical": "urgent",
        "blocker": "urgent",
        "emergency": "urgent",
        "highest": "urgent",
        "1_critical": "urgent",
        "2_high": "high",
        "major": "high",
        "medium": "normal",
        "moderate": "normal",
        "3_moderate": "normal",
        "minor": "low",
        "lowest": "low",
        "trivial": "low",
        "4_low": "low",
        "5_planning": "low",
    },
    "direction": {
        "incoming": "inbound",
        "received": "inbound",
        "in": "inbound",
        "outgoing": "outbound",
        "sent": "outbound",
        "out": "outbound",
    },
    "channel": {"e_mail": "email", "phone": "call", "phone_call": "call", "chat_message": "chat"},
    "meeting_type": {
        "quarterly_business_review": "qbr",
        "business_review": "qbr",
        "ebr": "qbr",
        "executive_business_review": "qbr",
        "checkin": "check_in",
        "check_in_call": "check_in",
        "kickoff": "onboarding",
        "kick_off": "onboarding",
    },
    "contact_role": {
        "exec_sponsor": "executive_sponsor",
        "sponsor": "executive_sponsor",
        "economic_buyer": "decision_maker",
        "administrator": "admin",
        "end_user": "user",
    },
    "user_role": {"customer_success_manager": "csm", "team_lead": "manager"},
}
"""Other tools' words for the contract's labels, as `_normalised_labels` spells them (lower
case, spaces and hyphens as `_`). Only unambiguous ones: a word that could mean two labels
(`high` in a five-level scale) is left to the contract's meaning."""


CONTRACT: dict[str, TableSpec] = {
    spec.name: spec
    for spec in [
        TableSpec(
            "customers",
            True,
            {
                "customer_id": TEXT,
                "name": TEXT,
                "industry": TEXT,
                "segment": TEXT,
                "region": TEXT,
                "csm_user_id": TEXT,
                "arr": FLOAT,
                "plan": TEXT,
                "contract_start": DATE,
                "renewal_date": DATE,
                "churned_on": DATE,
            },
            key=("customer_id",),
            refs={"csm_user_id": "users"},
            non_negative=("arr",),
            not_null=("csm_user_id",),
            labels=("segment",),
        ),
        TableSpec(
            "users",
            True,
            {
                "user_id": TEXT,
                "name": TEXT,
                "email": TEXT,
                "role": TEXT,
                "manager_id": TEXT,
            },
            key=("user_id",),
            enums={"role": ("csm", "manager", "leader")},
            labels=("role",),
            synonyms={"role": LABEL_SYNONYMS["user_role"]},
        ),
        TableSpec(
            "usage_daily",
            True,
            {"customer_id": TEXT, "date": DATE, "metric": TEXT, "value": FLOAT},
            key=("customer_id", "date", "metric"),
            refs={"customer_id": "customers"},
            non_negative=("value",),
            not_null=("value",),
            date_column="date",
            # metric names are free text, but one export's `DAU` and another's `dau` (or the
            # entitlements' `api_calls` and the usage's `API Calls`) are the same metric
            labels=("metric",),
        ),
        TableSpec(
            "entitlements",
            False,
            {"customer_id": TEXT, "metric": TEXT, "entitled_value": FLOAT},
            key=("customer_id", "metric"),
            refs={"customer_id": "customers"},
            non_negative=("entitled_value",),
            not_null=("entitled_value",),
            labels=("metric",),
        ),
        TableSpec(
            "feature_usage_daily",
            False,
            {"customer_id": TEXT, "date": DATE, "feature": TEXT, "active_users": INT},
            key=("customer_id", "date", "feature"),
            refs={"customer_id": "customers"},
            non_negative=("active_users",),
            not_null=("active_users",),
            date_column="date",
        ),
        TableSpec(
            "contacts",
            False,
            {
                "contact_id": TEXT,
                "customer_id": TEXT,
                "name": TEXT,
                "email": TEXT,
                "title": TEXT,
                "role": TEXT,
                "started_on": DATE,
                "left_on": DATE,
            },
            key=("contact_id",),
            refs={"customer_id": "customers"},
            labels=("role",),
            synonyms={"role": LABEL_SYNONYMS["contact_role"]},
        ),
        TableSpec(
            "meetings",
            False,
            {
                "meeting_id": TEXT,
                "customer_id": TEXT,
                "start_at": TS,
                "meeting_type": TEXT,
                "sentiment": FLOAT,
            },
            key=("meeting_id",),
            refs={"customer_id": "customers"},
            date_column="start_at",
            labels=("meeting_type",),
            synonyms={"meeting_type": LABEL_SYNONYMS["meeting_type"]},
        ),
        TableSpec(
            "meeting_attendees",
            False,
            {"meeting_id": TEXT, "contact_id": TEXT},
            key=("meeting_id", "contact_id"),
            refs={"meeting_id": "meetings", "contact_id": "contacts"},
        ),
        TableSpec(
            "communications",
            False,
            {
                "message_id": TEXT,
                "customer_id": TEXT,
                "contact_id": TEXT,
                "sent_at": TS,
                "direction": TEXT,
                "channel": TEXT,
            },
            key=("message_id",),
            refs={"customer_id": "customers"},
            date_column="sent_at",
            labels=("direction", "channel"),
            synonyms={
                "direction": LABEL_SYNONYMS["direction"],
                "channel": LABEL_SYNONYMS["channel"],
            },
        ),
        TableSpec(
            "support_tickets",
            False,
            {
                "ticket_id": TEXT,
                "customer_id": TEXT,
                "opened_at": TS,
                "closed_at": TS,
                "priority": TEXT,
                "csat": FLOAT,
                "topic": TEXT,
            },
            key=("ticket_id",),
            refs={"customer_id": "customers"},
            date_column="opened_at",
            labels=("priority",),
            synonyms={"priority": LABEL_SYNONYMS["priority"]},
        ),
        TableSpec(
            "nps_responses",
            False,
            {
                "customer_id": TEXT,
                "contact_id": TEXT,
                "responded_on": DATE,
                "score": FLOAT,
                "comment": TEXT,
            },
            key=("customer_id", "contact_id", "responded_on"),
            refs={"customer_id": "customers"},
            non_negative=("score",),
            not_null=("score",),
            date_column="responded_on",
        ),
        TableSpec(
            "health_scores",
            False,
            {"customer_id": TEXT, "date": DATE, "score": FLOAT},
            key=("customer_id", "date"),
            refs={"customer_id": "customers"},
            non_negative=("score",),
            not_null=("score",),
            date_column="date",
        ),
    ]
}


class ContractError(ValueError):
    """The source breaks the contract in a way no row-level quarantine can fix."""


@dataclass
class TableReport:
    """What validation did to one table: the numbers shown in asset metadata."""

    table: str
    rows_read: int = 0
    rows_kept: int = 0
    duplicates: int = 0
    negative_values: int = 0
    unknown_ids: int = 0
    null_keys: int = 0
    null_values: int = 0
    missing: bool = False

    @property
    def quarantined(self) -> int:
        return self.rows_read - self.rows_kept

    def as_metadata(self) -> dict[str, int | bool]:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "quarantined": self.quarantined,
            "duplicates": self.duplicates,
            "negative_values": self.negative_values,
            "unknown_ids": self.unknown_ids,
            "null_keys": self.null_keys,
            "null_values": self.null_values,
        }

    def add(self, other: TableReport) -> None:
        """Count `other` (the same table, other rows: e.g. another account shard) in this one."""
        for name in (
            "rows_read",
            "rows_kept",
            "duplicates",
            "negative_values",
            "unknown_ids",
            "null_keys",
            "null_values",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Source:
    """Reads contract tables from a directory or a SQLAlchemy URL, typed and windowed."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._is_url = "://" in location
        self._engine: sa.Engine | None = None
        if not self._is_url and not Path(location).is_dir():
            raise ContractError(
                f"source directory {location!r} does not exist "
                "(set INSIGHTS_SOURCE, or run `insight-pipeline sample` first)"
            )

    # -- discovery -------------------------------------------------------------------------
    def _file(self, table: str) -> Path | None:
        """The table's one file; two (a CSV and a Parquet of the same table) are an error, as
        reading either would pass over the other without notice (a stale export, say)."""
        found = [
            path
            for suffix in (".parquet", ".csv")
            if (path := Path(self.location) / f"{table}{suffix}").exists()
        ]
        if len(found) > 1:
            raise ContractError(
                f"table {table!r} is in two files, {found[0].name} and {found[1].name}, in "
                f"{self.location}: keep one"
            )
        return found[0] if found else None

    def _sql_engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.location)
            sa.event.listen(self._engine, "connect", _utc_session(self._engine.dialect.name))
        return self._engine

    @property
    def is_database(self) -> bool:
        """A SQLAlchemy URL (reads are queries) rather than a directory of files."""
        return self._is_url

    def has(self, table: str) -> bool:
        if not self._is_url:
            return self._file(table) is not None
        return sa.inspect(self._sql_engine()).has_table(table)

    # -- reading ---------------------------------------------------------------------------
    def read(
        self,
        table: str,
        *,
        date_from: date | None = None,
        date_to: date | None = None,
        where: pl.Expr | None = None,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame | None:
        """The typed table (only rows with date_column in [date_from, date_to]); None if an
        optional table is absent. Raises ContractError for anything structural.

        `where` (on the raw columns, e.g. one account shard) is pushed into the file scan, so
        only matching rows are decoded; a SQL source applies it after reading. `columns` reads
        only those (and the date column; `TableSpec.only`)."""
        spec = CONTRACT[table] if columns is None else CONTRACT[table].only(columns)
        if not self.has(table):
            if spec.required:
                raise ContractError(f"required table {table!r} is missing from {self.location}")
            return None
        return self._typed_from(spec, self._read_raw(spec, date_from, date_to, where))

    def column(self, table: str, column: str) -> pl.Series | None:
        """One column of the whole table, typed, with no other column read or typed (a bad
        value elsewhere in the table, outside any run's window, stays unread); None if the
        table is absent. For telling an id the table holds outside a run's window from one it
        never held."""
        whole = CONTRACT[table]
        if column not in whole.columns:
            raise ValueError(f"table {table!r} has no column {column!r}")
        if not self.has(table):
            return None
        spec = TableSpec(table, whole.required, {column: whole.columns[column]})
        return self._typed_from(spec, self._read_raw(spec, None, None)).get_column(column)

    def _typed_from(self, spec: TableSpec, raw: pl.DataFrame) -> pl.DataFrame:
        """Raw rows typed to the contract (a CSV's text first checked for undecodable bytes)."""
        if not self._is_url and self._file(spec.name).suffix == ".csv":  # type: ignore[union-attr]
            _require_utf8(spec, raw)
        return _typed(spec, raw)

    def read_windows(
        self,
        table: str,
        windows: Sequence[tuple[date, date]],
        *,
        columns: Sequence[str] | None = None,
    ) -> Iterator[pl.DataFrame | None]:
        """`read(table, date_from=a, date_to=b, columns=columns)` for each window (a, b), in
        order, with a file read once: the rows of all the windows are read and typed together,
        then each window's are taken with the same filter a read of it applies (so values and
        order are those of the separate reads; with a bad value, each window is typed on its
        own and the error is that of its read). For a range run's months of
        outcome rates, which each read ~19 months of the same tables. A table without a date
        column is read once and given to every window; a database source, or a single window,
        is read window by window."""
        spec = CONTRACT[table] if columns is None else CONTRACT[table].only(columns)
        if self._is_url or len(windows) < 2 or not self.has(table):
            for date_from, date_to in windows:
                yield self.read(table, date_from=date_from, date_to=date_to, columns=columns)
            return
        if not spec.date_column:
            whole = self.read(table, columns=columns)
            for _ in windows:
                yield whole
            return
        raw = self._read_raw(
            spec, min(a for a, _ in windows), max(b for _, b in windows)
        )  # the union of the windows: each window's filter keeps a subset of it, in order
        try:
            # Typed once: typing keeps the rows and gives each value the same typed value
            # whichever rows surround it (the per-column choices - trimming, a timestamp's
            # format - change no value), so a window's rows of the typed union are its own typed
            # rows (12 months of a range run share ~18 of their 19 months: typing each window
            # was most of the reading). A value no window holds that cannot be typed (in a gap
            # between windows) only sends the windows the slow way.
            typed: pl.DataFrame | None = self._typed_from(spec, raw)
        except ContractError:
            typed = None  # then each window is typed alone and fails as its own read would
        # each row's day for the windows, worked out once (a timestamp's date, ISO text's first
        # ten characters), then each window compares it with its bounds
        day = _window_day(spec, raw.schema)
        days = raw.select(day.alias("_day")) if day is not None and typed is not None else None
        for date_from, date_to in windows:
            if typed is None:
                window = _window_filter(spec, raw.schema, date_from, date_to)
                yield self._typed_from(spec, raw if window is None else raw.filter(window))
            elif days is None:  # no day to judge by: every window keeps every row
                yield typed
            else:  # the window judged on the raw values, as a read of it does
                window = _window_filter(spec, raw.schema, date_from, date_to, pl.col("_day"))
                yield typed if window is None else typed.filter(days.select(window).to_series())

    def count(
        self, table: str, *, date_from: date | None = None, date_to: date | None = None
    ) -> int:
        """Rows `read` would return (before typing and validation); 0 for an absent table.

        A file source only decodes the date column (often only reads the Parquet footer)."""
        if not self.has(table):
            return 0
        spec = CONTRACT[table]
        if self._is_url:
            table = sa.table(spec.name, *[sa.column(c) for c in spec.columns])
            query = _sql_window(spec, table, sa.select(sa.func.count()), date_from, date_to)
            with self._sql_engine().connect() as conn:
                return int(conn.execute(query.select_from(table)).scalar_one())
        try:
            return int(self._scan(spec, date_from, date_to).select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ContractError(
                f"table {spec.name!r} cannot be read from {self._file(spec.name)}: {exc}"
            ) from exc

    def ids_typed_as_read(
        self,
        table: str,
        column: str = "customer_id",
        *,
        date_from: date | None = None,
        date_to: date | None = None,
    ) -> bool:
        """True when `column`'s raw values in the window are already what typing makes of them
        (text, trimmed, not blank), so a filter on the raw values selects the same rows as on
        the typed ones; one pass over that column of a file. True for a database (read whole,
        then typed) and an absent table."""
        if self._is_url or not self.has(table):
            return True
        scan = self._scan(CONTRACT[table], date_from, date_to)
        if scan.collect_schema().get(column) != pl.String:
            return False
        return not _needs_trim(scan.select(pl.col(column).unique()).collect().to_series())

    def file_identity(self, tables: Sequence[str]) -> str | None:
        """Name, size and modification time of each table's file (absent ones as "-"): equal
        while no file is rewritten. None for a database source, which has no such thing."""
        if self._is_url:
            return None
        parts = []
        for table in tables:
            path = self._file(table)
            stat = path.stat() if path is not None else None
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{table}:-")
        return "|".join(parts)

    def fingerprint_windows(
        self,
        table: str,
        windows: Sequence[tuple[date, date]],
        columns: Sequence[str],
        where: pl.Expr | None = None,
    ) -> list[str]:
        """For each window (a, b): the rows `read(table, date_from=a, date_to=b)` would see (of
        those `where` keeps, on the raw columns), as "<count>:<hash>" - the row count and the
        wrapping sum of a 64-bit hash of each row's `columns` as stored (order-free, so a
        rewritten file with the same rows keeps it; a changed value, an added or removed row
        changes it, duplicates included, which an XOR would cancel). One scan of a file for all
        windows: counted and hashed per day of their union, combined per window (rows every
        window keeps - a null or non-ISO date, which typing rejects - in each). A database
        source gives the count only. "-" when the table is absent."""
        spec = CONTRACT[table]
        if not self.has(table):
            return ["-"] * len(windows)
        if self._is_url:
            return [str(self.count(table, date_from=a, date_to=b)) for a, b in windows]
        if spec.date_column and windows:
            scan = self._scan(spec, min(a for a, _ in windows), max(b for _, b in windows))
        else:
            scan = self._scan(spec, None, None)
        if where is not None:
            scan = scan.filter(where)
        schema = scan.collect_schema()
        day = _window_day(spec, schema)
        if day is None:  # no date column, or not a date at all: every window keeps every row
            day = pl.lit(None, pl.Date)
        try:
            per_day = (
                scan.group_by(day.alias("_day"))
                .agg(pl.len(), pl.struct(list(columns)).hash(7).sum().alias("_hash"))
                .collect()
            )
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ContractError(
                f"table {spec.name!r} cannot be read from {self._file(spec.name)}: {exc}"
            ) from exc
        always = per_day.filter(pl.col("_day").is_null())
        out = []
        as_text = bool(spec.date_column) and schema[spec.date_column] == pl.String
        for lo, hi in windows:
            if as_text:
                lo, hi = str(lo), str(hi)  # ISO text compares as dates
            inside = per_day.filter(pl.col("_day").is_between(pl.lit(lo), pl.lit(hi)))
            parts = pl.concat([always, inside])
            rows = int(parts["len"].sum())
            digest = sum(parts["_hash"].to_list()) % 2**64
            out.append(f"{rows}:{digest:016x}")
        return out

    def _read_raw(
        self,
        spec: TableSpec,
        date_from: date | None,
        date_to: date | None,
        where: pl.Expr | None = None,
    ) -> pl.DataFrame:
        wanted = list(spec.columns)
        if self._is_url:
            frame = self._read_sql(spec, wanted, date_from, date_to)
            return frame if where is None else frame.filter(where)
        lf = self._scan(spec, date_from, date_to)
        if where is not None:
            lf = lf.filter(where)
        try:
            return _collect_contiguous(lf)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ContractError(
                f"table {spec.name!r} cannot be read from {self._file(spec.name)}: {exc}"
            ) from exc

    def _scan(self, spec: TableSpec, date_from: date | None, date_to: date | None) -> pl.LazyFrame:
        """The file, lazily: the contract's columns, rows in the date window."""
        wanted = list(spec.columns)
        path = self._file(spec.name)
        assert path is not None
        try:
            if path.suffix == ".csv":
                lf = pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
            else:
                lf = pl.scan_parquet(path)
            schema = lf.collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ContractError(f"table {spec.name!r} cannot be read from {path}: {exc}") from exc
        _require_columns(spec, list(schema.names()))
        if path.suffix == ".csv":
            try:
                lf = _csv_mirror(path, lf)
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise ContractError(
                    f"table {spec.name!r} cannot be read from {path}: {exc}"
                ) from exc
        lf = lf.select(wanted)
        window = _window_filter(spec, schema, date_from, date_to)
        return lf if window is None else lf.filter(window)

    def _read_sql(
        self, spec: TableSpec, wanted: list[str], date_from: date | None, date_to: date | None
    ) -> pl.DataFrame:
        engine = self._sql_engine()
        columns = [c["name"] for c in sa.inspect(engine).get_columns(spec.name)]
        _require_columns(spec, columns)
        table = sa.table(spec.name, *[sa.column(c) for c in wanted])
        query = _sql_window(
            spec, table, sa.select(*[table.c[c] for c in wanted]), date_from, date_to
        )
        with engine.connect() as conn:
            frame = pl.read_database(query, connection=conn, infer_schema_length=None)
        # Decimal and other driver types become the contract's types in _typed.
        return frame.with_columns(
            pl.col(c).cast(pl.Float64) for c, t in frame.schema.items() if isinstance(t, pl.Decimal)
        )

    def monthly_usage(self, date_from: date, date_to: date) -> pl.DataFrame:
        """(customer_id, month, value, first_day): usage summed per calendar month over
        [date_from, date_to], all metrics but seats_used, with the month's first day of usage.
        Aggregated while scanning, so 18 months of 100k accounts never sit in memory as daily
        rows (SQL sources are aggregated after a windowed read)."""
        days = pl.date_range(date_from, date_to, "1d", eager=True)
        if days.len() == 0:
            return self._usage_sums(
                date_from, date_to, pl.col("date").dt.truncate("1mo").alias("month")
            )
        month = _by_day(days, days.dt.truncate("1mo")).alias("month")
        return self._usage_sums(date_from, date_to, month)

    def monthly_usage_windows(self, windows: Sequence[tuple[date, date]]) -> Iterator[pl.DataFrame]:
        """`monthly_usage` of each window, from one pass over the usage: the months of a range
        run share most of their windows, and each pass reads ~18 months of usage. Usage is
        summed per customer and *segment* (the days between consecutive boundaries: month
        starts, window starts, the day after each window ends), then each window adds up its
        segments by month (one window at a time, as they are consumed)."""
        if len(windows) < 2:
            yield from (self.monthly_usage(lo, hi) for lo, hi in windows)
            return
        lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
        months = pl.date_range(lo.replace(day=1), hi, "1mo", eager=True).to_list()
        bounds = sorted(
            {*months, *(w[0] for w in windows), *(w[1] + timedelta(days=1) for w in windows)}
        )
        starts = pl.Series("segment", bounds, pl.Date)
        days = pl.date_range(lo, hi, "1d", eager=True)
        segment_of_day = starts.search_sorted(days, side="right").cast(pl.Int32) - 1
        index = _by_day(days, segment_of_day)
        sums = self._usage_sums(lo, hi, index.alias("segment")).with_columns(
            pl.lit(starts).gather(pl.col("segment")).alias("segment")
        )
        for first, last in windows:
            yield (
                sums.filter(pl.col("segment").is_between(first, last))
                .group_by("customer_id", pl.col("segment").dt.truncate("1mo").alias("month"))
                .agg(pl.col("value").sum(), pl.col("first_day").min())
            )

    def _usage_sums(self, date_from: date, date_to: date, key: pl.Expr) -> pl.DataFrame:
        """(customer_id, key, value, first_day): usage of [date_from, date_to] but seats_used,
        summed by customer and `key` (an expression of the date), with its first day."""
        wanted = (pl.col("metric") != "seats_used") & (pl.col("value") >= 0)
        if not self._is_url:
            path = self._file("usage_daily")
            if path is not None and path.suffix == ".parquet":
                lf = pl.scan_parquet(path).select("customer_id", "date", "metric", "value")
                lf = lf.with_columns(pl.col("date").cast(pl.Date))
                return (
                    lf.filter(pl.col("date").is_between(date_from, date_to) & wanted)
                    .group_by("customer_id", key)
                    .agg(pl.col("value").sum(), pl.col("date").min().alias("first_day"))
                    .collect(engine="streaming")
                )
        usage = self.read("usage_daily", date_from=date_from, date_to=date_to)
        assert usage is not None
        return (
            usage.filter(wanted)
            .group_by("customer_id", key)
            .agg(pl.col("value").sum(), pl.col("date").min().alias("first_day"))
        )

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _by_day(days: pl.Series, values: pl.Series) -> pl.Expr:
    """`values[i]` for the rows whose date is `days[i]` (`days`: consecutive, the rows' dates
    all among them): a gather by the day's offset, where working it out per row (a month's
    truncation, a search among bounds) cost ~0.15-0.3 s CPU on a year of 10k accounts' usage."""
    offset = pl.col("date").cast(pl.Int32) - days.cast(pl.Int32)[0]
    return pl.lit(values).gather(offset.clip(0, days.len() - 1))


def _collect_contiguous(scan: pl.LazyFrame) -> pl.DataFrame:
    """The scan's rows with one chunk per column.

    A file scan returns a chunk per row group (thousands after a date filter), and polars copies
    every column of a many-chunk frame into one chunk at each select, filter or join on it,
    while the chunked frame is still alive: the typing and the quarantine held the 16 weeks of
    feature usage of 100k accounts three times over (4.1 GB). Made contiguous once here, the
    frame is copied once and the operations after it copy nothing (3.0 GB)."""
    return scan.collect().rechunk()


def _window_filter(
    spec: TableSpec,
    schema: pl.Schema,
    date_from: date | None,
    date_to: date | None,
    day: pl.Expr | None = None,
) -> pl.Expr | None:
    """The rows of a raw file table (`schema`: its columns as read) in the date window; None
    when every row is kept. `day`: a column already holding `_window_day` of the rows (only
    when that is not None)."""
    day = _window_day(spec, schema) if day is None else day
    if day is None or not (date_from or date_to):
        return None
    as_text = schema[spec.date_column] == pl.String  # ISO text compares as dates
    lo, hi = (str(d) if as_text and d else d for d in (date_from, date_to))
    keep = day.is_null()
    bounds = [keep | (day >= pl.lit(lo))] if lo is not None else []
    if hi is not None:
        bounds.append(keep | (day <= pl.lit(hi)))
    return pl.all_horizontal(bounds)


def _window_day(spec: TableSpec, schema: pl.Schema) -> pl.Expr | None:
    """The day a raw row belongs to for date windows: a date, or the first 10 characters of ISO
    text; null for a row every window keeps (no date, or text that is not ISO: kept whatever
    the window, so that typing fails on it with a clear error rather than the window silently
    dropping every row of a file written with 03/01/2026-style dates). None when the table has
    no date column or it holds no dates at all (typing says so)."""
    column = spec.date_column
    if not column:
        return None
    dtype = schema[column]
    col = pl.col(column)
    if dtype == pl.String:
        text = col.str.strip_chars()
        return pl.when(text.str.contains(r"^\d{4}-\d{2}-\d{2}")).then(text.str.slice(0, 10))
    if dtype == pl.Date:
        return col
    if isinstance(dtype, pl.Datetime):
        return col.cast(pl.Date)
    return None


CSV_MIRROR_MIN_BYTES = 8_000_000
"""CSV files from this size on are read through a Parquet mirror (see `_csv_mirror`)."""


def _csv_mirror(path: Path, scan: pl.LazyFrame) -> pl.LazyFrame:
    """`scan` (the CSV file at `path`, every column as text), from a Parquet mirror if large.

    A large file is parsed once into a Parquet mirror of exactly those text columns, under
    `<data dir>/source_mirror/`, named by the file's path, size and modification time: a run
    scans a table several times (row count, window, monthly sums) and each daily run reads the
    same file again, and parsing CSV costs ~10x scanning Parquet (15M usage rows: 1.4 s a scan
    against 0.16 s, the mirror written in 2.1 s). A changed file gets a new mirror and the old
    one is removed. The header is checked before (a missing column is reported as such); the
    typing, windows and errors after this are the CSV's own (a file that cannot be parsed fails
    here, as its first scan would). Where the data directory cannot be written, the CSV is
    scanned directly."""
    stat = path.stat()
    if stat.st_size < CSV_MIRROR_MIN_BYTES:
        return scan
    folder = (
        data_dir() / "source_mirror" / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    )
    mirror = folder / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}.parquet"
    if not mirror.exists():
        tmp = folder / f".{mirror.name}.{os.getpid()}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            scan.sink_parquet(tmp, compression="lz4")
            tmp.replace(mirror)  # atomic: a concurrent run sees no half-written mirror
        except OSError:
            return scan
        finally:
            tmp.unlink(missing_ok=True)
        for stale in folder.glob(f"{path.stem}-*.parquet"):
            if stale != mirror:
                stale.unlink(missing_ok=True)
    return pl.scan_parquet(mirror)


_UTC_SESSION = {
    "postgresql": "SET TIME ZONE 'UTC'",
    "mysql": "SET time_zone = '+00:00'",
    "mariadb": "SET time_zone = '+00:00'",
    "duckdb": "SET TimeZone = 'UTC'",
}


def _utc_session(dialect: str) -> Callable[[Any, Any], None]:
    """A connect hook that puts a source's database sessions in UTC. The contract's timestamps
    are UTC and so are a window's bounds, but a database compares a timestamp-with-zone column
    with a date as midnight in the session's zone: a database whose default zone is
    Asia/Kolkata would move every day's window 5.5 hours (a message at 20:00 UTC on the run's
    last day left out, one of the evening before taken in). Committed, so that the pool's
    reset (a rollback) keeps it."""
    statement = _UTC_SESSION.get(dialect)

    def hook(dbapi_connection: Any, _record: Any) -> None:
        if statement is None:
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        dbapi_connection.commit()

    return hook


def _sql_window(
    spec: TableSpec,
    table: sa.TableClause,
    query: sa.Select,
    date_from: date | None,
    date_to: date | None,
) -> sa.Select:
    """`query` restricted to rows whose date column lies in [date_from, date_to]."""
    if spec.date_column and date_from is not None:
        query = query.where(table.c[spec.date_column] >= date_from)
    if spec.date_column and date_to is not None:
        # timestamps: anything before the next midnight belongs to date_to
        bound = date_to if spec.columns[spec.date_column] == DATE else _next_day(date_to)
        op = "__le__" if spec.columns[spec.date_column] == DATE else "__lt__"
        query = query.where(getattr(table.c[spec.date_column], op)(bound))
    return query


def _next_day(day: date) -> date:
    from datetime import timedelta

    return day + timedelta(days=1)


def _require_columns(spec: TableSpec, present: Sequence[str]) -> None:
    missing = [c for c in spec.columns if c not in present]
    if missing:
        raise ContractError(
            f"table {spec.name!r} is missing required column(s) {missing}; it has {list(present)}"
        )


def as_typed_text(values: pl.Expr) -> pl.Expr:
    """Raw values as typing makes them into text: trimmed, blank = null (a number as its text).
    Also for hashing raw ids as their typed values will hash (`lib/sharding.shard_of`)."""
    text = values.cast(pl.String).str.strip_chars()
    return pl.when(text == "").then(None).otherwise(text)


def _cast_expr(name: str, source: pl.DataType, target: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if source == pl.String:
        col = as_typed_text(col)
        if target == DATE:
            return col.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
        if target == TS:
            return col.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
        return col.cast(target, strict=False)
    if target == TS:
        if isinstance(source, pl.Datetime):
            if source.time_zone is None:
                return col.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
            return col.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        if source == pl.Date:
            return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if target == DATE and isinstance(source, pl.Datetime):
        return col.dt.date()
    if target == TEXT and source != pl.String:
        return col.cast(pl.String)
    return col.cast(target, strict=False)


def _require_utf8(spec: TableSpec, raw: pl.DataFrame) -> None:
    """CSV files are read leniently (undecodable bytes become U+FFFD) so that a bad byte is
    reported with its table, column and row here, instead of failing the whole scan or
    silently garbling a name or an id."""
    for name, dtype in raw.schema.items():
        if dtype != pl.String:
            continue
        bad = raw.get_column(name).str.contains("\ufffd", literal=True).fill_null(False)
        if bad.any():
            idx = int(bad.arg_max())
            raise ContractError(
                f"table {spec.name!r}, column {name!r}: row {idx + 1} is not valid UTF-8 "
                f"({json.dumps(_example(raw, idx), default=str)}); "
                f"{int(bad.sum())} such row(s). Export the file as UTF-8."
            )


_FIRST_DAY, _LAST_DAY = date(1, 1, 1), date(9999, 12, 31)
_FIRST_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
_LAST_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def _type_mismatch(source: pl.DataType, target: pl.DataType) -> bool:
    """A column of a type that cannot mean the contract's: numbers or booleans for dates (an
    integer would silently become days since 1970), booleans or dates for numbers. Anything
    renders as text, and text is parsed value by value."""
    if source in (pl.String, pl.Null) or source == target:
        return False
    if target in (DATE, TS):
        return not (source == pl.Date or isinstance(source, pl.Datetime))
    if target in (FLOAT, INT):
        return not source.is_numeric()
    return False


def run_values(column: pl.Series) -> pl.Series:
    """The column without its adjacent repeats (the first value of each run of equal values,
    nulls included): every distinct value is among them, so a check or count of distinct values
    can take these, which are few when the rows are grouped by the column (one comparison per
    row, where `unique` hashes every value)."""
    return column.filter(_run_starts(column))


_SAMPLE_ROWS = 10_000
"""Rows at the top of a column looked at to guess how its values are laid out."""


def _grouped_values(column: pl.Series) -> pl.Series | None:
    """`run_values` of a column whose rows come grouped by value (its runs at most a quarter of
    its rows): every distinct value, few, for a check of each distinct value. None otherwise,
    and without comparing every row when its first rows already have too many runs (a metric
    name changing on every row)."""
    sample = column.head(_SAMPLE_ROWS)
    if 4 * _run_starts(sample).sum() >= sample.len():
        return None
    starts = _run_starts(column)
    return column.filter(starts) if 4 * starts.sum() < column.len() else None


def _run_starts(column: pl.Series) -> pl.Series:
    """True for the first row of each run of equal values (nulls equal to each other)."""
    starts = column.ne_missing(column.shift(1))
    return starts.scatter(0, True) if starts.len() else starts


def _invalid(name: str, target: pl.DataType, source: pl.DataType) -> pl.Expr:
    """Typed values that parsed but cannot be right: non-finite numbers, fractions in an integer
    column, and dates outside what a calendar (and Python) can hold."""
    col = pl.col(name)
    if target == FLOAT:
        return ~col.is_finite()
    if target == INT and source.is_float():  # evaluated on the raw column (see `_typed`)
        return col != col.floor()
    if target == DATE:
        return (col < _FIRST_DAY) | (col > _LAST_DAY)
    if target == TS:  # years 1..9999, compared as instants (no calendar per value)
        return (col < _FIRST_INSTANT) | (col > _LAST_INSTANT)
    return pl.lit(False)


def _needs_trim(column: pl.Series) -> bool:
    """Whether any value is blank or has leading/trailing whitespace (`_trim_values`: the check
    alone, so no distinct values are gathered for it)."""
    return _any_untrimmed(_trim_values(column, distinct=False))


def _trim_values(column: pl.Series, distinct: bool = True) -> pl.Series:
    """The values of a text column that its whitespace check reads: every distinct value is
    among them. A column of few distinct values (ids, metric names, channels) is checked on
    those values only: millions of rows, thousands of strings. A column grouped by its values
    (the customer id of a table written customer by customer) gets them from its runs, without
    hashing every row; any other column is read whole. `distinct=False`: the caller needs the
    check only, not the distinct values, so a column of many values repeated in no order (a
    year of messages' contact ids) is read whole rather than hashed: one pass over the
    strings, where `unique` builds a table of hundreds of thousands of them first."""
    values = _grouped_values(column)
    if values is None:
        sample = column.head(_SAMPLE_ROWS)
        if 4 * sample.n_unique() < sample.len():
            values = _few_values(column)
            if values is None:
                values = column.unique() if distinct else column
        else:
            values = column
    return values


_FEW_VALUES = 8


def _few_values(column: pl.Series) -> pl.Series | None:
    """The distinct values (nulls aside) of a column of a few - channels, priorities, metric
    names - without hashing every row: those of a strided sample, when every row equals one of
    them (a comparison per value, half the time of a `unique`); None when a row equals none
    (a rare value the sample missed) or the sample holds too many."""
    guess = column.gather_every(max(1, column.len() >> 12)).drop_nulls().unique()
    if not 0 < guess.len() <= _FEW_VALUES:
        return None
    among = pl.col("c") == guess[0]
    for value in guess[1:]:
        among = among | (pl.col("c") == value)
    return guess if pl.select(column.alias("c")).select(among.all()).item() else None


def _any_untrimmed(values: pl.Series) -> bool:
    length = values.str.len_bytes()
    return bool(((values.str.strip_chars().str.len_bytes() != length) | (length == 0)).any())


_ISO_DAY = r"^\d{4}-\d{2}-\d{2}"
_ISO_HINT = (
    "; dates and timestamps are read as ISO 8601 (2026-03-01, 2026-03-01 09:30:00, "
    "2026-03-01T09:30:00Z or +02:00), never guessed from a local form such as 03/01/2026"
)


def _iso_timestamps(spec: TableSpec, raw: pl.DataFrame, typed: pl.DataFrame) -> pl.DataFrame:
    """Timestamps from text, read as ISO 8601 whatever the mix of its forms. polars infers one
    format from a column's first value: a file that writes midnight as a bare date (as
    spreadsheets do) or mixes `Z` and offsets would fail on its other rows, and a first value of
    `03/01/2026 09:00` would read every row day-first, silently. Such a column (a value that did
    not parse, or a first value not ISO) is parsed again through `_iso_timestamp_expr`; a value
    that is not ISO then fails the run with its row. The common case costs two null counts."""
    for name, target in spec.columns.items():
        if target != TS or raw.schema[name] != pl.String:
            continue
        text, parsed = raw.get_column(name), typed.get_column(name)
        first = text.drop_nulls().head(100).str.strip_chars()
        first = first.filter(first != "").head(1)
        # null counts first: a value lost to parsing is looked for only when there can be one
        lost = parsed.null_count() > text.null_count() and bool(
            (
                parsed.is_null() & raw.select(as_typed_text(pl.col(name)).is_not_null()).to_series()
            ).any()
        )
        if lost or (first.len() and not first.str.contains(_ISO_DAY).all()):
            typed = typed.with_columns(
                raw.select(_iso_timestamp_expr(as_typed_text(pl.col(name))).alias(name))
            )
    return typed


def _iso_timestamp_expr(text: pl.Expr) -> pl.Expr:
    """ISO 8601 text in any of its usual forms (`T` or space, with or without seconds,
    fractions, `Z`, `+02`, `+0200` or `+02:00`, or a bare date for midnight) as UTC instants;
    anything else null. Without an offset a value is UTC (the contract's convention)."""
    time = r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)"
    normal = (
        pl.when(text.str.contains(_ISO_DAY))
        .then(text)
        .str.replace(r"^(\d{4}-\d{2}-\d{2})$", "${1}T00:00:00")
        .str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
        .str.replace(r"^(\S{10}T\d{2}:\d{2})([^:\d]|$)", "${1}:00${2}")
        .str.replace(r"\s*Z$", "+00:00")
        .str.replace(time + r"\s*([+-]\d{2}):?(\d{2})$", "${1}${2}${3}")
        .str.replace(time + r"\s*([+-]\d{2})$", "${1}${2}00")
    )
    return pl.coalesce(
        normal.str.to_datetime(
            "%Y-%m-%dT%H:%M:%S%.f%z", strict=False, time_zone="UTC", time_unit="us"
        ),
        normal.str.to_datetime(
            "%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us"
        ).dt.replace_time_zone("UTC"),
    )


def _typed(spec: TableSpec, raw: pl.DataFrame) -> pl.DataFrame:
    """Cast every column to its contract type; an unparseable value fails with an example."""
    for name, target in spec.columns.items():
        source = raw.schema[name]
        if _type_mismatch(source, target):
            example = _example(raw, 0) if raw.height else {}
            raise ContractError(
                f"table {spec.name!r}, column {name!r} holds {source} values, not {target} "
                f"(row 1: {json.dumps(example, default=str)})"
            )
    # Text that needs no trimming and has no blanks is kept as it is: one scan that allocates
    # nothing instead of a trimmed copy per column (ids repeat in every row of a large table).
    text = [n for n, t in spec.columns.items() if t == TEXT and raw.schema[n] == pl.String]
    checked_values = {n: _trim_values(raw.get_column(n), distinct=n in spec.labels) for n in text}
    untouched = {n for n in text if not _any_untrimmed(checked_values[n])}
    exprs = [
        pl.col(name)
        if name in untouched
        else _cast_expr(name, raw.schema[name], target).alias(name)
        for name, target in spec.columns.items()
    ]
    # Only the columns whose values can be impossible are checked (text cannot be).
    checked = {
        name: _invalid(name, target, raw.schema[name])
        for name, target in spec.columns.items()
        if target in (FLOAT, DATE, TS) or (target == INT and raw.schema[name].is_float())
    }
    # An integer from floats is checked on the raw values, the rest on the typed ones. Each
    # frame is checked on its own: a horizontal concat of the two re-chunks every column (3 s
    # for 45M rows).
    on_raw = {n for n, t in spec.columns.items() if t == INT and raw.schema[n].is_float()}
    try:
        typed = _iso_timestamps(spec, raw, raw.select(exprs))
        invalid = {
            name: (raw if name in on_raw else typed).select(check.fill_null(False)).to_series()
            for name, check in checked.items()
        }
    except pl.exceptions.PolarsError as exc:
        raise ContractError(f"table {spec.name!r} cannot be typed: {exc}") from exc
    for name, target in spec.columns.items():
        before = raw.get_column(name)
        parts = [invalid[name]] if name in checked else []
        # A cast to the column's own type changes nothing (text: blank -> null on both sides).
        if before.dtype != target:
            if before.dtype == pl.String:
                before_null = before.str.strip_chars().replace("", None).is_null()
            else:
                before_null = before.is_null()
            parts.append(typed.get_column(name).is_null() & ~before_null)
        if not parts:
            continue
        broken = parts[0] if len(parts) == 1 else parts[0] | parts[1]
        if broken.any():
            idx = int(broken.arg_max())  # first failing row
            example = _example(raw, idx)
            raise ContractError(
                f"table {spec.name!r}, column {name!r}: value {example[name]!r} is not a valid "
                f"{target} (row {idx + 1} of the {raw.height} rows read: "
                f"{json.dumps(example, default=str)}); {int(broken.sum())} such row(s) among them"
                + (_ISO_HINT if target in (DATE, TS) else "")
            )
    # an untouched label column's distinct values are among those its check read
    typed = _normalised_labels(spec, typed, {n: checked_values[n] for n in untouched})
    for name, allowed in spec.enums.items():
        bad = typed.filter(pl.col(name).is_not_null() & ~pl.col(name).is_in(allowed))
        if bad.height:
            raise ContractError(
                f"table {spec.name!r}, column {name!r}: value {bad[name][0]!r} is not one of "
                f"{list(allowed)} (row: {json.dumps(bad.row(0, named=True), default=str)})"
            )
    return typed


def _normalised_labels(
    spec: TableSpec, typed: pl.DataFrame, among: dict[str, pl.Series] | None = None
) -> pl.DataFrame:
    """`spec.labels` in the contract's spelling (`QBR` -> `qbr`, `Check-in` -> `check_in`).
    Worked out on the few distinct values of each column; a column already spelt so is kept.
    `among`: for some columns, values among which all of the column's are (the ones its
    whitespace check read), so that the column is not hashed again."""
    for name in spec.labels:
        values = (among or {}).get(name, typed.get_column(name)).unique().drop_nulls()
        canonical = values.str.strip_chars().str.to_lowercase().str.replace_all(r"[\s\-]+", "_")
        canonical = canonical.replace(spec.synonyms.get(name, {}))
        changed = values != canonical
        if changed.any():
            typed = typed.with_columns(
                pl.col(name).replace(values.filter(changed), canonical.filter(changed))
            )
    return typed


def _example(frame: pl.DataFrame, idx: int) -> dict[str, object]:
    """Row `idx` for an error message, as text: a value Python cannot hold (a date in year
    57,440) must not turn the message into a crash."""
    try:
        row = frame.slice(idx, 1).cast(pl.String).row(0, named=True)
    except pl.exceptions.PolarsError:
        row = {k: repr(v) for k, v in frame.slice(idx, 1).to_dict(as_series=True).items()}
    return {k: _jsonable(v) for k, v in row.items()}


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def quarantine(
    spec: TableSpec,
    frame: pl.DataFrame,
    known_ids: dict[str, pl.Series] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, TableReport]:
    """Split `frame` into (clean, quarantined-with-reason, report).

    Reasons, checked in order so each bad row is counted once: null key, null value (of a
    `not_null` column), negative value, unknown id, duplicate key (the first occurrence is kept,
    later ones are quarantined).
    """
    report = TableReport(spec.name, rows_read=frame.height)
    reason = pl.lit(None, dtype=pl.String)
    conditions: list[tuple[pl.Expr, str]] = []
    if spec.key:
        conditions.append((pl.any_horizontal([pl.col(k).is_null() for k in spec.key]), "null_key"))
    conditions.extend((pl.col(column).is_null(), "null_value") for column in spec.not_null)
    conditions.extend((pl.col(column) < 0, "negative_value") for column in spec.non_negative)
    for column, table in (spec.refs or {}).items():
        ids = (known_ids or {}).get(table)
        if ids is None:
            continue
        unknown = pl.col(column).is_not_null() & ~pl.col(column).is_in(ids.implode())
        # Rows grouped by the id (usage, customer by customer) are checked on its few distinct
        # values first: when all are known, as they usually are, no row is looked up.
        values = _grouped_values(frame.get_column(column))
        if values is None or values.to_frame().select(unknown.fill_null(False)).to_series().any():
            conditions.append((unknown, "unknown_id"))
    if spec.key:
        frame = frame.with_columns(later_duplicates(frame, spec.key).alias("_duplicate"))
        conditions.append((pl.col("_duplicate"), "duplicate_key"))
    for condition, label in reversed(conditions):
        reason = pl.when(condition.fill_null(False)).then(pl.lit(label)).otherwise(reason)
    tagged = frame.with_columns(reason.alias("_reason"))
    if spec.key:
        tagged = tagged.drop("_duplicate")
    # A duplicate is judged among rows that passed the other checks, so recount it that way.
    bad = tagged.filter(pl.col("_reason").is_not_null())
    if bad.height:
        clean = tagged.filter(pl.col("_reason").is_null()).drop("_reason")
    else:
        clean = tagged.drop("_reason")
    counts = dict(bad.group_by("_reason").len().iter_rows())
    report.null_keys = counts.get("null_key", 0)
    report.null_values = counts.get("null_value", 0)
    report.negative_values = counts.get("negative_value", 0)
    report.unknown_ids = counts.get("unknown_id", 0)
    report.duplicates = counts.get("duplicate_key", 0)
    report.rows_kept = clean.height
    return clean, bad.rename({"_reason": "quarantine_reason"}), report


#: The days before a day whose same-weekday rows make its usual (`undelivered_days`).
REFERENCE_DAYS = 28


def undelivered_days(
    rows_per_day: pl.DataFrame,
    first: date,
    last: date,
    min_coverage: float,
    poisson_sds: float = 0.0,
    min_streak: int = 1,
) -> pl.DataFrame:
    """The days of [first, last] whose rows (`rows_per_day`: date, rows) number less than
    `min_coverage` x the median of the same weekday over the 4 weeks before (a day without
    rows counts 0; a weekday that usually has none is never flagged), with that usual count.
    Weekday-aware, so weekday-only sources and quiet weekends pass; a day of real usage
    where 90% of the usual rows are missing is not a pattern of customers but of delivery.
    With `poisson_sds`, a day must also fall that many Poisson standard deviations (sqrt of
    the usual) below its usual: a table of a few rows a day (survey answers) has days without
    any by chance, which say nothing about its delivery. With `min_streak`, only days in a
    run of at least that many such days in a row (days whose usual is too small to tell
    skipped, a run reaching up to 4 weeks before `first`) count: a holiday empties a day or two
    of meetings, an export that stopped goes on."""
    schema = {"date": pl.Date, "rows": pl.Int64, "usual": pl.Float64}
    if min_coverage <= 0:
        return pl.DataFrame(schema=schema)
    counts = rows_per_day.group_by("date").agg(pl.col("rows").sum())
    start = first - timedelta(days=REFERENCE_DAYS) if min_streak > 1 else first
    days = pl.DataFrame({"date": pl.date_range(start, last, "1d", eager=True)})
    weeks = REFERENCE_DAYS // 7
    reference = days.with_columns(
        pl.concat_list(pl.col("date") - timedelta(days=7 * k) for k in range(1, weeks + 1)).alias(
            "ref"
        )
    ).explode("ref")
    usual = (
        reference.join(counts.rename({"date": "ref"}), on="ref", how="left")
        .group_by("date")
        .agg(pl.col("rows").fill_null(0).median().alias("usual"))
    )
    short = (pl.col("rows") < min_coverage * pl.col("usual")) & (
        pl.col("usual") - pl.col("rows") >= poisson_sds * pl.col("usual").sqrt()
    )
    expected = (
        days.join(counts, on="date", how="left")
        .join(usual, on="date", how="left")
        .with_columns(pl.col("rows").fill_null(0).cast(pl.Int64))
        # a day whose usual is too small to tell (not even none would be short) is skipped
        .filter((pl.col("usual") > 0) & (pl.col("usual") >= poisson_sds**2))
        .sort("date")
        .with_columns(short.alias("short"))
    )
    # each day that is not short starts a run; the short days after it are that run's streak
    streak = pl.col("short").sum().over((~pl.col("short")).cum_sum())
    return (
        expected.filter(pl.col("short") & (streak >= min_streak) & (pl.col("date") >= first))
        .select(list(schema))
        .sort("date")
    )


def undelivered_list(late: pl.DataFrame, last_full: date | None) -> str:
    """The days of `undelivered_days` (the first five) and the last earlier day with rows."""
    shown = ", ".join(
        f"{d} ({rows} rows against a usual {usual:.0f} on that weekday)"
        for d, rows, usual in late.head(5).iter_rows()
    )
    more = f" and {late.height - 5} more day(s)" if late.height > 5 else ""
    since = f"; the last earlier day with rows is {last_full}" if last_full else ""
    return f"{shown}{more}{since}"


def undelivered_message(table: str, late: pl.DataFrame, last_full: date | None) -> str:
    """What a data engineer needs to see when a day's export has not (fully) arrived."""
    return (
        f"table {table!r} looks not yet delivered for {undelivered_list(late, last_full)}. "
        "Read as usage, every account would seem idle those days and raise false drops; run "
        "the partition again once the data is in (or lower settings usage.min_day_coverage, "
        "0 = no check)"
    )


def later_duplicates(frame: pl.DataFrame, key: Sequence[str]) -> pl.Series:
    """True for each row whose key already occurred on an earlier row: exactly
    `pl.struct(key).is_first_distinct().not_()`, without hashing a struct of strings per row.

    Rows grouped by their key (a source written customer by customer) are compared with their
    neighbours (`_adjacent_duplicates`). Otherwise: equal keys always hash alike, so only rows
    sharing a 64-bit hash with another row can be duplicates; those few (usually none) are then
    compared exactly.
    """
    adjacent = _adjacent_duplicates(frame, key)
    if adjacent is not None:
        return adjacent
    later = np.zeros(frame.height, dtype=bool)
    if frame.height > 1:
        hashed = _key_hash(frame, key)
        ordered = hashed.sort().to_numpy()  # polars' parallel sort: ~4x numpy's here
        shared = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        if shared.size:
            rows = np.flatnonzero(hashed.is_in(pl.Series(shared).implode()).to_numpy())
            later[rows] = (
                frame[rows].select(pl.struct(list(key)).is_first_distinct().not_()).to_series()
            )
    return pl.Series(later, dtype=pl.Boolean)


def _key_hash(frame: pl.DataFrame, key: Sequence[str]) -> pl.Series:
    """A 64-bit hash of each row's `key` columns: equal keys hash alike."""
    # one expression (not `pl.reduce`, which folds in Python): the hashes run in parallel
    return frame.select(
        functools.reduce(
            operator.xor, [pl.col(column).hash(seed) for seed, column in enumerate(key)]
        )
    ).to_series()


MAX_GROUP_ROWS = 8
"""Longest run of rows sharing the ordered part of a key that `_adjacent_duplicates` compares
row by row (a day's metrics of one customer: 5)."""


def _adjacent_duplicates(frame: pl.DataFrame, key: Sequence[str]) -> pl.Series | None:
    """`later_duplicates` of a frame whose rows come grouped by their key, as a source written
    customer by customer and day by day has them: a few comparisons of each row with the ones
    just before it, instead of hashing and sorting every row. None when the rows are not so
    (then the hashes are sorted).

    Rows with equal keys are within a few rows of each other when (a) the first key column's
    values each occupy one run of rows, (b) within such a run the next key columns (an ordered
    prefix: text, dates, integers) never decrease, so each value of that prefix is one run of
    rows too, and (c) those runs are at most `MAX_GROUP_ROWS` long (or the prefix is the whole
    key: then equal keys are adjacent). A row is then a later duplicate exactly when it equals
    one of the rows of its run before it. A null in the key sends the frame the other way."""
    n = frame.height
    if n < 2 or frame.select(pl.any_horizontal(pl.col(k).has_nulls() for k in key)).item():
        return None
    first = frame.get_column(key[0])
    starts = _run_starts(first)
    # each value in one run: told by the runs' values when they are few, else by a sort check
    grouped = 4 * starts.sum() < n and first.filter(starts).is_unique().all()
    if not (grouped or first.is_sorted()):
        return None
    same = ~starts  # no nulls here
    ordered = 1
    for name in key[1:]:
        column = frame.get_column(name)
        dtype = column.dtype
        if not (dtype == pl.String or dtype.is_integer() or dtype.is_temporal()):
            break
        previous = column.shift(1)
        if (same & (column < previous).fill_null(False)).any():
            break
        same = same & column.eq(previous).fill_null(False)
        ordered += 1
    if ordered == len(key):
        return same.alias("")
    # run[s - 1]: the rows whose s rows before are of their run (of the ordered prefix)
    runs = [same]
    while (longer := runs[-1] & same.shift(len(runs), fill_value=False)).any():
        if len(runs) + 1 >= MAX_GROUP_ROWS:
            return None
        runs.append(longer)
    rest = [frame.get_column(name) for name in key[ordered:]]
    # The rest of the key is compared by its hash first (equal values hash alike), its values
    # only where a hash matches: a duplicate, or rarely two values sharing a hash; usually none.
    hashed = _key_hash(frame, key[ordered:])
    later = None
    for shift, run in enumerate(runs, 1):
        match = run & hashed.eq(hashed.shift(shift)).fill_null(False)
        if match.any():
            match = functools.reduce(
                operator.and_, [match, *(c.eq_missing(c.shift(shift)) for c in rest)]
            )
        later = match if later is None else later | match
    return later.alias("")  # type: ignore[union-attr]

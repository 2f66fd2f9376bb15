"""The optional source tables, windowed as of the run's days: contacts, meetings, communications,
tickets, NPS, health, entitlements and feature usage.

An absent optional table is an empty frame with the contract's columns and is listed under
`missing_optional_tables` in the asset's metadata; the detectors that need it skip and say so.
"""

import functools
from collections.abc import Iterable, Iterator
from datetime import date, timedelta

import dagster as dg
import polars as pl

from insight_pipeline.defs.metadata import partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource
from insight_pipeline.defs.sharding import FrameStream, TableStream, run_shard
from insight_pipeline.defs.sources.assets import (
    GROUP,
    shard_label,
    validated_parts,
    window_parts,
    write_quarantine,
)
from insight_pipeline.lib.contract import (
    CONTRACT,
    REFERENCE_DAYS,
    Source,
    TableReport,
    quarantine,
    undelivered_days,
    undelivered_list,
)
from insight_pipeline.lib.detectors.features import HISTORY_DAYS as FEATURE_HISTORY_DAYS
from insight_pipeline.lib.settings import Settings
from insight_pipeline.lib.sharding import in_shard, part_count

#: key in the bundle -> source table (meetings before attendees: attendees are filtered by them)
ACTIVITY_TABLES: dict[str, str] = {
    "contacts": "contacts",
    "meetings": "meetings",
    "meeting_attendees": "meeting_attendees",
    "communications": "communications",
    "support_tickets": "support_tickets",
    "nps": "nps_responses",
    "health": "health_scores",
    "entitlements": "entitlements",
    "feature_usage": "feature_usage_daily",
}

#: The columns the bundle keeps of a table whose detectors read fewer than the contract holds;
#: every column is still validated. A year of messages of 100k accounts is 14.7M rows, and
#: their ids (unique text that no detector reads) were most of the bundle's writing and of
#: each reader's loading. A detector that needs another column adds it here.
BUNDLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "communications": ("customer_id", "sent_at", "direction"),
    "support_tickets": ("customer_id", "opened_at", "priority"),
}


DELIVERY_CHECK = "optional_tables_delivered"
#: Poisson standard deviations below its usual that a day of an optional table must also fall
#: to count as undelivered: a survey table of a few answers a day has empty days by chance.
DELIVERY_POISSON_SDS = 4.0
#: Days in a row (days that usually have none skipped) an optional table must fall short on
#: to be named: a holiday empties a day or two of meetings; an export that stopped goes on.
DELIVERY_MIN_STREAK = 3


def activity_tables(*keys: str, scanned: tuple[str, ...] = ()) -> dg.AssetIn:
    """The `activity_window` input of a consumer that reads only these tables of the bundle:
    the IO manager loads just those files (the bundle holds ~10 tables, some of millions of
    rows, and each consumer needs a few). The `scanned` ones (also in `keys`) come as lazy
    scans, for a consumer that reads a few weeks or columns of a large table."""
    unknown = set(keys) - set(ACTIVITY_TABLES)
    if unknown:
        raise ValueError(f"not tables of activity_window: {sorted(unknown)}")
    if not set(scanned) <= set(keys):
        raise ValueError(f"scanned tables must be among the tables read: {sorted(scanned)}")
    return dg.AssetIn(metadata={"tables": list(keys), "scanned": list(scanned)})


def history_days(table: str, settings: Settings) -> int:
    """How far before the first day each table is read (enough for every detector using it)."""
    return {
        "meetings": settings.engagement.history_days,
        "communications": settings.engagement.history_days,
        # a half-year more than the baseline: the first ticket read is where the source's
        # record begins (`days_on_record`) unless the source is that new, whatever the range
        "support_tickets": max(
            settings.risk.support_baseline_days + settings.risk.support_window_days,
            settings.engagement.history_days,
        ),
        "nps_responses": 180,
        "health_scores": 2 * settings.risk.health_baseline_days
        + settings.risk.health_gap_days
        + 60,
        # feature_discovery looks back this far, less than the usage baselines' look-back
        "feature_usage_daily": FEATURE_HISTORY_DAYS,
    }.get(table, 0)


def empty_table(table: str) -> pl.DataFrame:
    return pl.DataFrame(schema=CONTRACT[table].columns)


def bundled(key: str, frame: pl.DataFrame) -> pl.DataFrame:
    """The columns of a validated table that the bundle keeps (`BUNDLE_COLUMNS`)."""
    columns = BUNDLE_COLUMNS.get(key)
    return frame if columns is None else frame.select(columns)


def rows_per_day(frame: pl.DataFrame, column: str, since: date, until: date) -> pl.DataFrame:
    """(date, rows) of `frame` from `since` to `until` by its date or timestamp `column`."""
    day = pl.col(column)
    if frame.schema[column] != pl.Date:
        day = day.dt.date()
    return (
        frame.lazy()
        .select(day.alias("date"))
        .filter(pl.col("date").is_between(since, until))
        .group_by("date")
        .agg(pl.len().cast(pl.Int64).alias("rows"))
        .collect()
    )


def delivery_check(
    counts: dict[str, list[pl.DataFrame]], first: date, last: date, min_coverage: float
) -> dg.AssetCheckResult:
    """A warning naming each dated optional table with run days that look undelivered - at
    most `min_coverage` of the same weekday's usual rows and `DELIVERY_POISSON_SDS` below it,
    `DELIVERY_MIN_STREAK` usual days in a row (`undelivered_days`) - as an export that stopped
    or comes in part: its detectors would take the silence for the customers' (going dark,
    fewer tickets). Unlike usage (the run fails), the run goes on: the detectors measure each
    day against everyone's, and an optional table may end for good (after 4 weeks without
    rows, none are usual any more)."""
    late: dict[str, str] = {}
    for table, per_day in counts.items():
        rows = pl.concat(per_day) if per_day else pl.DataFrame(schema={"date": pl.Date})
        if rows.height == 0:
            continue
        thin = undelivered_days(
            rows, first, last, min_coverage, DELIVERY_POISSON_SDS, DELIVERY_MIN_STREAK
        )
        if thin.height:
            before = rows.filter((pl.col("date") < thin["date"].min()) & (pl.col("rows") > 0))
            late[table] = undelivered_list(thin, before["date"].max())  # type: ignore[arg-type]
    return dg.AssetCheckResult(
        check_name=DELIVERY_CHECK,
        passed=not late,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"tables_checked": sorted(counts), "undelivered": late},
        description=None
        if not late
        else "looks not (fully) delivered: "
        + "; ".join(f"{table} on {days}" for table, days in late.items()),
    )


def _counted(
    parts: Iterable[pl.DataFrame], into: list[pl.DataFrame], column: str, since: date, until: date
) -> Iterator[pl.DataFrame]:
    """`parts` as they come, each one's rows per day appended to `into` (`rows_per_day`)."""
    for part in parts:
        into.append(rows_per_day(part, column, since, until))
        yield part


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
    check_specs=[
        dg.AssetCheckSpec(
            DELIVERY_CHECK,
            asset="activity_window",
            description="Each dated optional table's rows on every run day against the same "
            "weekday's usual (the 4 weeks before): far fewer (usage.min_day_coverage, and 4 "
            "Poisson sds) on 3 usual days in a row looks like an export that stopped or comes "
            "in part. A warning: the run goes on.",
        )
    ],
)
def activity_window(
    context: dg.AssetExecutionContext,
    source: SourceResource,
    settings: SettingsResource,
    accounts: pl.DataFrame,
) -> Iterator[dg.Output[TableStream] | dg.AssetCheckResult]:
    """The optional tables as of the run's days (contacts, meetings and attendees,
    communications, tickets, NPS, health, entitlements, feature usage), each read over the
    look-back its detectors need, validated, bad rows quarantined and counted, and kept with the
    columns its detectors read (`BUNDLE_COLUMNS`). One asset for the bundle: a range run records
    one materialisation per day, not one per table and day. The tables are read and written one
    at a time (`TableStream`), so only one is in memory, and a large one keyed by customer (a
    year of feature usage of 100k accounts: ~110M rows) one account part at a time. The dated
    tables' rows per run day are checked for delivery (`delivery_check`)."""
    first, last = partition_days(context)
    # a day's usual needs the 4 weeks before it, and a streak may begin 4 weeks before `first`
    since = first - timedelta(days=2 * REFERENCE_DAYS)
    delivered: dict[str, list[pl.DataFrame]] = {}
    cfg = settings.settings()
    known = {"customers": accounts["customer_id"]}
    # A run of one account shard reads its shard's rows (as usage_window does): the others'
    # would be "unknown ids" here, quarantined and counted by every shard.
    shard, shards = run_shard(context)
    mine, label = in_shard(shard, shards), shard_label(shard, shards)  # mine: lit(True) unsharded
    report: dict[str, dict] = {}
    missing: list[str] = []
    metadata: dict[str, object] = {"missing_optional_tables": missing, "validation": report}

    def tables() -> Iterator[tuple[str, pl.DataFrame | FrameStream]]:
        src = source.open()
        # what the attendees are checked against: the meetings and contacts kept (an absent
        # table is not checked against), and the ids of the meetings this run read
        refs: dict[str, pl.Series] = {}
        read_meetings = pl.Series("meeting_id", [], pl.String)
        try:
            for key, table in ACTIVITY_TABLES.items():
                spec = CONTRACT[table]
                days = history_days(table, cfg)
                date_from = first - timedelta(days=days) if spec.date_column else None
                date_to = last if spec.date_column else None
                parts_count = (
                    part_count(src.count(table, date_from=date_from, date_to=date_to))
                    if spec.key[:1] == ("customer_id",)
                    else 1
                )
                if parts_count > 1:  # keyed by customer
                    parts = window_parts(src, table, date_from, date_to, mine, parts_count)
                    done = functools.partial(record, table)
                    clean_parts = validated_parts(
                        spec, parts, known, str(first), str(last), done, label
                    )
                    if spec.date_column:
                        per_day = delivered.setdefault(table, [])
                        clean_parts = _counted(clean_parts, per_day, spec.date_column, since, last)
                    yield key, FrameStream(bundled(key, part) for part in clean_parts)
                    continue
                where = mine if shards > 1 and "customer_id" in spec.columns else None
                frame = src.read(table, date_from=date_from, date_to=date_to, where=where)
                if frame is None:
                    missing.append(table)
                    yield key, bundled(key, empty_table(table))
                    continue
                if table == "contacts":
                    frame = _contacts_as_of(frame, last)
                if table == "meetings":
                    read_meetings = frame["meeting_id"]
                if table == "meeting_attendees":
                    clean, bad, table_report = _validated_attendees(
                        src, frame, read_meetings, refs, owns_orphans=shard == 0
                    )
                else:
                    clean, bad, table_report = quarantine(spec, frame, known)
                del frame
                if table in ("meetings", "contacts"):
                    refs[table] = clean[spec.key[0]]
                if spec.date_column:
                    counted = rows_per_day(clean, spec.date_column, since, last)
                    delivered.setdefault(table, []).append(counted)
                record(
                    table, table_report, write_quarantine(table, bad, str(first), str(last), label)
                )
                yield key, bundled(key, clean)
        finally:
            src.dispose()

    def record(table: str, table_report: TableReport, path: str | None) -> None:
        report[table] = table_report.as_metadata() | ({"quarantine_file": path} if path else {})

    yield dg.Output(TableStream(tables(), metadata=metadata))  # written before the check
    yield delivery_check(delivered, first, last, cfg.usage.min_day_coverage)


def _validated_attendees(
    src: Source,
    attendees: pl.DataFrame,
    read: pl.Series,
    refs: dict[str, pl.Series],
    owns_orphans: bool,
) -> tuple[pl.DataFrame, pl.DataFrame, TableReport]:
    """`quarantine` of the attendees a run validates (`_attendees_to_check`) against the
    meetings and contacts kept (`refs`; a table absent is not checked against). Those of a
    meeting kept, nearly all, are checked against the contacts only: their meeting is known
    from the one look-up that picked them (the same look-up again in `quarantine` was a second
    of a 100k-account day)."""
    spec = CONTRACT["meeting_attendees"]
    kept = refs.get("meetings")
    if kept is None:  # no meetings table: no shard's meetings, so one run (shard 0) takes them
        return quarantine(spec, attendees if owns_orphans else attendees.clear(), refs)
    of_kept = attendees.get_column("meeting_id").is_in(kept.implode()).fill_null(False)
    contacts = {k: v for k, v in refs.items() if k != "meetings"}
    clean, bad, report = quarantine(spec, attendees.filter(of_kept), contacts)
    rest = _attendees_to_check(src, attendees.filter(~of_kept), read, owns_orphans)
    if rest.height:  # of a meeting set aside, none, or one the table does not hold: all bad
        rest_clean, rest_bad, rest_report = quarantine(spec, rest, refs)
        report.add(rest_report)
        clean, bad = pl.concat([clean, rest_clean]), pl.concat([bad, rest_bad])
    return clean, bad, report


def _attendees_to_check(
    src: Source, attendees: pl.DataFrame, read: pl.Series, owns_orphans: bool
) -> pl.DataFrame:
    """The attendees a run validates: those of the meetings it read (`read`: their ids; kept
    when their meeting and contact are, quarantined as unknown ids when not) and, in one run of
    a sharded day only (`owns_orphans`: shard 0, as null customer ids go to shard 0), those with
    no meeting id or a meeting the table does not hold, so that they are counted once. The
    attendees of meetings the run did not read (outside its window, or another shard's) are not
    needed, not bad."""
    ours = attendees.get_column("meeting_id").is_in(read.implode()).fill_null(False)
    if not owns_orphans:
        return attendees.filter(ours)
    rest = attendees.filter(~ours)
    if rest.height == 0:
        return attendees
    every = src.column("meetings", "meeting_id")
    if every is None:  # no meetings table: nothing to tell them apart by, every one is checked
        return attendees
    held = rest.get_column("meeting_id").is_in(every.implode()).fill_null(False)
    return pl.concat([attendees.filter(ours), rest.filter(~held)])


def _contacts_as_of(contacts: pl.DataFrame, last: date) -> pl.DataFrame:
    """No look-ahead: contacts not started by the last day are unknown; later exits are hidden."""
    return contacts.filter(
        pl.col("started_on").is_null() | (pl.col("started_on") <= last)
    ).with_columns(pl.when(pl.col("left_on") <= last).then(pl.col("left_on")).alias("left_on"))

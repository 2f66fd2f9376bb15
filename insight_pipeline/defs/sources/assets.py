"""Source slices as of each partition day: validated, typed, bad rows quarantined and counted."""

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from insight_pipeline.defs.metadata import partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource
from insight_pipeline.defs.sharding import FrameStream, run_shard
from insight_pipeline.lib.contract import (
    CONTRACT,
    ContractError,
    Source,
    TableReport,
    TableSpec,
    quarantine,
    run_values,
    undelivered_days,
    undelivered_message,
)
from insight_pipeline.lib.detectors.usage import YOUNG_MIN_DAYS
from insight_pipeline.lib.paths import data_dir
from insight_pipeline.lib.settings import UsageSettings
from insight_pipeline.lib.sharding import (
    PART_SEED,
    PARTS_PER_SCAN,
    SAMPLE_SEED,
    in_sample,
    in_shard,
    part_count,
    shard_of,
)

GROUP = "sources"


def window_parts(
    src: Source,
    table: str,
    date_from: date | None,
    date_to: date | None,
    where: pl.Expr,
    parts_count: int,
) -> Iterator[pl.DataFrame]:
    """The rows of `table` in the window (and `where`), one part - the accounts of one
    `shard_of(parts_count, seed=PART_SEED)` - at a time, each in the table's own order: a
    database is queried once and split here; a file is scanned once per PARTS_PER_SCAN parts,
    so a large window is never in memory whole."""
    whole = None
    if src.is_database and parts_count > 1:
        whole = src.read(table, date_from=date_from, date_to=date_to, where=where)
    scans = math.ceil(parts_count / PARTS_PER_SCAN)
    # A scan picks its parts by the raw ids, the split below by the typed ones: where typing
    # changes an id (padding, a number), the scan hashes it as typed, or its rows would be lost.
    raw = scans > 1 and whole is None
    raw = raw and not src.ids_typed_as_read(table, date_from=date_from, date_to=date_to)
    for scan in range(scans):
        members = list(range(scan, parts_count, scans))
        in_members = where
        if scans > 1:  # one scan takes every part: each row is in one of them
            in_members = where & shard_of(parts_count, seed=PART_SEED, raw=raw).is_in(members)
        if whole is not None:
            read = whole.filter(in_members)
        else:
            read = src.read(table, date_from=date_from, date_to=date_to, where=in_members)
        if read is None:
            raise ContractError(f"table {table!r} disappeared from the source while being read")
        if len(members) == 1:
            yield read
            continue
        # A filter per part, in the table's order: a quarter of the time of a `partition_by`
        # (whose groups are gathered by a hash table of the part numbers).
        part = read.select(shard_of(parts_count, seed=PART_SEED)).to_series()
        for i, index in enumerate(members):
            piece = read.filter(part == index)
            if i == len(members) - 1:
                del read, part  # the last part is the only frame left alive
            yield piece
            del piece


def validated_parts(
    spec: TableSpec,
    parts: Iterable[pl.DataFrame],
    known: dict[str, pl.Series],
    first: str,
    last: str,
    done: Callable[[TableReport, str | None], None],
    shard: str = "",
) -> Iterator[pl.DataFrame]:
    """Each part's clean rows as it is validated (a table keyed by customer, read in account
    parts, validates exactly part by part); the quarantined rows are kept and written once the
    last part is out, and `done` gets the summed report and the quarantine file."""
    report = TableReport(spec.name)
    quarantined = []
    for part in parts:
        clean, bad, part_report = quarantine(spec, part, known)
        del part
        report.add(part_report)
        quarantined.append(bad)
        yield clean
    done(report, write_quarantine(spec.name, pl.concat(quarantined), first, last, shard))


def quarantine_path(table: str, first: str, last: str, shard: str = "") -> Path:
    """Where the run over [first, last] (of one account shard: `shard_label`) keeps the rows
    of `table` it quarantined."""
    return data_dir() / "quarantine" / table / f"{first}__{last}{shard}.parquet"


def shard_label(shard: int, shards: int) -> str:
    """A file name's suffix for one account shard of a sharded run ("" when not sharded)."""
    return f"__shard{shard + 1}of{shards}" if shards > 1 else ""


def write_quarantine(
    table: str, bad: pl.DataFrame, first: str, last: str, shard: str = ""
) -> str | None:
    """Quarantined rows are kept on disk (never silently dropped) for a person to inspect. The
    file is that of the latest run over these days: a run that quarantines nothing removes it."""
    path = quarantine_path(table, first, last, shard)
    if bad.height == 0:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    bad.write_parquet(path)
    return str(path)


def history_metadata(began: date | None, first: date, usage: UsageSettings) -> dict[str, object]:
    """Where the window's usage begins against the run's first day, and - when that is too
    little history for the usage rules - a note that says which rule can judge from when: a
    short extract or a newly connected source otherwise only shows as insights that never come
    (trial 8: usage began 14 days before the first partition)."""
    if began is None:
        return {}
    days = (first - began).days
    out: dict[str, object] = {"first_day_with_usage": str(began), "history_days": days}
    if days < usage.min_history_days:
        out["short_history"] = (
            f"usage_daily begins on {began}, {days} days before the run's first day {first}: "
            f"series are judged week against week from {began + timedelta(days=YOUNG_MIN_DAYS - 1)}"
            f" ({YOUNG_MIN_DAYS} days of history) and day by day from "
            f"{began + timedelta(days=usage.min_history_days)} ({usage.min_history_days} days)"
        )
    return out


def unknown_usage_days(first: date, last: date, shard: str = "") -> pl.DataFrame:
    """(customer_id, metric, date) of the usage rows the run over [first, last] quarantined for
    their value (null or negative): days whose value is unknown, not 0, which a detector must not
    read as a drop. From the quarantine file `usage_window` wrote for the same days."""
    path = quarantine_path("usage_daily", str(first), str(last), shard)
    schema = {"customer_id": pl.String, "metric": pl.String, "date": pl.Date}
    if not path.exists():
        return pl.DataFrame(schema=schema)
    return (
        pl.scan_parquet(path)
        .filter(pl.col("quarantine_reason").is_in(["null_value", "negative_value"]))
        .select(list(schema))
        .unique()
        .collect()
    )


@dataclass(frozen=True)
class CheckedCustomers:
    """The users and customers tables validated against the contract, with what was set aside."""

    customers: pl.DataFrame
    users: pl.DataFrame
    customers_bad: pl.DataFrame
    users_bad: pl.DataFrame
    customers_report: TableReport
    users_report: TableReport


def validated_customers(src: Source, last: date) -> CheckedCustomers:
    """Every customer with a known CSM, validated; churn dates after `last` hidden (no
    look-ahead) and the ARR percentile among all customers."""
    users = src.read("users")
    customers = src.read("customers")
    assert users is not None and customers is not None
    users_clean, users_bad, users_report = quarantine(CONTRACT["users"], users)
    customers_clean, customers_bad, customers_report = quarantine(
        CONTRACT["customers"], customers, {"users": users_clean["user_id"]}
    )
    if customers_clean.height == 0:
        raise ContractError("table 'customers' has no valid rows after validation")
    customers_clean = customers_clean.with_columns(
        pl.when(pl.col("churned_on") <= last).then(pl.col("churned_on")).alias("churned_on"),
        # among all customers, also when this run only keeps one account shard
        (pl.col("arr").rank("average") / pl.col("arr").count()).alias("arr_percentile"),
    )
    return CheckedCustomers(
        customers_clean, users_clean, customers_bad, users_bad, customers_report, users_report
    )


def sample_usage(
    context: dg.AssetExecutionContext,
    source: SourceResource,
    usage_window: pl.LazyFrame,
    accounts: pl.DataFrame,
    size: int,
    lookback_days: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The usage window of a fixed hash sample of about `size` of ALL accounts, and those
    accounts (their rows of `accounts`: churn dates, industry, region): for what is measured
    across accounts (the days a metric's whole population, or an industry's or a region's,
    moved; the metrics that hold a level). A run over every account takes the sample from its
    own window; a run of one account shard holds only its accounts, so it reads the sample's
    rows from the source (`sample_from_source`): every shard measures on the accounts the
    unsharded run measures on."""
    _shard, shards = run_shard(context)
    if shards == 1:
        sample = usage_window.filter(in_sample(accounts.height, size)).collect()
        return sample, accounts.filter(in_sample(accounts.height, size))
    first, _last = partition_days(context)
    (clean,), sampled = sample_from_source(
        context, source, ("usage_daily",), size, first - timedelta(days=lookback_days)
    )
    return clean, sampled


def sample_from_source(
    context: dg.AssetExecutionContext,
    source: SourceResource,
    tables: tuple[str, ...],
    size: int,
    date_from: date,
) -> tuple[list[pl.DataFrame], pl.DataFrame]:
    """The rows of `tables` from `date_from` to the run's last day of the fixed hash sample of
    about `size` of all accounts, read from the source and validated as the windows validate
    them, and the sampled accounts: what a run of one account shard measures the population
    on."""
    _first, last = partition_days(context)
    src = source.open()
    try:
        everyone = validated_customers(src, last).customers
        buckets = everyone.height // max(size, 1)
        raw = shard_of(buckets, seed=SAMPLE_SEED, raw=True) == 0 if buckets > 1 else pl.lit(True)
        known = {"customers": everyone["customer_id"]}
        sampled = everyone.filter(in_sample(everyone.height, size))
        clean = []
        for table in tables:
            read = src.read(table, date_from=date_from, date_to=last, where=raw)
            if read is None:  # an absent optional table: no rows
                read = pl.DataFrame(schema=CONTRACT[table].columns)
            rows, _bad, _report = quarantine(CONTRACT[table], read, known)
            clean.append(rows.filter(in_sample(everyone.height, size)))
    finally:
        src.dispose()
    return clean, sampled


def churn_dates(accounts: pl.DataFrame) -> pl.DataFrame:
    return accounts.select("customer_id", "churned_on").filter(pl.col("churned_on").is_not_null())


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def accounts(context: dg.AssetExecutionContext, source: SourceResource) -> pl.DataFrame:
    """Customers with their CSM, validated against the contract (users and customers tables).

    Churn dates after the last partition day are hidden (no look-ahead); duplicate ids, null
    keys and customers whose CSM is not a known user are quarantined and counted.
    """
    first, last = partition_days(context)
    src = source.open()
    checked = validated_customers(src, last)
    customers_clean, users_clean = checked.customers, checked.users
    users_bad, users_report = checked.users_bad, checked.users_report
    customers_bad, customers_report = checked.customers_bad, checked.customers_report
    shard, shards = run_shard(context)
    customers_clean = customers_clean.filter(in_shard(shard, shards))
    q_users = write_quarantine("users", users_bad, str(first), str(last))
    q_customers = write_quarantine("customers", customers_bad, str(first), str(last))
    context.add_output_metadata(
        {
            "customers": customers_clean.height,
            "account_shard": f"{shard + 1} of {shards}",
            "users": users_clean.height,
            "customers_validation": customers_report.as_metadata(),
            "users_validation": users_report.as_metadata(),
            "quarantine_files": [p for p in (q_users, q_customers) if p],
            "customers_by_segment": {
                str(k): int(v)
                for k, v in customers_clean.group_by("segment").len().sort("segment").iter_rows()
            },
        }
    )
    src.dispose()
    return customers_clean


def check_delivered(rows_per_day: pl.DataFrame, first: date, last: date, coverage: float) -> None:
    """Fail, naming the days, when a run day's usage has not (fully) arrived
    (`undelivered_days`): the run stops before any detector reads a late export as idle
    accounts, and running the day again once it is in gives its real insights."""
    late = undelivered_days(rows_per_day, first, last, coverage)
    if late.height:
        delivered = rows_per_day.filter(pl.col("date") < late["date"].min())["date"].max()
        raise ContractError(undelivered_message("usage_daily", late, delivered))  # type: ignore[arg-type]


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def usage_window(
    context: dg.AssetExecutionContext,
    source: SourceResource,
    settings: SettingsResource,
    accounts: pl.DataFrame,
) -> FrameStream:
    """usage_daily rows from the look-back before the first day up to the last day of the run.

    Only the date window is read (rows after the partition day never are). Negative values,
    duplicate (customer, date, metric) rows and unknown customers are quarantined and counted.
    A large window (a long backfill of many accounts) is read, validated and written one part
    (a group of whole accounts) at a time, so it never sits in memory whole.
    """
    first, last = partition_days(context)
    window_start = first - timedelta(days=settings.settings().lookback_days)
    shard, shards = run_shard(context)
    src = source.open()
    rows = src.count("usage_daily", date_from=window_start, date_to=last)
    parts_count = part_count(rows // shards)
    known = {"customers": accounts["customer_id"]}
    metadata: dict[str, object] = {
        "window_start": str(window_start),
        "window_end": str(last),
        "account_shard": f"{shard + 1} of {shards}",
        "parts": parts_count,
    }

    def validated(report: TableReport, path: str | None) -> None:
        metadata.update({"validation": report.as_metadata(), "quarantine_file": path or ""})

    def parts() -> Iterator[pl.DataFrame]:
        customers, metrics, per_day = 0, set(), []
        read = window_parts(
            src, "usage_daily", window_start, last, in_shard(shard, shards), parts_count
        )
        spec = CONTRACT["usage_daily"]
        try:
            for clean in validated_parts(
                spec, read, known, str(first), str(last), validated, shard_label(shard, shards)
            ):
                customers += run_values(clean["customer_id"]).n_unique()
                metrics.update(clean["metric"].unique().to_list())
                per_day.append(clean.group_by("date").agg(pl.len().alias("rows")))
                yield clean
        finally:
            src.dispose()
        metadata.update({"customers_with_usage": customers, "metrics": sorted(metrics)})
        days = pl.concat(per_day)
        metadata.update(history_metadata(days["date"].min(), first, settings.settings().usage))
        if "short_history" in metadata:
            context.log.warning(str(metadata["short_history"]))
        check_delivered(days, first, last, settings.settings().usage.min_day_coverage)

    return FrameStream(parts(), metadata=metadata)

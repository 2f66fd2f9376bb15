"""insight_outcome_rates: the historical base rates behind every insight's "so what"."""

import hashlib
import json
import uuid
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from insight_pipeline.defs.insights.assets import GROUP
from insight_pipeline.defs.metadata import partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource
from insight_pipeline.lib.contract import CONTRACT, Source
from insight_pipeline.lib.insights.outcomes import (
    SpanMonths,
    base_rate_json,
    comparable_events,
    history_start,
    month_start,
    outcome_rates,
)
from insight_pipeline.lib.paths import data_dir
from insight_pipeline.lib.settings import OutcomeSettings


def _cache_paths(source: Source, months: list[date], s: OutcomeSettings) -> dict[date, Path]:
    """Rates as of a month's first day read only the source rows before it: cached per month
    under a fingerprint of exactly what the month reads - each table's rows in the month's
    history window (`Source.fingerprint_windows`: count and hash of the columns read; of the
    contacts only those with a departure date, the others make no event), the customers' ids,
    contract starts and churn dates before it - and the settings. A source that grows by new
    days (or contacts) keeps its past months' rates (a daily run computes them once a month,
    not once a day, as a key of file times did); any change to what they read recomputes them.
    (A database source is fingerprinted by row counts only.)"""
    read = {"usage_daily": ("customer_id", "date", "metric", "value"), **OUTCOME_TABLES}
    settings = f"v{RATES_VERSION}|{s.history_months}|{s.horizon_days}|{s.min_accounts}"
    root = data_dir() / "outcome_rates"
    # The fingerprints scan the windows (~5 s at 100k accounts); while no file of the source is
    # rewritten, the keys last computed for these months are taken as they are. A memo per
    # month, so that a day run after a range run finds its month's key (the range's memo of all
    # its months cost the day a scan of 19 months of seven tables, ~0.6 s at 10k accounts).
    identity = source.file_identity([*read, "customers"])
    memos: dict[date, Path] = {}
    if identity is not None:
        for m in months:
            memo_key = "|".join([source.location, identity, settings, str(m)])
            memos[m] = (
                root / "stamps" / f"{hashlib.sha256(memo_key.encode()).hexdigest()[:16]}.json"
            )
        known = {m: (_read_memo(memo) or {}).get(m.isoformat()) for m, memo in memos.items()}
        if all(isinstance(key, str) for key in known.values()):
            return {m: root / m.isoformat() / f"{known[m]}.parquet" for m in months}
    windows = [history_window(m, s) for m in months]
    departures = pl.col("left_on").is_not_null()
    prints = {
        table: source.fingerprint_windows(
            table, windows, columns, where=departures if table == "contacts" else None
        )
        for table, columns in read.items()
    }
    customers = source.read("customers", columns=["customer_id", "contract_start", "churned_on"])
    assert customers is not None  # a required table
    keys = {}
    for i, as_of in enumerate(months):
        known = customers.select(
            "customer_id",
            "contract_start",
            pl.when(pl.col("churned_on") < as_of).then(pl.col("churned_on")),
        )
        digest = int(known.hash_rows(seed=7).sum())  # wrapping: duplicate rows do not cancel
        stamp = "|".join(
            [
                source.location,
                *(f"{table}:{p[i]}" for table, p in prints.items()),
                f"customers:{customers.height}:{digest:016x}",
                settings,
            ]
        )
        keys[as_of.isoformat()] = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    for m, memo in memos.items():
        _write_memo(memo, {m.isoformat(): keys[m.isoformat()]})
    return {m: root / m.isoformat() / f"{keys[m.isoformat()]}.parquet" for m in months}


RATES_VERSION = 3
"""Bumped whenever what the rates count changes (2, 3: whole months), so that months cached by
an older version are computed again instead of served as they are."""


def _read_memo(memo: Path) -> dict[str, str] | None:
    """The month -> key memo, or None when absent or unreadable (then it is recomputed)."""
    try:
        keys = json.loads(memo.read_text())
    except (OSError, ValueError):
        return None
    return keys if isinstance(keys, dict) else None


def _write_memo(memo: Path, keys: dict[str, str]) -> None:
    """Written aside under a unique name and renamed (atomic); a memo that cannot be written is
    only a missed shortcut."""
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        written = memo.with_name(f".{memo.stem}.{uuid.uuid4().hex}.tmp")
        written.write_text(json.dumps(keys))
        written.replace(memo)
    except OSError:
        return


def _cache_path(source: Source, as_of: date, s: OutcomeSettings) -> Path:
    """One month's `_cache_paths`."""
    return _cache_paths(source, [as_of], s)[as_of]


def history_window(as_of: date, s: OutcomeSettings) -> tuple[date, date]:
    """The source days the rates as of `as_of` read: the history and the whole month before it,
    for the month-over-month comparisons at its start (31 days back reached into the month
    before that whenever it had fewer days, and a month of one day 'rose' in every account)."""
    start = history_start(as_of, s)
    return month_start(start - timedelta(days=1)), as_of - timedelta(days=1)


OUTCOME_TABLES: dict[str, tuple[str, ...]] = {
    "contacts": ("customer_id", "role", "left_on"),
    "nps_responses": ("customer_id", "score", "responded_on"),
    "health_scores": ("customer_id", "date", "score"),
    "support_tickets": ("customer_id", "opened_at"),
    "meetings": ("customer_id", "start_at"),
    "communications": ("customer_id", "sent_at", "direction"),
}
"""The tables the comparable events read, and only the columns they read: 19 months of a wide
table (message and ticket ids, topics, comments) would otherwise be typed and held for
nothing."""


def rates_as_of(
    source: Source,
    as_of: date,
    s: OutcomeSettings,
    monthly_usage: pl.DataFrame | None = None,
    tables: dict[str, pl.DataFrame | None] | None = None,
    path: Path | None = None,
    span: SpanMonths | None = None,
    customers: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The rates as of `as_of`, from the cache or computed (`monthly_usage` and the
    OUTCOME_TABLES of its window, and the cache `path`, when the caller has them already;
    `span`: the monthly aggregates of a span of several months' windows, `comparable_events`;
    `customers`: the source's customers, read once for several months)."""
    path = path or _cache_path(source, as_of, s)
    if path.exists():
        return pl.read_parquet(path)
    first, last = history_window(as_of, s)
    if tables is None:
        tables = {
            name: source.read(name, date_from=first, date_to=last, columns=columns)
            for name, columns in OUTCOME_TABLES.items()
        }
    # An absent optional table is an empty frame of the columns read, so that any mix of
    # present and absent tables (meetings without communications, say) reads alike.
    frames = {
        name: tables[name]
        if tables[name] is not None
        else pl.DataFrame(schema=CONTRACT[name].only(OUTCOME_TABLES[name]).columns)
        for name in tables
    }
    customers = source.read("customers") if customers is None else customers
    assert customers is not None
    contacts = frames["contacts"]
    if contacts.height:
        contacts = contacts.filter(pl.col("left_on").is_null() | (pl.col("left_on") <= last))
    if monthly_usage is None:
        monthly_usage = source.monthly_usage(first, last)
    events = comparable_events(
        monthly_usage,
        contacts,
        frames["nps_responses"],
        frames["health_scores"],
        frames["support_tickets"],
        frames["meetings"],
        frames["communications"],
        first,
        last,
        customers.select("customer_id", "contract_start"),
        span,
    )
    # where the usage on record begins (within the window read): no months before it count
    rates = outcome_rates(events, customers, as_of, s, monthly_usage["first_day"].min())
    path.parent.mkdir(parents=True, exist_ok=True)
    rates.write_parquet(path)
    return rates


def rates_for_months(source: Source, months: list[date], s: OutcomeSettings) -> pl.DataFrame:
    """`rates_as_of` of each month, the uncached ones computed together: a range run's months
    share most of their 18 months of history, so the usage is summed in one pass for all of them
    (`monthly_usage_windows`) and each activity table read once (`read_windows`)."""
    paths = _cache_paths(source, months, s)
    cold = [m for m in months if not paths[m].exists()]
    windows = [history_window(m, s) for m in cold]
    sums = source.monthly_usage_windows(windows)
    # Several windows of a file source: the activity tables' monthly counts and events are made
    # once over the span of them all (read as one more window, first), each month taking its
    # months of them (`SpanMonths`; a database is read window by window).
    spans = []
    if len(cold) > 1 and not source.is_database:
        spans = [(min(w[0] for w in windows), max(w[1] for w in windows))]
    tables = {
        name: source.read_windows(name, [*spans, *windows], columns=columns)
        for name, columns in OUTCOME_TABLES.items()
    }
    span = None
    if spans:
        whole = {name: next(read) for name, read in tables.items()}
        frames = {
            name: frame
            if frame is not None
            else pl.DataFrame(schema=CONTRACT[name].only(OUTCOME_TABLES[name]).columns)
            for name, frame in whole.items()
        }
        span = SpanMonths.of(
            frames["health_scores"],
            frames["support_tickets"],
            frames["meetings"],
            frames["communications"],
            *spans[0],
        )
        del whole, frames
    customers = source.read("customers") if cold else None
    return pl.concat(
        [
            rates_as_of(
                source,
                m,
                s,
                next(sums),
                {n: next(t) for n, t in tables.items()},
                paths[m],
                span,
                customers,
            )
            if m in cold
            else pl.read_parquet(paths[m])
            for m in months
        ]
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def insight_outcome_rates(
    context: dg.AssetExecutionContext, source: SourceResource, settings: SettingsResource
) -> pl.DataFrame:
    """Per insight type and month: of the accounts that showed a comparable event in the past 18
    months, how many churned within 90 days, against all accounts — computed from the source as
    of the first day of each partition's month (cached per month), with the sample size, so the
    narrative can say "of 41 accounts ..., 12 (29%) churned" or admit the sample is too small."""
    first, last = partition_days(context)
    s = settings.settings().outcomes
    src = source.open()
    months = sorted(
        {month_start(first + timedelta(days=i)) for i in range((last - first).days + 1)}
    )
    try:
        rates = rates_for_months(src, months, s)
    finally:
        src.dispose()
    latest = rates.filter(pl.col("as_of") == months[-1])
    context.add_output_metadata(
        {
            "months": [m.isoformat() for m in months],
            "rates": dg.MetadataValue.md(
                "| event | accounts | churned | rate % | all accounts % |\n|---|---|---|---|---|\n"
                + "\n".join(
                    "| {label} | {n} | {k} | {rate_pct} | {baseline_pct} |".format(**r)
                    for r in latest.iter_rows(named=True)
                )
            ),
        }
    )
    return base_rate_json(rates)

"""insight_outcome_rates: the historical base rates behind every insight's "so what"."""

import hashlib
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from insight_pipeline.defs.insights.assets import GROUP
from insight_pipeline.defs.metadata import partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource
from insight_pipeline.lib.contract import Source
from insight_pipeline.lib.insights.outcomes import (
    base_rate_json,
    comparable_events,
    history_start,
    month_start,
    outcome_rates,
)
from insight_pipeline.lib.paths import data_dir
from insight_pipeline.lib.settings import OutcomeSettings


def _cache_path(source: Source, as_of: date, s: OutcomeSettings) -> Path:
    """Rates depend on the source and the month only: cache them per (source version, month)."""
    stamp = source.location
    if "://" not in source.location:
        files = sorted(Path(source.location).glob("*.*"))
        stamp += "|".join(f"{f.name}:{f.stat().st_mtime_ns}" for f in files)
    stamp += f"|{s.history_months}|{s.horizon_days}|{s.min_accounts}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    return data_dir() / "outcome_rates" / key / f"{as_of.isoformat()}.parquet"


def history_window(as_of: date, s: OutcomeSettings) -> tuple[date, date]:
    """The source days the rates as of `as_of` read (a month more than the history, for the
    month-over-month comparisons at its start)."""
    return history_start(as_of, s) - timedelta(days=31), as_of - timedelta(days=1)


def rates_as_of(
    source: Source, as_of: date, s: OutcomeSettings, monthly_usage: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The rates as of `as_of`, from the cache or computed (`monthly_usage` of its window, when
    the caller has it already)."""
    path = _cache_path(source, as_of, s)
    if path.exists():
        return pl.read_parquet(path)
    first, last = history_window(as_of, s)

    def table(name: str, *columns: str) -> pl.DataFrame:
        """Only the columns the comparable events read: 19 months of a wide table (message
        and ticket ids, topics, comments) would otherwise be typed and held for nothing."""
        frame = source.read(name, date_from=first, date_to=last, columns=columns)
        return frame if frame is not None else pl.DataFrame()

    customers = source.read("customers")
    assert customers is not None
    contacts = table("contacts", "customer_id", "role", "left_on")
    if contacts.height:
        contacts = contacts.filter(pl.col("left_on").is_null() | (pl.col("left_on") <= last))
    events = comparable_events(
        source.monthly_usage(first, last) if monthly_usage is None else monthly_usage,
        contacts,
        table("nps_responses", "customer_id", "score", "responded_on"),
        table("health_scores", "customer_id", "date", "score"),
        table("support_tickets", "customer_id", "opened_at"),
        table("meetings", "customer_id", "start_at"),
        table("communications", "customer_id", "sent_at", "direction"),
        first,
        last,
    )
    rates = outcome_rates(events, customers, as_of, s)
    path.parent.mkdir(parents=True, exist_ok=True)
    rates.write_parquet(path)
    return rates


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
        # A range run's uncached months share most of their 18 months of usage: summed in one
        # pass over the usage instead of one per month.
        cold = [m for m in months if not _cache_path(src, m, s).exists()]
        sums = src.monthly_usage_windows([history_window(m, s) for m in cold])
        rates = pl.concat(
            [rates_as_of(src, m, s, next(sums) if m in cold else None) for m in months]
        )
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

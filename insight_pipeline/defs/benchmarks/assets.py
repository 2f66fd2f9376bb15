"""Peer benchmarks: each account against its cohort (segment x industry by default)."""

import dagster as dg
import polars as pl

from insight_pipeline.defs.metadata import markdown_preview, partition_days, signal_metadata
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource
from insight_pipeline.defs.sources.activity import activity_tables
from insight_pipeline.lib.detectors.benchmarks import (
    benchmark_opened,
    benchmark_usage,
    benchmarked_series_last_before,
    detect_benchmarks,
    peer_percentiles,
)
from insight_pipeline.lib.detectors.usage import carry_last_before
from insight_pipeline.lib.sharding import day_spans
from insight_pipeline.lib.signals import empty_signals

GROUP = "benchmarks"


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
    ins={"activity_window": activity_tables("entitlements")},
)
def peer_benchmarks(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    accounts: pl.DataFrame,
    usage_window: pl.LazyFrame,
    activity_window: dict[str, pl.DataFrame],
) -> pl.DataFrame:
    """outperforming / underperforming: the account's usage per seat in the top or bottom decile
    of its peer cohort (percentile in the evidence; small cohorts fall back to the segment)."""
    first, last = partition_days(context)
    every = settings.settings()
    s = every.benchmark
    # Percentiles are across accounts but per day: a long run goes a span of days at a time,
    # reading only the benchmarked metric and seats of that span (and its look-back).
    found, cohorts, benchmarked, spans = [], set(), set(), day_spans(first, last, accounts.height)
    # Which series began before each span's window, and when they were last seen: one pass
    # over the older rows for the first span, then carried from span to span.
    last_before = (
        benchmarked_series_last_before(usage_window, spans[0][0], s) if len(spans) > 1 else None
    )
    for index, (start, end) in enumerate(spans):
        usage = benchmark_usage(usage_window, start, end, s, last_before)
        percentiles = peer_percentiles(
            usage, activity_window["entitlements"], accounts, start, end, s, every.lookback_days
        )
        if index + 1 < len(spans):
            last_before = carry_last_before(usage, benchmark_opened(spans[index + 1][0], s))
        del usage
        if percentiles.height:
            found.append(detect_benchmarks(percentiles, s))
            cohorts.update(percentiles["cohort_name"].unique().to_list())
            benchmarked.update(percentiles["customer_id"].unique().to_list())
    signals = pl.concat(found) if found else empty_signals()
    meta = signal_metadata(signals) | {"day_spans": len(spans)}
    if benchmarked:
        meta["cohorts"] = len(cohorts)
        meta["accounts_benchmarked"] = len(benchmarked)
        meta["preview"] = markdown_preview(
            signals.sort("severity", descending=True),
            ["customer_id", "type", "subject", "partition_date", "severity"],
        )
    elif (reason := missing_metric_reason(usage_window, s.metric)) is not None:
        meta["skipped"] = reason
        context.log.warning(f"peer_benchmarks skipped: {reason}")
    context.add_output_metadata(meta)
    return signals


def missing_metric_reason(usage_window: pl.LazyFrame, metric: str) -> str | None:
    """Why nothing was benchmarked when the benchmarked metric is not in the source (None when
    it is): the metric names are free text, so a source without `dau` must name its own."""
    metrics = usage_window.select(pl.col("metric").unique().sort()).collect()["metric"].to_list()
    if metric in metrics:
        return None
    return (
        f"no usage metric {metric!r} in usage_daily (its metrics: {metrics[:20]}); set "
        "benchmark.metric in the run config to the one that counts active users"
    )

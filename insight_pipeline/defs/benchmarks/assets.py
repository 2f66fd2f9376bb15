"""Peer benchmarks: each account against its cohort (segment x industry by default)."""

import dagster as dg
import polars as pl

from insight_pipeline.defs.detectors.assets import signal_metadata
from insight_pipeline.defs.metadata import markdown_preview, partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource
from insight_pipeline.defs.sources.activity import activity_tables
from insight_pipeline.lib.detectors.benchmarks import (
    benchmark_usage,
    detect_benchmarks,
    peer_percentiles,
)
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
    s = settings.settings().benchmark
    # only the benchmarked metric and seats of the last weeks are read from the usage window
    usage = benchmark_usage(usage_window, first, last, s)
    percentiles = peer_percentiles(usage, activity_window["entitlements"], accounts, first, last, s)
    signals = detect_benchmarks(percentiles, s) if percentiles.height else empty_signals()
    meta = signal_metadata(signals)
    if percentiles.height:
        meta["cohorts"] = percentiles["cohort_name"].n_unique()
        meta["accounts_benchmarked"] = percentiles["customer_id"].n_unique()
        meta["preview"] = markdown_preview(
            signals.sort("severity", descending=True),
            ["customer_id", "type", "subject", "partition_date", "severity"],
        )
    context.add_output_metadata(meta)
    return signals

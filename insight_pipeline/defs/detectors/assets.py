"""Detector assets: each family returns Signals; `insight_candidates` unions them."""

import dagster as dg
import polars as pl

from insight_pipeline.defs.baselines.assets import churn_dates
from insight_pipeline.defs.metadata import counts_by, markdown_preview, partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource
from insight_pipeline.defs.sharding import FrameParts, concat_by_part
from insight_pipeline.lib.detectors.usage import (
    detect_usage_anomalies,
    detect_usage_trends,
    weekly_trend_stats,
)
from insight_pipeline.lib.insights.formulate import formulate
from insight_pipeline.lib.signals import conform

GROUP = "detectors"
SIGNAL_PREVIEW = ["customer_id", "type", "subject", "partition_date", "severity", "confidence"]
SCORE_PREVIEW = [
    "customer_id",
    "type",
    "user_id",
    "severity",
    "impact",
    "confidence",
    "novelty",
    "preference",
    "critical",
    "score",
    "priority",
]


def signal_metadata(frame: pl.DataFrame) -> dict:
    return {
        "signals": frame.height,
        "by_type": counts_by(frame, "type"),
        "customers": frame["customer_id"].n_unique() if frame.height else 0,
        "preview": markdown_preview(frame.sort("severity", descending=True), SIGNAL_PREVIEW),
    }


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def usage_anomalies(
    context: dg.AssetExecutionContext, settings: SettingsResource, usage_baselines: FrameParts
) -> pl.DataFrame:
    """usage_spike / usage_drop: days beyond the robust band with an effect size, persisting (or
    one extreme day for a spike)."""
    usage_settings = settings.settings().usage
    signals = concat_by_part(
        lambda part: detect_usage_anomalies(part, usage_settings), usage_baselines
    )
    context.add_output_metadata(signal_metadata(signals))
    return signals


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def usage_trends(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    usage_window: FrameParts,
    accounts: pl.DataFrame,
) -> pl.DataFrame:
    """adoption_trend / declining_usage: consecutive weekly rises or falls with a significant
    log-linear slope and a minimum total change."""
    first, last = partition_days(context)
    usage_settings = settings.settings().usage
    churned = churn_dates(accounts)
    signals = concat_by_part(
        lambda usage: detect_usage_trends(
            weekly_trend_stats(usage, first, last, usage_settings, churned), usage_settings
        ),
        usage_window,
    )
    context.add_output_metadata(signal_metadata(signals))
    return signals


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def insight_candidates(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    accounts: pl.DataFrame,
    usage_anomalies: pl.DataFrame,
    usage_trends: pl.DataFrame,
    engagement_signals: pl.DataFrame,
    risk_signals: pl.DataFrame,
    opportunity_signals: pl.DataFrame,
    timing_signals: pl.DataFrame,
    peer_benchmarks: pl.DataFrame,
    user_preferences: pl.DataFrame,
) -> pl.DataFrame:
    """Every detector's signals with account context, category, fingerprint and score (one row
    per fingerprint and day; churned customers dropped), scored with each CSM's learned
    preferences of the day (critical risks floored, never suppressed)."""
    signals = pl.concat(
        [
            conform(frame)
            for frame in (
                usage_anomalies,
                usage_trends,
                engagement_signals,
                risk_signals,
                opportunity_signals,
                timing_signals,
                peer_benchmarks,
            )
        ]
    )
    frame = formulate(signals, accounts, settings.settings().ranking, user_preferences)
    context.add_output_metadata(
        {
            "candidates": frame.height,
            "by_type": counts_by(frame, "type"),
            "by_priority": counts_by(frame, "priority"),
            "critical": int(frame["critical"].sum()) if frame.height else 0,
            "personalised": int((frame["preference"] != 0.5).sum()) if frame.height else 0,
            "score_parts": markdown_preview(frame.sort("score", descending=True), SCORE_PREVIEW),
        }
    )
    return frame

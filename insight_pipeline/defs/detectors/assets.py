"""Detector assets: each family returns Signals; `insight_candidates` unions them."""

from collections import Counter
from collections.abc import Iterator

import dagster as dg
import polars as pl

from insight_pipeline.defs.metadata import (
    counts_by,
    markdown_preview,
    partition_days,
    signal_metadata,
)
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource
from insight_pipeline.defs.sharding import FrameStream, run_shard
from insight_pipeline.defs.sources.assets import shard_label, unknown_usage_days
from insight_pipeline.lib.detectors.usage import anomaly_rows, detect_usage_anomalies
from insight_pipeline.lib.insights.formulate import formulate
from insight_pipeline.lib.sharding import account_part_count, in_part
from insight_pipeline.lib.signals import conform

GROUP = "detectors"
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


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def usage_anomalies(
    context: dg.AssetExecutionContext, settings: SettingsResource, usage_baselines: pl.LazyFrame
) -> pl.DataFrame:
    """usage_spike / usage_drop: days beyond the robust band with an effect size, persisting (or
    one extreme day for a spike). The stored baselines are scanned with the signal rows' filter,
    so only those rows are read whole (the other columns decoded for them alone). A deviation
    over a day whose source value was quarantined (null or negative: unknown, not 0) is not
    raised (`unknown_usage_days`)."""
    usage_settings = settings.settings().usage
    hits = usage_baselines.filter(anomaly_rows(usage_settings)).collect()
    first, last = partition_days(context)
    unknown = unknown_usage_days(first, last, shard_label(*run_shard(context)))
    signals = detect_usage_anomalies(hits, usage_settings, unknown)
    context.add_output_metadata(signal_metadata(signals) | {"unknown_usage_days": unknown.height})
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
    usage_anomalies: pl.LazyFrame,
    usage_trends: pl.LazyFrame,
    engagement_signals: pl.LazyFrame,
    risk_signals: pl.LazyFrame,
    opportunity_signals: pl.LazyFrame,
    timing_signals: pl.LazyFrame,
    peer_benchmarks: pl.LazyFrame,
    user_preferences: pl.DataFrame,
) -> FrameStream:
    """Every detector's signals with account context, category, fingerprint and score (one row
    per fingerprint and day; churned customers dropped), scored with each CSM's learned
    preferences of the day (critical risks floored, never suppressed). A long run over many
    accounts (100k over a year: ~18M candidates) is formulated and written one account part
    at a time; every step is per account (ARR percentiles come from all accounts)."""
    first, last = partition_days(context)
    ranking = settings.settings().ranking
    detectors = (
        usage_anomalies,
        usage_trends,
        engagement_signals,
        risk_signals,
        opportunity_signals,
        timing_signals,
        peer_benchmarks,
    )
    parts = account_part_count(accounts.height, (last - first).days + 1)
    metadata: dict[str, object] = {"account_parts": parts}

    def candidate_parts() -> Iterator[pl.DataFrame]:
        types: Counter[str] = Counter()
        priorities: Counter[str] = Counter()
        rows = critical = personalised = 0
        top = []
        for index in range(parts):
            keep = in_part(index, parts)
            signals = pl.concat(
                [conform((f if parts == 1 else f.filter(keep)).collect()) for f in detectors]
            )
            frame = formulate(signals, accounts, ranking, user_preferences)
            del signals
            rows += frame.height
            types.update(counts_by(frame, "type"))
            priorities.update(counts_by(frame, "priority"))
            critical += int(frame["critical"].sum()) if frame.height else 0
            personalised += int((frame["preference"] != 0.5).sum()) if frame.height else 0
            # rows as Python values: a slice or gather of the frame would keep its buffers
            shown = [c for c in SCORE_PREVIEW if c in frame.columns]
            top += frame.select(shown).top_k(10, by="score").to_dicts() if frame.height else []
            yield frame
            del frame  # before the next part is formulated
        metadata.update(
            {
                "candidates": rows,
                "by_type": dict(sorted(types.items())),
                "by_priority": dict(sorted(priorities.items())),
                "critical": critical,
                "personalised": personalised,
                "score_parts": markdown_preview(
                    pl.DataFrame(top).sort("score", descending=True) if top else pl.DataFrame(),
                    SCORE_PREVIEW,
                ),
            }
        )

    return FrameStream(candidate_parts(), metadata=metadata)

"""Usage baselines: per customer x metric x day, the robust, weekday-aware expected value."""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from insight_pipeline.defs.metadata import markdown_preview, partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource
from insight_pipeline.defs.sharding import FrameParts, FrameStream
from insight_pipeline.lib.detectors.usage import usage_baselines as compute_usage_baselines

GROUP = "baselines"


def churn_dates(accounts: pl.DataFrame) -> pl.DataFrame:
    return accounts.select("customer_id", "churned_on").filter(pl.col("churned_on").is_not_null())


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def usage_baselines(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    usage_window: FrameParts,
    accounts: pl.DataFrame,
) -> FrameStream:
    """Expected value (median of the same weekday over the previous weeks), robust scale (MAD of
    out-of-sample residuals), z-score and run of deviating days, for every customer x metric x day
    of the run. Uses only data before each day for its baseline. Computed and written one account
    part (group of accounts) at a time when the usage window is large."""
    first, last = partition_days(context)
    usage_settings = settings.settings().usage
    churned = churn_dates(accounts)
    metadata: dict[str, object] = {}

    def parts() -> Iterator[pl.DataFrame]:
        rows = series = deviating_days = parts_count = 0
        strongest = []
        for usage in usage_window:  # one part (a group of whole accounts) at a time
            parts_count += 1
            frame = compute_usage_baselines(usage, first, last, usage_settings, churned)
            deviating = frame.filter(pl.col("direction") != 0)
            rows += frame.height
            series += frame.select("customer_id", "metric").n_unique()
            deviating_days += deviating.height
            strongest.append(deviating.sort(pl.col("z").abs(), descending=True).head(10))
            yield frame
        metadata.update(
            {
                "parts": parts_count,
                "rows": rows,
                "customer_metrics": series,
                "deviating_days": deviating_days,
                "preview": markdown_preview(
                    pl.concat(strongest).sort(pl.col("z").abs(), descending=True),
                    [
                        "customer_id",
                        "metric",
                        "partition_date",
                        "value",
                        "expected",
                        "z",
                        "run_days",
                    ],
                ),
            }
        )

    return FrameStream(parts(), metadata=metadata)

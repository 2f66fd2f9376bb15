"""Usage baselines: per customer x metric x day, the robust, weekday-aware expected value."""

import dagster as dg
import polars as pl

from insight_pipeline.defs.metadata import markdown_preview, partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource
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
    usage_window: pl.DataFrame,
    accounts: pl.DataFrame,
) -> pl.DataFrame:
    """Expected value (median of the same weekday over the previous weeks), robust scale (MAD of
    out-of-sample residuals), z-score and run of deviating days, for every customer x metric x day
    of the run. Uses only data before each day for its baseline."""
    first, last = partition_days(context)
    frame = compute_usage_baselines(
        usage_window, first, last, settings.settings().usage, churn_dates(accounts)
    )
    deviating = frame.filter(pl.col("direction") != 0)
    context.add_output_metadata(
        {
            "rows": frame.height,
            "customer_metrics": frame.select("customer_id", "metric").n_unique(),
            "deviating_days": deviating.height,
            "preview": markdown_preview(
                deviating.sort(pl.col("z").abs(), descending=True),
                ["customer_id", "metric", "partition_date", "value", "expected", "z", "run_days"],
            ),
        }
    )
    return frame

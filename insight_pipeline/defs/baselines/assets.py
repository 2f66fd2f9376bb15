"""Usage baselines (per customer x metric x day, the robust, weekday-aware expected value) and,
from the same dense grid, the weekly usage trends."""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
import polars as pl

from insight_pipeline.defs.metadata import markdown_preview, partition_days, signal_metadata
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource
from insight_pipeline.defs.sharding import FrameParts, FrameStream, run_shard
from insight_pipeline.defs.sources.assets import (
    churn_dates,
    sample_usage,
    shard_label,
    unknown_usage_days,
)
from insight_pipeline.lib.detectors.usage import (
    Population,
    cohort_members,
    population_shifts,
    population_trends,
    without_unknown_weeks,
)
from insight_pipeline.lib.detectors.usage import usage_baselines as compute_usage_baselines
from insight_pipeline.lib.detectors.usage import (
    usage_baselines_and_trends as compute_baselines_and_trends,
)
from insight_pipeline.lib.detectors.usage import usage_trends as compute_usage_trends
from insight_pipeline.lib.signals import empty_signals

GROUP = "baselines"


@dg.multi_asset(
    outs={
        "usage_baselines": dg.AssetOut(
            group_name=GROUP,
            kinds={"polars"},
            is_required=False,
            description=(
                "Expected value (median of the same weekday over the previous weeks), robust "
                "scale (MAD of out-of-sample residuals), z-score and run of deviating days, for "
                "every customer x metric x day of the run. Uses only data before each day for "
                "its baseline."
            ),
        ),
        "usage_trends": dg.AssetOut(
            group_name="detectors",
            kinds={"polars"},
            is_required=False,
            description=(
                "adoption_trend / declining_usage (consecutive weekly rises or falls with a "
                "significant log-linear slope and a minimum total change), "
                "usage_pattern_change signals, and the usage_drop of a series too young for a "
                "daily baseline (its last week far below its best so far: a stalled onboarding)."
            ),
        ),
    },
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    can_subset=True,
)
def usage_baselines_and_trends(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    source: SourceResource,
    usage_window: FrameParts,
    accounts: pl.DataFrame,
) -> Iterator[dg.Output]:
    """Both assets lay the usage window out as one dense customer x metric x day grid, the
    costliest part of each; one step builds it once per account part and derives both (a
    selection of one of them computes only that one). Baselines are written one part at a time
    when the usage window is large; the trend signals of each part are kept (they are few)."""
    first, last = partition_days(context)
    usage_settings = settings.settings().usage
    # each day is judged on its own look-back, as a run of that day alone would judge it
    lookback = settings.settings().lookback_days
    churned = churn_dates(accounts)
    selected = context.selected_output_names
    want_baselines = "usage_baselines" in selected
    want_trends = "usage_trends" in selected
    metadata: dict[str, object] = {}
    trends: list[pl.DataFrame] = []
    population = None
    if want_baselines or want_trends:
        # Measured once for the run on a fixed sample of accounts (every part judges by it;
        # the trend test takes those days out of its week sums).
        sample, sampled = sample_usage(
            context,
            source,
            usage_window.lazy(),
            accounts,
            usage_settings.population_sample,
            lookback,
        )
        sample_churned = churn_dates(sampled)
        days = population_shifts(
            sample,
            first,
            last,
            usage_settings,
            sample_churned,
            window_start=first - timedelta(days=lookback),
            # (where the source's rows begin, over every account)
            data_from=usage_window.lazy().select(pl.col("date").min()).collect().item(),
            cohorts=sampled,
        )
        # the weeks a cohort's (or everyone's) usage moved together, for the weekly rules
        moved_weeks = (
            population_trends(
                sample,
                first,
                last,
                usage_settings,
                sample_churned,
                days,
                sampled,
                lookback,
            )
            if want_trends
            else None
        )
        # (the cohorts' accounts among this run's, not only the sample's)
        population = Population(days, cohort_members(accounts, days, moved_weeks), moved_weeks)
        metadata["population_days"] = (
            markdown_preview(
                days.with_columns(
                    pl.col("population_shift").exp().sub(1).round(3).alias("median_change"),
                    pl.col("cohort").fill_null("all accounts"),
                ),
                ["metric", "date", "cohort", "median_change"],
                rows=20,
            )
            if days.height
            else dg.MetadataValue.text(
                "none: no day on which a metric's whole population, or a cohort's, moved"
            )
        )

    def compute(usage: pl.DataFrame) -> pl.DataFrame:
        """This part's baselines; its trend signals are kept aside when wanted."""
        if not want_trends:
            return compute_usage_baselines(
                usage, first, last, usage_settings, churned, population, lookback
            )
        frame, signals = compute_baselines_and_trends(
            usage, first, last, usage_settings, churned, population, lookback
        )
        trends.append(signals)
        return frame

    def parts() -> Iterator[pl.DataFrame]:
        rows = series = deviating_days = parts_count = 0
        strongest = []
        for usage in usage_window:  # one part (a group of whole accounts) at a time
            parts_count += 1
            frame = compute(usage)
            deviating = frame.filter(pl.col("direction") != 0)
            rows += frame.height
            # the rows come series by series (the grid's order): a run per series, counted
            # without hashing the texts of every row
            series += frame.select(pl.struct("customer_id", "metric").rle_id().n_unique()).item()
            deviating_days += deviating.height
            strongest.append(deviating.sort(pl.col("z").abs(), descending=True).head(10))
            yield frame
            del frame, deviating, usage  # not held while the next part is computed
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

    if want_baselines:
        # The IO manager writes the parts as they come, before this step goes on to the trends.
        yield dg.Output(FrameStream(parts(), metadata=metadata), "usage_baselines")
    elif want_trends:
        trends.extend(
            compute_usage_trends(usage, first, last, usage_settings, churned, population, lookback)
            for usage in usage_window
        )
    if want_trends:
        if want_baselines and "parts" not in metadata:  # set once every part was produced
            # the trend signals are gathered while the IO manager writes the baselines' parts
            raise dg.DagsterInvariantViolationError(
                "usage_baselines was not written part by part before usage_trends was asked for"
            )
        signals = pl.concat(trends, how="vertical_relaxed") if trends else empty_signals()
        unknown = unknown_usage_days(first, last, shard_label(*run_shard(context)))
        signals = without_unknown_weeks(signals, unknown)
        yield dg.Output(signals, "usage_trends", metadata=signal_metadata(signals))

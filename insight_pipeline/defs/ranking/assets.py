"""Ranking assets: what CSMs' feedback teaches the ranking, and how useful the pushed insights are.

- `user_preferences`: per CSM and insight type, a Beta posterior of "this CSM finds this type
  worth acting on", shrunk toward the team (lib/ranking/preferences.py). `insight_candidates`
  scores with it, so yesterday's dismissals move today's ranking.
- `insight_quality`: relevance and action rates per day and rolling 28 days, overall, per CSM
  and per type (lib/ranking/quality.py), written to the store's insight_quality table for the
  API and shown in the run's metadata.

Both read the feedback history the API writes (`InsightStore.record_action`). No look-ahead:
day D's preferences use only feedback created before D, so a backfill of old days is not
steered by what CSMs said later, and a range run equals day-by-day runs.
"""

import dagster as dg
import polars as pl

from insight_pipeline.defs.metadata import markdown_preview, partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, StoreResource
from insight_pipeline.lib.ranking.preferences import learn_preferences
from insight_pipeline.lib.ranking.quality import quality_metrics

GROUP = "ranking"


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
)
def user_preferences(
    context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource
) -> pl.DataFrame:
    """Learned preference of each CSM for each insight type, per partition day, from the
    feedback created before that day (team rows, user_id null, are the cold-start prior)."""
    first, last = partition_days(context)
    with store.session() as db:
        events = db.feedback_events()
    preferences = learn_preferences(events, first, last, settings.settings().ranking)
    latest = preferences.filter(pl.col("partition_date") == last)
    own = latest.filter(pl.col("user_id").is_not_null()).with_columns(
        (pl.col("positives") + pl.col("negatives")).alias("judged")
    )
    team = latest.filter(pl.col("user_id").is_null()).sort("preference")
    context.add_output_metadata(
        {
            "rows": preferences.height,
            "feedback_events_before_last_day": int(
                events.filter(pl.col("created_at").dt.date() < last).height
            ),
            "csms_with_feedback": own["user_id"].n_unique() if own.height else 0,
            "team_prior_by_type": markdown_preview(
                team, ["type", "category", "positives", "negatives", "preference"], rows=25
            ),
            "least_wanted": markdown_preview(
                own.filter(pl.col("judged") > 0).sort("preference"),
                ["user_id", "type", "positives", "negatives", "preference"],
            ),
            "most_wanted": markdown_preview(
                own.filter(pl.col("judged") > 0).sort("preference", descending=True),
                ["user_id", "type", "positives", "negatives", "preference"],
            ),
        }
    )
    return preferences


def _rate(frame: pl.DataFrame, column: str) -> float | None:
    value = frame[column][0] if frame.height else None
    return None if value is None else round(float(value), 4)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars", "duckdb", "postgres"},
)
def insight_quality(
    context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource
) -> dg.MaterializeResult:
    """Relevance rate (acted-on insights not dismissed as not_relevant) and action rate
    (actioned or took_action) per day and rolling window, overall, per CSM and per type,
    replaced in the store's insight_quality table for the run's days."""
    first, last = partition_days(context)
    window = settings.settings().ranking.quality_window_days
    with store.session() as db:
        events = db.feedback_events()
    metrics = quality_metrics(events, first, last, windows=(1, window))
    with store.session() as db:
        written = db.write_quality(metrics, first, last)
    latest = metrics.filter(pl.col("quality_date") == last)
    overall = {
        w: latest.filter((pl.col("scope") == "overall") & (pl.col("window_days") == w))
        for w in (1, window)
    }
    rates = {
        f"{name}_{'day' if w == 1 else f'{w}d'}": rate
        for w, frame in overall.items()
        for name, rate in (
            ("relevance", _rate(frame, "relevance_rate")),
            ("action", _rate(frame, "action_rate")),
        )
        if rate is not None
    }
    rolling = latest.filter(pl.col("window_days") == window)
    columns = ["scope_key", "acted", "relevant", "actioned", "relevance_rate", "action_rate"]
    return dg.MaterializeResult(
        metadata={
            "rows_written": written,
            "acted_on_last_day": int(overall[1]["acted"].sum()),
            f"acted_on_{window}d": int(overall[window]["acted"].sum()),
            **rates,
            f"by_csm_{window}d": markdown_preview(
                rolling.filter(pl.col("scope") == "user").sort("relevance_rate"), columns, 30
            ),
            f"by_type_{window}d": markdown_preview(
                rolling.filter(pl.col("scope") == "type").sort("relevance_rate"), columns, 30
            ),
        }
    )

"""Quality of what the pipeline pushes, measured from what CSMs do with it.

Over a window of days ending on day D (the event's UTC date), each insight a CSM acted on
(dismissed, snoozed or actioned) counts once:

- **relevance rate** = share of the acted-on insights NOT dismissed as not_relevant (their
  latest action in the window decides: an insight snoozed, then dismissed as not relevant, is
  not relevant);
- **action rate** = share of the acted-on insights actioned or marked took_action at least once
  in the window.

Both are null when nothing was acted on. They are computed overall, per CSM (scope `user`) and
per insight type (scope `type`), for the day itself (window 1) and a rolling window
(`RankingSettings.quality_window_days`, 28). Insights nobody acted on are not in the
denominator: an unread insight says nothing about relevance (the feed's unread counts do).
"""

from __future__ import annotations

from datetime import date

import polars as pl

#: Columns of the quality metrics (the store's insight_quality table).
QUALITY_SCHEMA: dict[str, pl.DataType] = {
    "quality_date": pl.Date(),
    "window_days": pl.Int32(),
    "scope": pl.String(),
    "scope_key": pl.String(),
    "acted": pl.Int64(),
    "relevant": pl.Int64(),
    "actioned": pl.Int64(),
    "relevance_rate": pl.Float64(),
    "action_rate": pl.Float64(),
}

SCOPES = {"overall": pl.lit(""), "user": pl.col("user_id"), "type": pl.col("insight_type")}


def acted_insights(events: pl.DataFrame, first: date, last: date, window: int) -> pl.DataFrame:
    """One row per (quality_date in [first, last], insight acted on in the window ending then):
    user_id, insight_type, relevant, actioned. `events` has the store's FEEDBACK_SCHEMA."""
    dated = events.with_columns(
        pl.col("created_at").dt.convert_time_zone("UTC").dt.date().alias("_day"),
        ((pl.col("action") == "dismiss") & (pl.col("feedback") == "not_relevant"))
        .fill_null(False)
        .alias("_not_relevant"),
        ((pl.col("action") == "actioned") | (pl.col("feedback") == "took_action"))
        .fill_null(False)
        .alias("_actioned"),
    )
    # each event belongs to the windows ending on its day and the window - 1 days after it
    spread = (
        dated.with_columns(
            pl.date_ranges("_day", pl.col("_day") + pl.duration(days=window - 1)).alias(
                "quality_date"
            )
        )
        .explode("quality_date")
        .filter(pl.col("quality_date").is_between(first, last))
    )
    return (
        spread.sort("created_at", "id")
        .group_by("quality_date", "insight_id", maintain_order=True)
        .agg(
            pl.col("user_id").last(),
            pl.col("insight_type").last(),
            (~pl.col("_not_relevant").last()).alias("relevant"),
            pl.col("_actioned").any().alias("actioned"),
        )
    )


def quality_metrics(
    events: pl.DataFrame, first: date, last: date, windows: tuple[int, ...] = (1, 28)
) -> pl.DataFrame:
    """QUALITY_SCHEMA rows for every day in [first, last], window, scope and key with at least
    one acted-on insight (overall rows for every day, with zero counts and null rates when
    nothing was acted on)."""
    parts = []
    days = pl.DataFrame({"quality_date": pl.date_range(first, last, "1d", eager=True)})
    for window in windows:
        acted = acted_insights(events, first, last, window)
        for scope, key in SCOPES.items():
            counts = acted.group_by("quality_date", key.alias("scope_key")).agg(
                pl.len().cast(pl.Int64).alias("acted"),
                pl.col("relevant").sum().cast(pl.Int64),
                pl.col("actioned").sum().cast(pl.Int64),
            )
            if scope == "overall":
                counts = days.with_columns(pl.lit("").alias("scope_key")).join(
                    counts, on=["quality_date", "scope_key"], how="left"
                )
            parts.append(
                counts.with_columns(
                    pl.lit(window, dtype=pl.Int32).alias("window_days"),
                    pl.lit(scope).alias("scope"),
                    pl.col("acted", "relevant", "actioned").fill_null(0),
                )
            )
    frame = pl.concat(parts, how="diagonal_relaxed")
    rate = pl.when(pl.col("acted") > 0)
    return (
        frame.with_columns(
            rate.then(pl.col("relevant") / pl.col("acted")).alias("relevance_rate"),
            rate.then(pl.col("actioned") / pl.col("acted")).alias("action_rate"),
        )
        .select([pl.col(c).cast(t) for c, t in QUALITY_SCHEMA.items()])
        .sort("quality_date", "window_days", "scope", "scope_key")
    )

"""Insights: candidates folded into episodes against the store, new ones narrated."""

import dagster as dg
import polars as pl

from insight_pipeline.defs.insights.checks import check_specs, run_checks
from insight_pipeline.defs.metadata import counts_by, markdown_preview, partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import NarratorResource, SettingsResource, StoreResource
from insight_pipeline.defs.sharding import FrameParts
from insight_pipeline.lib.insights.formulate import evidence_json, narrate_frame
from insight_pipeline.lib.insights.outcomes import rate_key
from insight_pipeline.lib.ranking.episodes import (
    earliest_relevant_day,
    plan_episodes,
    rank_for_push,
)
from insight_pipeline.lib.settings import RankingSettings

GROUP = "insights"

UPSERT_COLUMNS = [
    "id",
    "customer_id",
    "customer_name",
    "user_id",
    "partition_date",
    "last_seen_date",
    "category",
    "type",
    "subject",
    "priority",
    "score",
    "title",
    "summary",
    "evidence",
    "so_what",
    "recommended_action",
    "fingerprint",
    "score_parts",
    "expires_at",
    "pushed",
    "rank_in_day",
]
PREVIEW = ["priority", "score", "customer_name", "type", "title", "partition_date"]


def with_base_rates(new: pl.DataFrame, rates: pl.DataFrame) -> pl.DataFrame:
    """Each new insight gets the base rate of its type (`rate_key`: a pattern change to a lower
    level, that of falling usage) as of the first day of its month."""
    if new.height == 0 or rates.height == 0:
        return new.with_columns(pl.lit(None, pl.String).alias("base_rate"))
    return (
        new.with_columns(
            pl.col("partition_date").dt.truncate("1mo").alias("_month"), rate_key().alias("_key")
        )
        .join(rates.rename({"as_of": "_month", "type": "_key"}), on=["_month", "_key"], how="left")
        .drop("_month", "_key")
    )


def plan_by_part(
    candidates: FrameParts, existing: pl.DataFrame, ranking: RankingSettings
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`plan_episodes` one part of the candidates (a group of whole accounts) at a time, each
    against the stored episodes of its accounts (those it may continue or echo); the day's push
    rank per CSM spans accounts, so it is ranked again over all new episodes. The same plan as
    one call on everything."""
    plans = []
    # lazy: `plan_episodes` reads a part's narrow columns, then only its new episodes' rows
    # whole (most of a year's candidates extend an episode; decoding their evidence and facts
    # was most of the read)
    for part in candidates.lazy_parts():
        ids = part.select("customer_id").unique().collect()
        if ids.height:  # an empty part has no customer_id, a part with rows has one at least
            plans.append(
                plan_episodes(part, existing.join(ids, on="customer_id", how="semi"), ranking)
            )
    if len(plans) <= 1:
        return plans[0] if plans else plan_episodes(candidates.lazy().collect(), existing, ranking)
    new = pl.concat([p[0] for p in plans])
    if "score" in new.columns:
        new = rank_for_push(new, ranking)
    return new.sort("id"), pl.concat([p[1] for p in plans]).sort("id")


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
    check_specs=check_specs("insights"),
)
def insights(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    store: StoreResource,
    narrator: NarratorResource,
    insight_candidates: FrameParts,
    insight_outcome_rates: pl.DataFrame,
):
    """The write plan for the insights table: new episodes (formulated, scored and narrated) and
    continuations of open insights (a persisting pattern moves last_seen_date, never re-raises).
    Checked before the sink may write it."""
    first, _last = partition_days(context)
    ranking = settings.settings().ranking
    db = store.open()
    try:
        existing = db.load_episodes(since=earliest_relevant_day(first, ranking))
        new, extensions = plan_by_part(insight_candidates, existing, ranking)
        new = with_base_rates(new, insight_outcome_rates)
        narrate_with = narrator.narrator(cache=db)  # the store caches Claude's narratives
        new = evidence_json(narrate_frame(new, narrate_with))
    finally:
        db.dispose()
    narration = getattr(narrate_with, "last_stats", None) or {
        "narrator": "template",
        "items": new.height,
    }
    plan = pl.concat(
        [
            new.select(UPSERT_COLUMNS).with_columns(pl.lit("insert").alias("action")),
            extensions.with_columns(
                pl.col("last_seen_date").alias("partition_date"), pl.lit("extend").alias("action")
            ),
        ],
        how="diagonal_relaxed",
    )
    yield dg.Output(
        plan,
        metadata={
            "new_insights": new.height,
            "continued_insights": extensions.height,
            "by_type": counts_by(new, "type"),
            "by_priority": counts_by(new, "priority"),
            "top_insights": markdown_preview(new.sort("score", descending=True), PREVIEW),
            **{f"narration_{key}": value for key, value in narration.items()},
        },
    )
    yield from run_checks(plan)

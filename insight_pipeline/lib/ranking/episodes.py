"""Noise control at the sink: one open insight per fingerprint.

A pattern detected again while its insight is open (within the type's TTL of the last
detection; within the dismissal cooldown after a dismissal) continues that insight: only its
last_seen_date and expires_at move. Anything else opens a new episode whose id is derived from
(fingerprint, first day), so re-running a partition updates rather than duplicates, and a range
run decides exactly what day-by-day runs in date order would.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import polars as pl

from insight_pipeline.lib.settings import RankingSettings

EPISODE_NAMESPACE = uuid.UUID("5d8f3c1e-6a1b-4c0e-9b7a-2f4e8d9c0a11")


def episode_id(fingerprint: str, first_day: date) -> str:
    return str(uuid.uuid5(EPISODE_NAMESPACE, f"{fingerprint}|{first_day.isoformat()}"))


def ttl_expr(settings: RankingSettings) -> pl.Expr:
    """TTL in days from the `category` column."""
    return (
        pl.col("category")
        .replace_strict(settings.ttl_days, default=14, return_dtype=pl.Int32)
        .alias("ttl_days")
    )


def earliest_relevant_day(start: date, settings: RankingSettings) -> date:
    """Existing episodes last seen before this day cannot be continued by [start, ...]."""
    longest = max([settings.dismiss_cooldown_days, *settings.ttl_days.values()])
    return start - timedelta(days=longest)


def plan_episodes(
    candidates: pl.DataFrame, existing: pl.DataFrame, settings: RankingSettings
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split day-level candidates into (new episodes to upsert, extensions of existing ones).

    candidates: one row per fingerprint x partition_date with `category` and the content.
    existing:   id, fingerprint, partition_date, last_seen_date, status from the store.
    Returns upserts (first row of each new episode + id, last_seen_date, expires_at) and
    extensions (id, last_seen_date, expires_at).
    """
    if candidates.height == 0:
        empty_ext = pl.DataFrame(
            schema={
                "id": pl.String,
                "last_seen_date": pl.Date,
                "expires_at": pl.Datetime("us", "UTC"),
            }
        )
        empty_new = candidates.clear().with_columns(
            pl.lit(None, dtype=pl.String).alias("id"),
            pl.lit(None, dtype=pl.Date).alias("last_seen_date"),
            pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("expires_at"),
        )
        return empty_new, empty_ext
    cands = candidates.with_columns(ttl_expr(settings)).sort(["fingerprint", "partition_date"])
    # Segments inside the range: a new one starts after a silence longer than the TTL.
    cands = cands.with_columns(
        (pl.col("partition_date") - pl.col("partition_date").shift(1).over("fingerprint"))
        .dt.total_days()
        .alias("_gap")
    ).with_columns(
        (pl.col("_gap").is_null() | (pl.col("_gap") > pl.col("ttl_days")))
        .cast(pl.Int32)
        .cum_sum()
        .over("fingerprint")
        .alias("_segment")
    )
    segments = cands.group_by(["fingerprint", "_segment"]).agg(
        pl.col("partition_date").min().alias("first_day"),
        pl.col("partition_date").max().alias("last_day"),
        pl.col("ttl_days").first(),
    )
    latest = (
        existing.sort("last_seen_date")
        .group_by("fingerprint")
        .agg(
            pl.col("id").last().alias("existing_id"),
            pl.col("last_seen_date").last().alias("existing_last"),
            pl.col("status").last().alias("existing_status"),
        )
        if existing.height
        else pl.DataFrame(
            schema={
                "fingerprint": pl.String,
                "existing_id": pl.String,
                "existing_last": pl.Date,
                "existing_status": pl.String,
            }
        )
    )
    segments = segments.join(latest, on="fingerprint", how="left").sort(["fingerprint", "_segment"])
    threshold = (
        pl.when(pl.col("existing_status") == "dismissed")
        .then(pl.lit(settings.dismiss_cooldown_days))
        .otherwise(pl.col("ttl_days"))
    )
    # Segment i continues the existing episode iff every gap up to i (the first measured from
    # the existing last_seen_date) is within the threshold: a prefix, found with cum_min.
    previous_last = pl.coalesce(
        pl.col("last_day").shift(1).over("fingerprint"), pl.col("existing_last")
    )
    segments = segments.with_columns(
        (
            pl.col("existing_id").is_not_null()
            & ((pl.col("first_day") - previous_last).dt.total_days() <= threshold)
        )
        .cast(pl.Int8)
        .cum_min()
        .over("fingerprint")
        .cast(pl.Boolean)
        .alias("_continues")
    )
    expires = (
        (pl.col("last_seen_date") + pl.duration(days=pl.col("ttl_days")))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )
    extensions = (
        segments.filter("_continues")
        .group_by("existing_id")
        .agg(
            pl.max_horizontal(pl.col("last_day").max(), pl.col("existing_last").max()).alias(
                "last_seen_date"
            ),
            pl.col("ttl_days").first(),
        )
        .rename({"existing_id": "id"})
        .with_columns(expires.alias("expires_at"))
        .select("id", "last_seen_date", "expires_at")
        .sort("id")
    )
    new_segments = segments.filter(~pl.col("_continues")).select(
        "fingerprint", "_segment", "last_day"
    )
    upserts = (
        cands.join(new_segments, on=["fingerprint", "_segment"], how="inner")
        .filter(
            pl.col("partition_date")
            == pl.col("partition_date").min().over(["fingerprint", "_segment"])
        )
        .rename({"last_day": "last_seen_date"})
        .with_columns(expires.alias("expires_at"))
        .with_columns(
            pl.struct("fingerprint", "partition_date")
            .map_elements(
                lambda r: episode_id(r["fingerprint"], r["partition_date"]), return_dtype=pl.String
            )
            .alias("id")
        )
        .drop("_gap", "_segment", "ttl_days")
        .sort("id")
    )
    return upserts, extensions

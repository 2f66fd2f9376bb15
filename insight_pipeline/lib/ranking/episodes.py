"""Noise control at the sink: one open insight per fingerprint.

A pattern detected again while its insight is open (within the type's TTL of the last
detection; within the dismissal cooldown after a dismissal) continues that insight: only its
last_seen_date and expires_at move. Anything else opens a new episode whose id is derived from
(fingerprint, first day), so re-running a partition updates rather than duplicates, and a range
run decides exactly what day-by-day runs in date order would.

Echoes: a new episode that repeats what an open episode of the same account says scores less
and is not critical (echoes.py).

Novelty: a new episode of a pattern whose previous episode ended less than `novelty_days`
before scores as less new (novelty 0.5 rising to 1), so a flapping pattern fades.

The daily cap: each CSM's new insights of a day are ranked (critical first, then by score) and
at most `daily_cap` of them are *pushed* (digest, notifications) - only critical ones and those
scoring at least `push_min_score`; the rest are kept in the table and the feed, not pushed.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import polars as pl

from insight_pipeline.lib.ranking.echoes import echo_of, explainers
from insight_pipeline.lib.ranking.scoring import score_insights
from insight_pipeline.lib.settings import RankingSettings

EPISODE_NAMESPACE = uuid.UUID("5d8f3c1e-6a1b-4c0e-9b7a-2f4e8d9c0a11")
# columns of scored candidates (insight_candidates); bare test frames skip scoring and the cap
_SCORED = {"user_id", "score", "severity", "confidence", "arr_percentile", "days_to_renewal"}


def episode_id(fingerprint: str, first_day: date) -> str:
    return str(uuid.uuid5(EPISODE_NAMESPACE, f"{fingerprint}|{first_day.isoformat()}"))


def episode_ids(fingerprint: pl.Series, first_day: pl.Series) -> pl.Series:
    """`episode_id` of each (fingerprint, first day) pair, computed in DuckDB: the UUID-5 is
    the SHA-1 of the namespace's bytes and the name's UTF-8, with its version and variant bits
    set (RFC 4122 4.3). One `uuid.uuid5` per row was a third of a year's episode planning."""
    import duckdb

    names = pl.DataFrame({"name": fingerprint + "|" + first_day.dt.to_string("%Y-%m-%d")})
    with duckdb.connect() as con:
        con.register("names", names)
        digest = con.sql(
            f"select sha1(unhex('{EPISODE_NAMESPACE.hex}') || encode(name)) as h from names"
        ).pl()
    hex_digit = pl.col("h").str.slice
    # version 5 in the 13th hex digit; the variant (10xx) in the 17th: 0-3 -> 8-b, 4-7 -> 8-b...
    variant = hex_digit(16, 1).replace_strict(
        {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}, return_dtype=pl.String
    )
    return digest.select(
        pl.concat_str(
            hex_digit(0, 8),
            pl.lit("-"),
            hex_digit(8, 4),
            pl.lit("-5"),
            hex_digit(13, 3),
            pl.lit("-"),
            variant,
            hex_digit(17, 3),
            pl.lit("-"),
            hex_digit(20, 12),
        ).alias("id")
    ).to_series()


def ttl_expr(settings: RankingSettings) -> pl.Expr:
    """TTL in days from the `category` column."""
    return (
        pl.col("category")
        .replace_strict(settings.ttl_days, default=14, return_dtype=pl.Int32)
        .alias("ttl_days")
    )


def earliest_relevant_day(start: date, settings: RankingSettings) -> date:
    """Existing episodes last seen before this day cannot be continued by [start, ...]."""
    longest = max(
        [settings.dismiss_cooldown_days, settings.novelty_days, *settings.ttl_days.values()]
    )
    return start - timedelta(days=longest)


def novelty_expr(previous_last: pl.Expr, settings: RankingSettings) -> pl.Expr:
    """Novelty of an episode starting on `first_day` after its pattern's previous episode
    ended on `previous_last` (null: none known): 1 when new or back after more than
    `novelty_days`, else from 0.5 (back at once) rising linearly to 1. A pattern that keeps
    expiring and coming back (a flapping metric) is less and less news."""
    gap = (pl.col("first_day") - previous_last).dt.total_days()
    return (
        pl.when(previous_last.is_null() | (gap > settings.novelty_days))
        .then(1.0)
        .otherwise(0.5 * (1.0 + gap.clip(lower_bound=0) / settings.novelty_days))
        .cast(pl.Float64)
    )


def rank_for_push(new: pl.DataFrame, settings: RankingSettings) -> pl.DataFrame:
    """Adds rank_in_day (1 = first, per user_id and partition_date: critical first, then score,
    then id) and pushed (critical or score >= push_min_score, and rank_in_day <= daily_cap).

    Depends only on the day's new insights of that CSM, so a range run and day-by-day runs
    push exactly the same insights.
    """
    critical = pl.col("critical").fill_null(False) if "critical" in new.columns else pl.lit(False)
    ranked = new.with_columns(critical.alias("_critical")).sort(
        ["user_id", "partition_date", "_critical", "score", "id"],
        descending=[False, False, True, True, False],
    )
    ranked = ranked.with_columns(
        (pl.int_range(pl.len()).over(["user_id", "partition_date"]) + 1)
        .cast(pl.Int32)
        .alias("rank_in_day")
    )
    eligible = pl.col("_critical") | (pl.col("score") >= settings.push_min_score)
    return (
        ranked.with_columns(
            (eligible & (pl.col("rank_in_day") <= settings.daily_cap)).alias("pushed")
        )
        .drop("_critical")
        .sort("id")
    )


def plan_episodes(
    candidates: pl.DataFrame, existing: pl.DataFrame, settings: RankingSettings
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split day-level candidates into (new episodes to upsert, extensions of existing ones).

    candidates: one row per fingerprint x partition_date with `category` and the content.
    existing:   id, fingerprint, partition_date, last_seen_date, status from the store (and
                customer_id, type, subject, category, score_parts: the episodes that may
                explain an echo).
    Returns upserts (first row of each new episode + id, last_seen_date, expires_at; for
    scored candidates also novelty, scored again, and rank_in_day and pushed: see
    `novelty_expr` and `rank_for_push`) and extensions (id, last_seen_date, expires_at).
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
            pl.lit(None, dtype=pl.Int32).alias("rank_in_day"),
            pl.lit(None, dtype=pl.Boolean).alias("pushed"),
        )
        return empty_new, empty_ext
    # The episode structure is worked out on a narrow frame (row, fingerprint, day, TTL): only
    # the first row of each new episode is taken from the wide candidates (evidence, facts...),
    # whose sort was most of the time of a long range.
    cands = (
        candidates.select("fingerprint", "partition_date", ttl_expr(settings))
        .with_row_index("_row")
        .sort(["fingerprint", "partition_date"])
    )
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
        novelty_expr(previous_last, settings).alias("_novelty"),
        (
            pl.col("existing_id").is_not_null()
            & ((pl.col("first_day") - previous_last).dt.total_days() <= threshold)
        )
        .cast(pl.Int8)
        .cum_min()
        .over("fingerprint")
        .cast(pl.Boolean)
        .alias("_continues"),
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
        "fingerprint", "_segment", "last_day", "_novelty"
    )
    firsts = (
        cands.join(new_segments, on=["fingerprint", "_segment"], how="inner")
        .filter(
            pl.col("partition_date")
            == pl.col("partition_date").min().over(["fingerprint", "_segment"])
        )
        .sort("_row")
    )
    upserts = (
        candidates[firsts["_row"]]
        .with_columns(
            firsts["last_day"].alias("last_seen_date"), firsts["ttl_days"].alias("ttl_days")
        )
        .with_columns(expires.alias("expires_at"))
        .drop("ttl_days")
    )
    upserts = upserts.with_columns(
        episode_ids(upserts["fingerprint"], upserts["partition_date"]),
        firsts["_novelty"].alias("novelty"),
    )
    if _SCORED <= set(upserts.columns):
        # novelty and echoes are only known here, against the episodes before: score again,
        # then cap
        if settings.echo_factor < 1:
            upserts = upserts.with_columns(
                echo_of(upserts, explainers(existing, upserts, extensions, settings))
            )
        upserts = rank_for_push(score_insights(upserts, settings), settings)
    return upserts.sort("id"), extensions

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
    # the row's place in its run of (user_id, partition_date): `int_range(len).over(...)`
    # without a window per CSM and day (see `_previous`)
    row = pl.int_range(pl.len())
    first_row = pl.when(_starts("user_id", "partition_date")).then(row).forward_fill()
    ranked = ranked.with_columns((row - first_row + 1).cast(pl.Int32).alias("rank_in_day"))
    eligible = pl.col("_critical") | (pl.col("score") >= settings.push_min_score)
    return (
        ranked.with_columns(
            (eligible & (pl.col("rank_in_day") <= settings.daily_cap)).alias("pushed")
        )
        .drop("_critical")
        .sort("id")
    )


def _rows(
    candidates: pl.DataFrame | pl.LazyFrame, rows: pl.Series, keys: pl.DataFrame
) -> pl.DataFrame:
    """`candidates[rows]` for ascending `rows`, whose (fingerprint, partition_date) are `keys`;
    of a lazy frame (a stored part) only those rows are collected whole, so its heavy columns
    (evidence, facts) are decoded for them alone."""
    if isinstance(candidates, pl.DataFrame):
        return candidates[rows]
    if not any(keys.get_column(c).null_count() for c in keys.columns):
        # A predicate on the key columns is applied by the scan to those columns first, the
        # others then decoded for the matching rows only (a predicate on a row number is not:
        # every row was decoded, ~1.3 s CPU of a 10k year for 4% of its rows). Each row
        # matches its own key, so as many rows as keys are the rows themselves, in file order;
        # more means a key repeats (never in `insight_candidates`): then by row number.
        wanted = pl.struct(keys.columns).is_in(
            keys.select(pl.struct(keys.columns)).to_series().implode()
        )
        found = candidates.filter(wanted).collect()
        if found.height == rows.len():
            return found
    return (
        candidates.with_row_index("_row")
        .filter(pl.col("_row").is_in(rows.implode()))
        .drop("_row")
        .collect()
    )


def _starts(*keys: str) -> pl.Expr:
    """True on the first row of each run of equal `keys` values (nulls equal)."""
    same = [pl.col(key).eq_missing(pl.col(key).shift(1)) for key in keys]
    return ~pl.all_horizontal(same) | (pl.int_range(pl.len()) == 0)


def _previous(column: str, key: str) -> pl.Expr:
    """`pl.col(column).shift(1).over(key)` on rows sorted by `key`: the row above within the
    same key. A window runs once per group, and with a group per fingerprint (tens of
    thousands) it took ~0.1 s per window; this is a shift and a mask."""
    return pl.when(~_starts(key)).then(pl.col(column).shift(1))


def _all_so_far(flag: str, key: str) -> pl.Expr:
    """`pl.col(flag).cast(pl.Int8).cum_min().over(key).cast(pl.Boolean)` on rows sorted by
    `key` (see `_previous`): whether no False came yet within the key, up to this row; a null
    flag stays null and is skipped, as cum_min skips it."""
    falses = (~pl.col(flag)).fill_null(False).cast(pl.Int64)
    seen = falses.cum_sum()
    before_key = pl.when(_starts(key)).then(seen - falses).forward_fill()
    return pl.when(pl.col(flag).is_not_null()).then(seen == before_key)


def plan_episodes(
    candidates: pl.DataFrame | pl.LazyFrame, existing: pl.DataFrame, settings: RankingSettings
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split day-level candidates into (new episodes to upsert, extensions of existing ones).

    candidates: one row per fingerprint x partition_date with `category` and the content; a
                LazyFrame (a stored part) is read narrow, then only the new episodes' first
                rows whole (a year's range raises new episodes on ~4% of its candidates).
    existing:   id, fingerprint, partition_date, last_seen_date, status from the store (and
                customer_id, type, subject, category, score_parts: the episodes that may
                explain an echo).
    Returns upserts (first row of each new episode + id, last_seen_date, expires_at; for
    scored candidates also novelty, scored again, and rank_in_day and pushed: see
    `novelty_expr` and `rank_for_push`) and extensions (id, last_seen_date, expires_at).
    """
    # The episode structure is worked out on a narrow frame (row, fingerprint, day, TTL): only
    # the first row of each new episode is taken from the wide candidates (evidence, facts...),
    # whose sort was most of the time of a long range.
    narrow = None
    if isinstance(candidates, pl.LazyFrame):
        narrow = candidates.select("fingerprint", "partition_date", ttl_expr(settings)).collect()
        if narrow.height == 0:
            candidates = candidates.clear().collect()
    if (narrow if narrow is not None else candidates).height == 0:
        assert isinstance(candidates, pl.DataFrame)
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
        if _SCORED <= set(empty_new.columns):  # the columns of a scored plan (score_parts...)
            return rank_for_push(score_insights(empty_new, settings), settings), empty_ext
        empty_new = empty_new.with_columns(
            pl.lit(None, dtype=pl.Int32).alias("rank_in_day"),
            pl.lit(None, dtype=pl.Boolean).alias("pushed"),
        )
        return empty_new, empty_ext
    if narrow is None:
        narrow = candidates.select("fingerprint", "partition_date", ttl_expr(settings))
    cands = narrow.with_row_index("_row").sort(["fingerprint", "partition_date"])
    # Segments inside the range: a new one starts after a silence longer than the TTL. The
    # rows are sorted by fingerprint, so the previous row of the same fingerprint is the row
    # above, and numbering the segments through all rows (not from 1 per fingerprint) keeps
    # their order within each fingerprint and makes `_segment` alone a segment's key: no
    # window over the fingerprint texts.
    cands = cands.with_columns(
        (pl.col("partition_date") - _previous("partition_date", "fingerprint"))
        .dt.total_days()
        .alias("_gap")
    ).with_columns(
        (pl.col("_gap").is_null() | (pl.col("_gap") > pl.col("ttl_days")))
        .cast(pl.Int64)
        .cum_sum()
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
    # the existing last_seen_date) is within the threshold: a prefix (a cum_min per
    # fingerprint, taken on the sorted rows without a window: see `_previous`).
    previous_last = pl.coalesce(_previous("last_day", "fingerprint"), pl.col("existing_last"))
    segments = segments.with_columns(
        novelty_expr(previous_last, settings).alias("_novelty"),
        (
            pl.col("existing_id").is_not_null()
            & ((pl.col("first_day") - previous_last).dt.total_days() <= threshold)
        ).alias("_within"),
    ).with_columns(_all_so_far("_within", "fingerprint").alias("_continues"))
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
        .filter(pl.col("partition_date") == pl.col("partition_date").min().over("_segment"))
        .sort("_row")
    )
    upserts = (
        _rows(candidates, firsts["_row"], firsts.select("fingerprint", "partition_date"))
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

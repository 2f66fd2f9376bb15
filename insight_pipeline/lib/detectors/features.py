"""feature_discovery: an account starts using a feature it has not used in the visible history.

"Never used" is judged over the rows read (the look-back window): a feature whose first active day
in the window comes at least `min_prior_days` after the window opened, after the table's record
begins and after the account's onboarding is a discovery. Accounts that are still onboarding are
skipped (everything is new then).
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl

from insight_pipeline.lib.detectors.common import is_customer_on, sort_by_integers
from insight_pipeline.lib.signals import conform, empty_signals, evidence_item

MIN_PRIOR_DAYS = 56
DISCOVERY_WINDOW_DAYS = 14
HISTORY_DAYS = MIN_PRIOR_DAYS + DISCOVERY_WINDOW_DAYS
MIN_PRIOR = timedelta(days=MIN_PRIOR_DAYS)
"""Days before the first day of a run that the detector reads (older rows change nothing)."""


def _window_rows(ordered: pl.DataFrame, starts: pl.Series, days: int) -> pl.DataFrame:
    """The rows of `ordered` (sorted by _c, _f and date) in the same (_c, _f) group as one of
    the rows at positions `starts` and within `days` days from its date on, each once: they
    follow the start row, so they are gathered by position instead of joining every row of
    the group (11M rows on two texts in a 10k year). A group holds at most `repeat` rows per
    day (1 after quarantine), so at most `days * repeat` rows follow a start in its window."""
    repeated = pl.all_horizontal(pl.col(c) == pl.col(c).shift(1) for c in ("_c", "_f", "date"))
    repeat = 1
    if ordered.select(repeated.any()).item():  # rows not unique by day: how many at most
        day_runs = pl.struct("_c", "_f", "date").rle().struct.field("len").max()
        repeat = int(ordered.select(day_runs).item())
    start = np.sort(starts.to_numpy()).astype(np.int64)
    at = (start[:, None] + np.arange(days * repeat)).ravel()
    origin = np.repeat(start, days * repeat)
    inside = at < ordered.height
    at, origin = at[inside], origin[inside]
    codes = [ordered.get_column(c).to_numpy() for c in ("_c", "_f")]
    day = ordered.get_column("date").to_physical().to_numpy()
    same = (codes[0][at] == codes[0][origin]) & (codes[1][at] == codes[1][origin])
    within = same & (day[at] <= day[origin] + (days - 1))
    # windows of one group's starts are more than MIN_PRIOR_DAYS apart, so the rows reached
    # come in order, each once; were they not, a row is still kept once
    reached = at[within]
    if reached.size > 1 and not (np.diff(reached) > 0).all():
        reached = np.unique(reached)
    return ordered[reached]


def _with_texts(rows: pl.DataFrame, used: pl.DataFrame) -> pl.DataFrame:
    """`rows` (of the sorted codes) with the customer_id and feature of their row of `used`."""
    at = rows["_row"]
    return rows.with_columns(
        used["customer_id"].gather(at).alias("customer_id"),
        used["feature"].gather(at).alias("feature"),
    ).drop("_row")


def detect_feature_discovery(
    features: pl.DataFrame | pl.LazyFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    features_since: date | None = None,
) -> pl.DataFrame:
    """feature_discovery signals of [start, end] from the rows of `features` (a frame or a scan)
    in the HISTORY_DAYS before `start` and after: older rows change nothing.

    `features_since`, the first day of the table on record: a first use less than
    MIN_PRIOR_DAYS after it is not a discovery, since the days before it are not on record (a
    source connected today would otherwise make every feature in use "new" on its first day)."""
    # A (re)discovery: active on a day whose previous active day, if any is visible, is more than
    # MIN_PRIOR_DAYS earlier. Gaps, not first rows, so the answer does not depend on how far back
    # a run happened to read. Only days from `opened` on can start a discovery shown in the run,
    # so only those are sorted; for the earliest of them the previous active day is the last
    # one before `opened` (one aggregate over the older rows). Only the last MIN_PRIOR_DAYS
    # before `opened` are aggregated: an older last day, like none, leaves a gap of more than
    # MIN_PRIOR_DAYS to any day from `opened` on.
    opened = start - timedelta(days=DISCOVERY_WINDOW_DAYS)
    active = features.lazy().filter(pl.col("active_users") > 0)  # lazy: filtered in parallel
    used = active.filter(pl.col("date").is_between(opened, end)).collect()
    if used.height == 0:  # no active day that could start a discovery shown in the run
        return empty_signals()
    before = (
        active.filter(
            pl.col("date").is_between(opened - timedelta(days=MIN_PRIOR_DAYS), opened, "left")
        )
        .group_by("customer_id", "feature")
        .agg(pl.col("date").max().alias("last_before"))
        .collect()
    )
    # Sorted by (customer, feature, date) through integer codes (the categorical codes of the
    # two texts: a hash lookup per row, no join; their order does not matter, only that each
    # customer x feature is contiguous with its days ascending), so "the previous active day of
    # the same feature" is a shift masked at group changes. Rows are unique by (customer, date,
    # feature) after quarantine; a repeated row would only see itself as its previous day (gap
    # 0) and drop out.
    long_gap = pl.col("previous").is_null() | (
        (pl.col("date") - pl.col("previous")).dt.total_days() > MIN_PRIOR_DAYS
    )
    same_group = (pl.col("_c") == pl.col("_c").shift(1)) & (pl.col("_f") == pl.col("_f").shift(1))
    # The texts stay out of the sort (its gathers of 11M ids and names were most of it): the
    # rows kept take them from `used` by their row number (`_row`).
    coded = used.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"),
        "date",
        "active_users",
        pl.col("customer_id").cast(pl.Categorical).to_physical().alias("_c"),
        pl.col("feature").cast(pl.Categorical).to_physical().alias("_f"),
    ).drop_nulls(["_c", "_f"])  # (quarantined at the source; no group to belong to)
    ordered = sort_by_integers(coded, ["_c", "_f", "date"]).with_row_index("_at")
    gaps = (
        ordered.with_columns(pl.when(same_group).then(pl.col("date").shift(1)).alias("previous"))
        .drop("_c", "_f", "active_users")
        .filter(long_gap)  # a row with a previous day here keeps it: the join is for the rest
    )
    firsts = (
        _with_texts(gaps, used)
        .select("_at", "customer_id", "feature", "date", "previous")
        .join(before, on=["customer_id", "feature"], how="left")
        .with_columns(pl.coalesce("previous", "last_before").alias("previous"))
        .drop("last_before")
        .filter(long_gap)
        .rename({"date": "first_used"})
        .join(accounts.select("customer_id", "contract_start", "churned_on"), on="customer_id")
        .filter(
            pl.col("contract_start").is_not_null()
            & (pl.col("first_used") >= pl.col("contract_start") + pl.duration(days=MIN_PRIOR_DAYS))
            & (
                pl.col("previous").is_not_null()
                | (
                    (pl.col("first_used") >= pl.lit(start) - timedelta(DISCOVERY_WINDOW_DAYS))
                    & (pl.col("first_used") >= pl.lit(features_since or date.min) + MIN_PRIOR)
                )
            )
        )
        .with_columns(
            pl.date_ranges(
                "first_used", pl.col("first_used") + pl.duration(days=DISCOVERY_WINDOW_DAYS - 1)
            ).alias("partition_date")
        )
        .explode("partition_date")
        .filter(pl.col("partition_date").is_between(start, end))
        # the days its account is a customer (`customer_days`' rule on the account's dates
        # joined above, instead of a semi join with the 3.5M customer days of a 10k year)
        .filter(is_customer_on("partition_date"))
        .drop("churned_on")
    )
    if firsts.height == 0:
        return empty_signals()
    # active users on the latest active day up to each partition day: an as-of join (a plain
    # join on (customer, feature) would pair every active day with every partition day)
    # only the active days a discovery's window can reach: from its first use on
    reach = _with_texts(
        _window_rows(ordered, firsts["_at"].unique(), DISCOVERY_WINDOW_DAYS), used
    ).select("customer_id", "feature", "date", "active_users")
    latest = (
        firsts.select("customer_id", "feature", "partition_date")
        .unique()
        .sort("partition_date")
        .join_asof(
            reach.sort("date"),
            left_on="partition_date",
            right_on="date",
            by=["customer_id", "feature"],
            strategy="backward",
            check_sortedness=False,
        )
        .drop("date")
    )
    hits = firsts.join(latest, on=["customer_id", "feature", "partition_date"], how="left")
    return conform(
        hits.with_columns(
            pl.lit("feature_discovery").alias("type"),
            pl.col("feature").alias("subject"),
            pl.lit(0.35).alias("severity"),
            pl.lit(0.8).alias("confidence"),
            pl.concat_list(
                evidence_item(
                    pl.format("{} active users", pl.col("feature")),
                    pl.col("active_users"),
                    pl.format(
                        "first use on {}; none in the {} days before",
                        pl.col("first_used"),
                        MIN_PRIOR_DAYS,
                    ),
                    "feature_usage_daily",
                )
            ).alias("evidence"),
            pl.struct(
                pl.col("feature"),
                pl.col("first_used").cast(pl.String),
                pl.col("active_users").fill_null(0),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )

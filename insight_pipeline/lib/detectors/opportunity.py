"""Opportunity detectors: entitlement_limit, case_study_candidate, referral_candidate."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl

from insight_pipeline.lib.detectors.common import customer_days
from insight_pipeline.lib.detectors.usage import (
    _epoch_day,
    evidence_list,
    rows_since,
    trailing_sums,
    usage_grid,
)
from insight_pipeline.lib.settings import OpportunitySettings
from insight_pipeline.lib.signals import conform, empty_signals, evidence_item

MAX_PROJECTION_DAYS = 3650
"""A limit projected more than ten years away (or as far back) is shown as no date."""


def detect_entitlement_limit(
    usage: pl.DataFrame | pl.LazyFrame,
    entitlements: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: OpportunitySettings,
    starts: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """A metric at entitlement_ratio of its entitlement on limit_days of the last 7 days, or on
    course to exceed it before renewal (log-linear weekly trend over projection_weeks - the
    median of the slopes between its weeks - projected to renewal_date).

    `usage` may be a scan of a large window: only the entitled metrics' rows are read.
    `starts`: `series_starts` of the whole window, when `usage` is one part of it (a long run
    takes the accounts a part at a time): then the older rows are not read again per part."""
    if entitlements.height == 0:
        return empty_signals()
    k = s.projection_weeks
    metrics = entitlements["metric"].unique()
    # lazy: filtered in parallel, and only the rows the windows need are collected
    scan = usage.lazy().filter(pl.col("metric").is_in(metrics.implode()) & (pl.col("date") <= end))
    # The windows of a run day reach back 7 k - 1 days (k weekly means of 7 days), and give
    # the same floats on a grid that starts there (sums in a fixed order, `trailing_sums`).
    if starts is not None:
        # the series of `scan`: its metrics, this part's accounts (usage of a customer not
        # in `accounts` is quarantined at the source, and no signal would read it)
        starts = starts.filter(pl.col("metric").is_in(metrics.implode())).join(
            accounts.select("customer_id"), on="customer_id", how="semi"
        )
    usage = rows_since(scan, start - timedelta(days=7 * k - 1), starts)
    if usage.height == 0:
        return empty_signals()
    grid = usage_grid(usage, end)
    weeks = [f"m{i}" for i in range(k)]
    # Windows over every day of a series (rolling, masked at series starts: rows are contiguous
    # and daily), results only for the run's days, the weekly means gathered at their lags.
    wanted = np.flatnonzero((grid.day >= _epoch_day(start)) & (grid.day <= _epoch_day(end)))
    # (a sum in a fixed order: the same floats in a range and in a day's run)
    m0 = trailing_sums(grid.value, grid.position, 7) / 7

    def weeks_back(i: int, rows: np.ndarray) -> pl.Series:
        lag = 7 * i
        back = np.where(grid.position[rows] >= lag, m0.take(rows - lag, mode="clip"), np.nan)
        return pl.Series(weeks[i], back, nan_to_null=True)

    # The entitlements and renewal dates joined to the series' keys (15k for a 10k year), not to
    # the texts of every grid row (5.5M): each wanted row of an entitled series, once per match
    # of its series, in grid order (the order a join of the rows gave).
    entitled = (
        grid.keys.with_row_index("_series")
        .join(entitlements, on=["customer_id", "metric"], how="inner")
        .filter(pl.col("entitled_value") > 0)
        .join(accounts.select("customer_id", "renewal_date"), on="customer_id", how="inner")
        .sort("_series", maintain_order=True)
    )
    per_series = np.bincount(entitled["_series"].to_numpy(), minlength=grid.keys.height)
    count = per_series[grid.series[wanted]]
    first_match = (np.cumsum(per_series) - per_series)[grid.series[wanted]]
    match = np.repeat(first_match - (np.cumsum(count) - count), count) + np.arange(count.sum())
    stats = pl.DataFrame({"_row": np.repeat(wanted, count), "_match": match})
    if stats.height == 0:
        return empty_signals()
    # Both kinds of hit need a ratio of at least min(entitlement_ratio, min_projection_ratio):
    # the texts, the weekly means, the slope and the limit date are only for those rows.
    ratio = pl.col("level") / pl.col("entitled_value")
    level = np.full(grid.value.size, np.nan)
    level_rows = wanted[count > 0]
    level[level_rows] = week_level(grid.value, grid.position, level_rows, s.limit_days)
    stats = (
        stats.with_columns(
            pl.Series("level", level.take(stats["_row"].to_numpy()), nan_to_null=True),
            entitled["entitled_value"].gather(stats["_match"]),
        )
        .with_columns(ratio.alias("ratio"))
        .filter(pl.col("ratio") >= min(s.entitlement_ratio, s.min_projection_ratio))
    )
    rows = stats["_row"].to_numpy()
    stats = pl.concat(
        [entitled.drop("_series", "entitled_value")[stats["_match"]], stats], how="horizontal"
    ).with_columns(
        pl.Series("partition_date", grid.day[rows], dtype=pl.Int32).cast(pl.Date),
        pl.Series("m0", m0[rows], nan_to_null=True),
        *[weeks_back(i, rows) for i in range(1, k)],
    )
    # The weekly trend is the median of the slopes between every two weeks (Theil-Sen): one
    # busy week - a month-end close, a seasonal peak - tilts a least-squares line enough to
    # project a crossing that never comes (trial 6: 11 of 22 projected limits inside the data,
    # none reached); a steady climb gives the same slope either way.
    ys = [pl.col(w).clip(lower_bound=1e-6).log() for w in weeks]  # week i: i weeks back
    slope = pl.concat_list(
        [(ys[i] - ys[j]) / (j - i) for i in range(k) for j in range(i + 1, k)]
    ).list.median()
    current = pl.col("m0")
    days_to_limit = (pl.col("entitled_value") / current).log() / pl.col("slope") * 7
    # A nearly flat trend projects the limit centuries ahead (or past the calendar, which polars
    # cannot add to a date): beyond MAX_PROJECTION_DAYS there is no limit date to show.
    # A weekly average already over the limit has no crossing ahead (the formula would put it
    # in the past): the texts say it is over.
    over = current >= pl.col("entitled_value")
    projected = (
        (pl.col("slope") > 0)
        & (current > 0)
        & ~over
        & days_to_limit.is_finite()
        & (days_to_limit.abs() <= MAX_PROJECTION_DAYS)
    )
    stats = stats.with_columns(slope.alias("slope")).with_columns(
        pl.when(projected)
        .then(pl.col("partition_date") + pl.duration(days=days_to_limit.round(0).cast(pl.Int64)))
        .alias("limit_date")
    )
    at_limit = pl.col("ratio") >= s.entitlement_ratio
    on_course = (
        (pl.col("ratio") >= s.min_projection_ratio)
        & pl.col("limit_date").is_not_null()
        & pl.col("renewal_date").is_not_null()
        & (pl.col("limit_date") <= pl.col("renewal_date"))
        & (
            pl.col("limit_date")
            <= pl.col("partition_date") + pl.duration(days=s.projection_horizon_days)
        )
        & pl.all_horizontal([pl.col(w).is_not_null() for w in weeks])
    )
    hits = stats.filter(at_limit | on_course)
    # the customer x day frame of the hits' customers only (a semi join looks at nothing else)
    hit_accounts = accounts.filter(pl.col("customer_id").is_in(hits["customer_id"].implode()))
    hits = hits.join(
        customer_days(hit_accounts, start, end).select("customer_id", "partition_date"),
        on=["customer_id", "partition_date"],
        how="semi",
    )
    if hits.height == 0:
        return empty_signals()
    return conform(
        hits.with_columns(
            pl.lit("entitlement_limit").alias("type"),
            pl.col("metric").alias("subject"),
            (
                0.4
                + 0.6
                * ((pl.col("ratio") - s.min_projection_ratio) / (1.0 - s.min_projection_ratio))
            )
            .clip(0.3, 1.0)
            .alias("severity"),
            pl.when(at_limit).then(0.95).otherwise(0.6).alias("confidence"),
            evidence_list(
                evidence_item(
                    pl.format("{} (reached on {} of the last 7 days)", "metric", s.limit_days),
                    pl.col("level"),
                    pl.format("entitled {}", pl.col("entitled_value")),
                    "usage_daily, entitlements",
                ),
                evidence_item(
                    pl.lit("share of entitlement used (%)"),
                    (pl.col("ratio") * 100).round(0),
                    pl.format(
                        "{} (renewal {})",
                        pl.when(over)
                        .then(pl.lit("weekly average already at or over the limit"))
                        .when(pl.col("limit_date").is_null())
                        .then(pl.lit("no limit date at the current weekly trend"))
                        .otherwise(
                            pl.format(
                                "weekly average projected to reach the limit on {}", "limit_date"
                            )
                        ),
                        pl.col("renewal_date").cast(pl.String).fill_null("not on record"),
                    ),
                    "usage_daily, entitlements",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("metric"),
                pl.col("level").round(0).alias("level"),
                pl.lit(s.limit_days).alias("days"),
                pl.col("entitled_value").round(0).alias("entitled"),
                (pl.col("ratio") * 100).round(0).alias("used_pct"),
                at_limit.alias("at_limit"),
                over.alias("average_over"),
                pl.col("limit_date").cast(pl.String).alias("limit_date"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


WEEK_LEVEL_CHUNK = 1 << 20
"""Rows whose weeks `week_level` holds at once (7 floats each: 56 MB)."""


def week_level(value: np.ndarray, position: np.ndarray, rows: np.ndarray, days: int) -> np.ndarray:
    """The value a series reached on at least `days` of the 7 days ending at each of `rows`
    (the `days`-th highest of that week; NaN before a series' seventh day). One busy day is not
    a limit reached: a daily allowance is hit when the account keeps coming back to it, as a
    weekday-only account does on `days` = 3 of its 5 working days. Chunked, so a long range
    holds the weeks of a few rows at a time."""
    out = np.full(rows.size, np.nan)
    for lo in range(0, rows.size, WEEK_LEVEL_CHUNK):
        chunk = rows[lo : lo + WEEK_LEVEL_CHUNK]
        week = np.stack([value.take(chunk - lag, mode="clip") for lag in range(7)], axis=1)
        reached = np.partition(week, 7 - days, axis=1)[:, 7 - days]
        out[lo : lo + chunk.size] = np.where(np.isnan(week).any(axis=1), np.nan, reached)
    out[position[rows] < 6] = np.nan
    return out


def account_momentum(
    usage: pl.DataFrame,
    health: pl.DataFrame,
    meetings: pl.DataFrame,
    days: pl.DataFrame,
    growth_weeks: int,
) -> pl.DataFrame:
    """Per (customer, partition_date): usage growth (last 4 weeks vs 4 weeks ending growth_weeks
    ago: the median of its metrics' changes, seats aside), latest health and mean meeting
    sentiment over 90 days.

    Each metric's change is its own ratio, and the account's growth their median: a sum of the
    metrics let the largest unit speak for all ("usage grew +35%" where API calls rose 35%,
    hours 3% and reports fell 33%, trial 7)."""
    end = days["partition_date"].max()
    # Every statistic is per customer: only the customers of `days` are looked at (a few hundred
    # promoters, not millions of health and meeting rows to sort).
    customers = pl.col("customer_id").is_in(days["customer_id"].unique().implode())
    health = health.lazy().filter(customers).collect()
    meetings = meetings.lazy().filter(customers).collect()
    grid = usage_grid(
        usage.filter((pl.col("metric") != "seats_used") & (pl.col("date") <= end)), end
    )
    # 4-week totals now and `growth_weeks` - 4 weeks before (sums in a fixed order: the same
    # floats in a range and in a day's run)
    recent = trailing_sums(grid.value, grid.position, 28)
    lag = 7 * (growth_weeks - 4)
    older = np.full(recent.size, np.nan)
    older[lag:] = recent[: max(recent.size - lag, 0)]
    older[grid.position < lag] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        # (usage that stopped is -99.9%: a finite fall, so that a median of two is no NaN)
        change = np.where(older > 0, np.log(np.maximum(recent / older, 1e-3)), np.nan)
    growth = (
        grid.frame()
        .select(
            "customer_id",
            pl.col("date").alias("partition_date"),
            pl.Series("change", change, nan_to_null=True),
        )
        .join(days, on=["customer_id", "partition_date"], how="semi")
        .group_by("customer_id", "partition_date")
        .agg((pl.col("change").median().exp() - 1.0).fill_nan(None).alias("growth"))
    )
    out = days.join(growth, on=["customer_id", "partition_date"], how="left").sort("partition_date")
    if health.height:
        out = out.join_asof(
            health.select(
                "customer_id", pl.col("date").alias("h_date"), pl.col("score").alias("health")
            ).sort("h_date"),
            left_on="partition_date",
            right_on="h_date",
            by="customer_id",
            strategy="backward",
            tolerance="30d",
        )
    else:
        out = out.with_columns(pl.lit(None, pl.Float64).alias("health"))
    if meetings.height:
        sentiment = (
            meetings.filter(pl.col("sentiment").is_not_null())
            .select("customer_id", pl.col("start_at").dt.date().alias("m_date"), "sentiment")
            .sort("customer_id", "m_date")
            .with_columns(
                pl.col("sentiment").rolling_mean_by("m_date", window_size="90d").over("customer_id")
            )
            .sort("m_date")
        )
        out = out.join_asof(
            sentiment,
            left_on="partition_date",
            right_on="m_date",
            by="customer_id",
            strategy="backward",
            tolerance="90d",
        )
    else:
        out = out.with_columns(pl.lit(None, pl.Float64).alias("sentiment"))
    return out.select("customer_id", "partition_date", "growth", "health", "sentiment")


def detect_advocacy(
    nps: pl.DataFrame,
    usage: pl.DataFrame | pl.LazyFrame,
    health: pl.DataFrame,
    meetings: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: OpportunitySettings,
) -> pl.DataFrame:
    """A promoter NPS (9-10) in the last promoter_window_days: a referral_candidate when usage is
    healthy (not declining, health fine); a case_study_candidate when usage also grew and health
    and meeting sentiment are high."""
    if nps.height == 0:
        return empty_signals()
    promoters = (
        nps.filter(pl.col("score") >= s.promoter_min_score)
        .with_columns(
            pl.date_ranges(
                "responded_on",
                pl.col("responded_on") + pl.duration(days=s.promoter_window_days - 1),
            ).alias("partition_date")
        )
        .explode("partition_date")
        .filter(pl.col("partition_date").is_between(start, end))
        .group_by("customer_id", "partition_date", maintain_order=True)  # a stable row order
        .agg(pl.col("score").max(), pl.col("responded_on").max())
    )
    promoters = promoters.join(
        # the customer x day frame of the promoters' customers only
        customer_days(
            accounts.filter(pl.col("customer_id").is_in(promoters["customer_id"].implode())),
            start,
            end,
        ).select("customer_id", "partition_date"),
        on=["customer_id", "partition_date"],
        how="semi",
    )
    if promoters.height == 0:
        return empty_signals()
    momentum = account_momentum(
        usage.lazy()  # a lazy filter runs in parallel (2-3x faster on tens of millions of rows)
        .filter(pl.col("customer_id").is_in(promoters["customer_id"].unique().implode()))
        .collect(),
        health,
        meetings,
        promoters.select("customer_id", "partition_date"),
        s.growth_weeks,
    )
    frame = promoters.join(momentum, on=["customer_id", "partition_date"], how="left")
    # Healthy usage must be seen: an account without `growth_weeks` of usage on record (a new
    # account, a source connected last month) is no referral candidate yet - its promoter
    # response is still an outreach_window. No health table is no evidence either way.
    health_ok = pl.col("health").is_null() | (pl.col("health") >= s.referral_min_health)
    referral = (pl.col("growth") >= s.referral_min_growth) & health_ok
    case_study = (
        (pl.col("growth") >= s.case_study_min_growth)
        & (pl.col("health") >= s.case_study_min_health)
        & (pl.col("sentiment").is_null() | (pl.col("sentiment") >= s.case_study_min_sentiment))
    )
    parts = [
        frame.filter(case_study.fill_null(False)).with_columns(
            pl.lit("case_study_candidate").alias("type")
        ),
        frame.filter(referral.fill_null(False)).with_columns(
            pl.lit("referral_candidate").alias("type")
        ),
    ]
    hits = pl.concat(parts)
    if hits.height == 0:
        return empty_signals()
    return conform(
        hits.with_columns(
            pl.lit("").alias("subject"),
            (0.35 + 0.3 * pl.col("growth").fill_null(0.0).clip(0.0, 1.0)).alias("severity"),
            pl.lit(0.8).alias("confidence"),
            evidence_list(
                evidence_item(
                    pl.lit("NPS"),
                    pl.col("score"),
                    pl.format("responded on {}", pl.col("responded_on")),
                    "nps_responses",
                ),
                evidence_item(
                    pl.lit("usage growth (%)"),
                    (pl.col("growth") * 100).round(0),
                    pl.format(
                        "last 4 weeks vs 4 weeks ending {} weeks earlier, the median of its "
                        "metrics",
                        s.growth_weeks - 4,
                    ),
                    "usage_daily",
                ),
                evidence_item(
                    pl.lit("health score"),
                    pl.col("health").round(0),
                    pl.lit("latest"),
                    "health_scores",
                ),
            )
            # (no health score on record - or no health table - is no evidence to show)
            .list.eval(
                pl.element().filter(
                    pl.element().struct.field("value").is_not_null()
                    | (pl.element().struct.field("source") != "health_scores")
                )
            )
            .alias("evidence"),
            pl.struct(
                pl.col("score").cast(pl.Int64).alias("nps"),
                pl.col("responded_on").cast(pl.String),
                (pl.col("growth") * 100).round(0).alias("growth_pct"),
                pl.col("health").round(0).alias("health"),
                pl.col("sentiment").round(2).alias("sentiment"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )

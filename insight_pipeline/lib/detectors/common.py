"""Helpers shared by detector families: the customer x day frame, daily event counts, and the
Poisson likelihood-ratio test used for 'well above its own baseline'."""

from __future__ import annotations

from datetime import date

import polars as pl


def customer_days(accounts: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    """One row per (customer, partition_date) for the days a customer is a customer."""
    days = pl.DataFrame({"partition_date": pl.date_range(start, end, eager=True)})
    frame = accounts.select("customer_id", "contract_start", "churned_on", "renewal_date").join(
        days, how="cross"
    )
    return frame.filter(
        (pl.col("churned_on").is_null() | (pl.col("churned_on") > pl.col("partition_date")))
        & (
            pl.col("contract_start").is_null()
            | (pl.col("contract_start") <= pl.col("partition_date"))
        )
    )


def daily_counts(
    events: pl.DataFrame, customers: pl.Series, first: date, last: date, weight: str | None = None
) -> pl.DataFrame:
    """Dense (customer_id, date, n) from event rows (customer_id, date[, weight]); 0 where none."""
    days = pl.DataFrame({"date": pl.date_range(first, last, eager=True)})
    grid = pl.DataFrame({"customer_id": customers.unique()}).join(days, how="cross")
    value = pl.col(weight).sum() if weight else pl.len()
    counts = (
        events.filter(pl.col("date").is_between(first, last))
        .group_by("customer_id", "date")
        .agg(value.cast(pl.Float64).alias("n"))
    )
    return (
        grid.join(counts, on=["customer_id", "date"], how="left")
        .with_columns(pl.col("n").fill_null(0.0))
        .sort("customer_id", "date")
    )


def poisson_g(observed: pl.Expr, expected: pl.Expr) -> pl.Expr:
    """G = 2 (k ln(k/lambda) - (k - lambda)): the Poisson likelihood-ratio statistic for an excess
    over the expected count (chi-square with 1 df under the null); 0 when k <= lambda."""
    k = observed
    lam = expected.clip(lower_bound=1e-9)
    g = 2.0 * (pl.when(k > 0).then(k * (k / lam).log()).otherwise(0.0) - (k - lam))
    return pl.when(k > lam).then(g).otherwise(0.0)


def rate_excess(counts: pl.DataFrame, window: int, baseline: int) -> pl.DataFrame:
    """Adds recent (sum over the last `window` days), expected (the previous `baseline` days'
    rate x window) and g to dense daily counts."""
    return counts.with_columns(
        pl.col("n")
        .rolling_sum(window_size=window, min_samples=window)
        .over("customer_id")
        .alias("recent"),
        (
            pl.col("n")
            .shift(window)
            .rolling_sum(window_size=baseline, min_samples=baseline)
            .over("customer_id")
            / baseline
            * window
        ).alias("expected"),
    ).with_columns(poisson_g(pl.col("recent"), pl.col("expected")).alias("g"))

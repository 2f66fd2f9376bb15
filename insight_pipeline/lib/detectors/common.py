"""Helpers shared by detector families: the customer x day frame, daily event counts, and the
Poisson likelihood-ratio test used for 'well above its own baseline'."""

from __future__ import annotations

from datetime import date

import numpy as np
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
    """Dense (customer_id, date, n) from event rows (customer_id, date[, weight]); 0 where none.

    Rows come sorted by customer, then date, every customer with the same days, so a row's
    position within its customer is `(date - first).days`: rolling windows need no group-by
    (`trailing_sum`). Built with array offsets and a bincount, not a join and a sort.
    """
    ids = customers.unique().sort()
    n_days = (last - first).days + 1
    index = pl.DataFrame({"customer_id": ids, "_c": pl.int_range(ids.len(), eager=True)})
    rows = events.filter(pl.col("date").is_between(first, last)).join(index, on="customer_id")
    cell = rows["_c"].to_numpy() * n_days + (rows["date"] - first).dt.total_days().to_numpy()
    weights = rows[weight].cast(pl.Float64).fill_null(0.0).to_numpy() if weight else None
    n = np.bincount(cell, weights=weights, minlength=ids.len() * n_days).astype(np.float64)
    epoch_day = (first - date(1970, 1, 1)).days
    return pl.DataFrame(
        {
            "customer_id": ids.gather(np.repeat(np.arange(ids.len()), n_days)),
            "date": pl.Series(
                np.tile(np.arange(n_days, dtype=np.int32) + epoch_day, ids.len())
            ).cast(pl.Date),
            "n": n,
        }
    )


def day_position() -> pl.Expr:
    """A row's index within its customer in a `daily_counts` grid (days since its first day)."""
    return (pl.col("date") - pl.col("date").min()).dt.total_days()


def trailing_sum(column: str, window: int, *, lag: int = 0, partial: bool = False) -> pl.Expr:
    """Sum of `column` over the `window` rows ending `lag` rows before this one, within the
    customer, in a `daily_counts` grid: a plain rolling sum masked where it would reach into the
    previous customer's rows. Null where the window is incomplete, unless `partial` (then the sum
    of the rows there are, as polars' `min_samples=1`)."""
    value = pl.col(column).shift(lag) if lag else pl.col(column)
    full = value.rolling_sum(window_size=window, min_samples=window)
    position = day_position() - lag
    if not partial:
        return pl.when(position >= window - 1).then(full)
    running = value.fill_null(0.0).cum_sum()
    before_customer = pl.when(day_position() == 0).then(running - pl.col(column)).forward_fill()
    return (
        pl.when(position >= window - 1)
        .then(full)
        .when(position >= 0)
        .then(running - before_customer)
    )


def last_flagged_date(flag: pl.Expr) -> pl.Expr:
    """In a `daily_counts` grid: the date of the latest row up to this one, within the customer,
    where `flag` holds (null if none): a forward fill of row numbers, masked at customer starts."""
    row = pl.int_range(pl.len())
    last_row = pl.when(flag).then(row).forward_fill()
    first_row = row - day_position()
    return (
        pl.when(last_row >= first_row)
        .then(pl.col("date") - pl.duration(days=row - last_row))
        .cast(pl.Date)
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
    rate x window) and g to dense daily counts (`daily_counts`)."""
    return counts.with_columns(
        trailing_sum("n", window).alias("recent"),
        (trailing_sum("n", baseline, lag=window) / baseline * window).alias("expected"),
    ).with_columns(poisson_g(pl.col("recent"), pl.col("expected")).alias("g"))

"""Tiny synthetic usage series with planted patterns, for the detectors' unit tests.

Independent of the sample generator on purpose: each test states its pattern right here.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl

WEEKDAY_SHAPE = np.array([1.0, 1.05, 1.1, 1.0, 0.9, 0.35, 0.3])  # Mon..Sun


def usage_series(
    customers: int,
    days: int,
    end: date,
    *,
    level: float = 120.0,
    seed: int = 1,
    metric: str = "dau",
    multipliers: dict[int, np.ndarray] | None = None,
) -> pl.DataFrame:
    """Poisson counts with a weekly shape; `multipliers[i]` scales customer i's expected value
    day by day (the planted pattern)."""
    rng = np.random.default_rng(seed)
    dates = [end - timedelta(days=days - 1 - d) for d in range(days)]
    shape = np.array([WEEKDAY_SHAPE[d.weekday()] for d in dates])
    levels = level * rng.lognormal(0.0, 0.4, size=customers)
    expected = levels[:, None] * shape[None, :]
    for idx, mult in (multipliers or {}).items():
        expected[idx] = expected[idx] * mult
    values = rng.poisson(expected).astype(float)
    return pl.DataFrame(
        {
            "customer_id": np.repeat([f"C{i:04d}" for i in range(customers)], days),
            "date": np.tile(np.array(dates, dtype="datetime64[D]"), customers),
            "metric": metric,
            "value": values.ravel(),
        }
    ).with_columns(pl.col("date").cast(pl.Date))


def step(days: int, at: int, factor: float) -> np.ndarray:
    out = np.ones(days)
    out[at:] = factor
    return out


def ramp(days: int, at: int, weekly_rate: float, weeks: int) -> np.ndarray:
    """Multiplicative growth (or decline) of `weekly_rate` per week from day `at`."""
    out = np.ones(days)
    t = np.arange(days - at) / 7.0
    out[at:] = (1.0 + weekly_rate) ** np.minimum(t, weeks)
    return out


USAGE_SCHEMA = {"customer_id": pl.String, "date": pl.Date, "metric": pl.String, "value": pl.Float64}


def customers(ids: list[str]) -> pl.DataFrame:
    """Accounts as the detectors read them: customers since 2024, renewing in 2027, none
    churned."""
    return pl.DataFrame(
        {
            "customer_id": ids,
            "contract_start": [date(2024, 1, 1)] * len(ids),
            "churned_on": [None] * len(ids),
            "renewal_date": [date(2027, 3, 1)] * len(ids),
        },
        schema_overrides={"churned_on": pl.Date},
    )


def accounts_by_group(signals: pl.DataFrame, planted: pl.Expr) -> dict[str, int]:
    """Distinct accounts with a signal per group: "planted" for the `planted` ones, else the
    first letter of the id (a test names each kind of clean account by its letter)."""
    groups = signals.select(
        pl.when(planted)
        .then(pl.lit("planted"))
        .otherwise(pl.col("customer_id").str.slice(0, 1))
        .alias("group"),
        "customer_id",
    ).unique()
    return dict(groups.group_by("group").len().iter_rows())

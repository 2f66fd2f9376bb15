"""The naive reference: the usage spike/drop detector written the way a hurried analyst would.

Same statistics as `lib/detectors/usage.py` (expected value = median of the same weekday over
the previous 8 weeks on the log1p scale, robust scale = 1.4826 x median absolute residual of the
previous 28 days with the 2% and Poisson floors, z, effect size, 3-day persistence, single-day
spikes) but in pandas, looping over every customer x metric and, inside it, over the days of the
rolling window. It is not a straw man: it only computes the days one partition needs (the
persistence window plus the 28 days of residuals behind the first judged day), not the whole
history.

    .venv/bin/python benchmarks/naive.py --source benchmarks/.work/data/accounts-1000 \
        --day 2026-10-31 [--max-customers 1000] [--json]

Both sides get the same in-memory usage window (read once, outside the timings). Above
--max-customers customers the naive loop runs on a random sample and its time is extrapolated
linearly to all customers (per customer work does not depend on how many there are). The
signals the two produce on the sampled customers are compared.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import date, timedelta

import numpy as np
import pandas as pd
import polars as pl

from insight_pipeline.lib.contract import Source
from insight_pipeline.lib.detectors.usage import (
    HISTORY_CAP,
    MAD_TO_SD,
    SCALE_FLOOR,
    detect_usage_anomalies,
    usage_baselines,
)
from insight_pipeline.lib.settings import Settings, UsageSettings


def naive_usage_anomalies(
    usage: pd.DataFrame, churned: dict[str, pd.Timestamp], day: pd.Timestamp, s: UsageSettings
) -> pd.DataFrame:
    """Per customer x metric on `day`: direction, run_days, z and the signal type raised (None
    when no usage_spike / usage_drop is raised)."""
    first_judged = day - pd.Timedelta(days=s.persistence_days + 7)
    found = []
    for (customer, metric), group in usage.groupby(["customer_id", "metric"]):
        daily = group.groupby("date")["value"].sum()
        last = day
        if customer in churned:
            last = min(day, churned[customer] - pd.Timedelta(days=1))
        if daily.index.min() > last or last < day:
            continue  # no row for `day` (churned before it)
        series = daily.reindex(pd.date_range(daily.index.min(), last, freq="D"), fill_value=0.0)
        y = np.log1p(series)
        n = len(y)
        judged_from = max(0, n - 1 - (day - first_judged).days)
        # expected value for every day whose residual the scale of a judged day needs
        expected_log = pd.Series(np.nan, index=y.index)
        for t in range(max(0, judged_from - s.scale_days), n):
            past = y.iloc[max(0, t - 7 * s.baseline_weeks) : t]
            same_weekday = past[past.index.day_of_week == y.index[t].day_of_week]
            if len(same_weekday) >= max(3, s.baseline_weeks // 2):
                expected_log.iloc[t] = same_weekday.median()
        residual = (y - expected_log).abs()
        days = []
        for t in range(judged_from, n):
            window = residual.iloc[max(0, t - s.scale_days) : t].dropna()
            scale = np.nan
            if len(window) >= s.scale_days // 2:
                scale = max(window.median() * MAD_TO_SD, SCALE_FLOOR)
            y_exp = expected_log.iloc[t]
            if not math.isnan(y_exp):
                poisson = math.exp(y_exp) ** -0.5
                scale = poisson if math.isnan(scale) else max(scale, poisson)
            z = (y.iloc[t] - y_exp) / scale if not math.isnan(y_exp) else np.nan
            expected = math.exp(y_exp) - 1.0 if not math.isnan(y_exp) else np.nan
            value = series.iloc[t]
            rel = value / expected - 1.0 if expected > 0 else np.nan
            history = min(t, HISTORY_CAP)
            judged = history >= s.min_history_days and expected >= s.min_expected
            judged = judged and not math.isnan(z)
            direction = 0
            if judged and z > s.z_threshold and rel >= s.min_effect:
                direction = 1
            elif judged and z < -s.z_threshold and rel <= -s.min_effect:
                direction = -1
            days.append((direction, rel, z, expected, history))
        direction, rel, z, expected, history = days[-1]
        run = 0
        for d, *_ in reversed(days):
            if direction == 0 or d != direction:
                break
            run += 1
        run = min(run, s.persistence_days + 7)
        prev_rel = days[-2][1] if len(days) >= 2 else np.nan
        sustained = run >= s.persistence_days and direction != 0
        enough = expected >= s.min_expected and history >= s.min_history_days
        spike = (
            enough
            and rel >= s.min_spike_effect
            and (z >= s.single_day_z or (run >= 2 and prev_rel >= s.min_spike_effect))
        )
        kind = None
        if sustained or spike:
            kind = "usage_drop" if direction < 0 else "usage_spike"
        found.append((customer, metric, direction, run, z, kind))
    return pd.DataFrame(
        found, columns=["customer_id", "metric", "direction", "run_days", "z", "type"]
    )


def load(source: str, day: date, settings: Settings) -> tuple[pl.DataFrame, pl.DataFrame]:
    src = Source(source)
    usage = src.read(
        "usage_daily", date_from=day - timedelta(days=settings.lookback_days), date_to=day
    )
    customers = src.read("customers")
    assert usage is not None and customers is not None
    churned = customers.select("customer_id", "churned_on").filter(
        pl.col("churned_on").is_not_null() & (pl.col("churned_on") <= day)
    )
    return usage, churned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--day", type=date.fromisoformat, required=True)
    parser.add_argument("--max-customers", type=int, default=1000)
    parser.add_argument("--lib-runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args()
    settings = Settings()
    s = settings.usage
    usage, churned = load(args.source, args.day, settings)

    lib_times = []
    for _ in range(args.lib_runs):
        started = time.perf_counter()
        baselines = usage_baselines(usage, args.day, args.day, s, churned)
        lib = detect_usage_anomalies(baselines, s)
        lib_times.append(time.perf_counter() - started)

    customers = usage["customer_id"].unique().sort()
    sampled = customers
    if customers.len() > args.max_customers:
        sampled = customers.sample(args.max_customers, seed=args.seed).sort()
    part = usage.filter(pl.col("customer_id").is_in(sampled.implode())).to_pandas()
    part["date"] = pd.to_datetime(part["date"])
    churn = {
        c: pd.Timestamp(d)
        for c, d in churned.filter(pl.col("customer_id").is_in(sampled.implode())).iter_rows()
    }
    started = time.perf_counter()
    naive = naive_usage_anomalies(part, churn, pd.Timestamp(args.day), s)
    naive_seconds = time.perf_counter() - started

    in_sample = pl.col("customer_id").is_in(sampled.implode())
    lib_keys = sorted(lib.filter(in_sample).select("customer_id", "subject", "type").iter_rows())
    raised = naive[naive["type"].notna()]
    naive_keys = sorted(
        raised[["customer_id", "metric", "type"]].itertuples(index=False, name=None)
    )
    # Beyond the few signals of one day: every customer x metric's direction, run and z agree.
    both = (
        baselines.filter(in_sample)
        .select("customer_id", "metric", "direction", "run_days", "z")
        .join(
            pl.from_pandas(naive[["customer_id", "metric", "direction", "run_days", "z"]]),
            on=["customer_id", "metric"],
            how="full",
            suffix="_naive",
        )
    )
    same_rows = both.filter(
        (pl.col("direction") == pl.col("direction_naive"))
        & (pl.col("run_days") == pl.col("run_days_naive"))
        & (
            (pl.col("z") - pl.col("z_naive")).abs().le(1e-9)
            | (pl.col("z").is_null() & pl.col("z_naive").is_nan())
        )
    ).height
    result = {
        "customers": customers.len(),
        "sampled": sampled.len(),
        "exact": sampled.len() == customers.len(),
        "naive_seconds_sample": naive_seconds,
        "naive_seconds_total": naive_seconds * customers.len() / sampled.len(),
        "lib_seconds": statistics.median(lib_times),
        "lib_flags": len(lib_keys),
        "naive_flags": len(naive_keys),
        "series_compared": both.height,
        "series_identical": same_rows,
        "identical": lib_keys == naive_keys and same_rows == both.height,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
        if lib_keys != naive_keys:
            print("only lib:", sorted(set(lib_keys) - set(naive_keys))[:10])
            print("only naive:", sorted(set(naive_keys) - set(lib_keys))[:10])


if __name__ == "__main__":
    main()

"""Peer benchmarks: outperforming / underperforming against a cohort (segment x industry).

The metric is normalised per entitled seat (or per seat in use where there is no entitlement) so
that big and small accounts compare fairly; the percentile within the cohort is the evidence.
Cohorts smaller than min_cohort fall back to the segment alone; smaller still, no benchmark.
An account whose industry is unknown is compared within its segment; whose segment is unknown,
with no one (the other unknowns are no cohort). An account in its first `onboarding_days` is
ramping up, and neither benchmarked nor anyone's peer.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl

from insight_pipeline.lib.detectors.common import customer_days
from insight_pipeline.lib.detectors.usage import (
    _DenseGrid,
    _epoch_day,
    evidence_list,
    rows_since,
    seen_between,
    series_last_before,
    trailing_sums,
    usage_grid,
)
from insight_pipeline.lib.settings import BenchmarkSettings
from insight_pipeline.lib.signals import conform, empty_signals, evidence_item


def _metric_with_seats(
    dense: _DenseGrid, rows: np.ndarray, means: pl.Series, metric: str
) -> pl.DataFrame:
    """`dense.frame(rows)` with `means` pivoted on metric (`metric` and seats_used) by customer_id
    and date, only the rows with a `metric` mean (the only ones benchmarked): the rows, order and
    columns of that pivot, without its string-keyed group-by.

    A customer has at most one series per metric, adjacent in the grid (sorted by customer and
    metric) and running to the last day, so the seats row of a day is found by offset. The pivot
    orders rows by first appearance: per customer, the days of its first series, then the days
    of its second series before the first one starts; its columns by first appearance too.
    """
    keys = dense.keys
    customer = keys["customer_id"]
    same_customer = customer.eq_missing(customer.shift(1)).fill_null(False).to_numpy().copy()
    same_customer[0] = False  # as the previous series (eq_missing: a null id is a customer too)
    start_row = np.searchsorted(dense.series, np.arange(keys.height))
    first_day = dense.day[start_row]
    is_metric = (keys["metric"] == metric).to_numpy()
    picked = rows[is_metric[dense.series[rows]]]
    series = dense.series[picked]
    day = dense.day[picked]
    if metric == "seats_used":
        partner = np.full(series.size, -1)
    else:
        after = np.append(same_customer[1:], False)  # the next series is the same customer's
        partner = np.where(
            same_customer[series], series - 1, np.where(after[series], series + 1, -1)
        )
    # `metric` second in its customer: its days before the first series starts come last
    late = (partner == series - 1) & (day < first_day[np.maximum(partner, 0)])
    if late.any():
        order = np.lexsort((late, np.cumsum(~same_customer)[series]))
        picked, series, day, partner = picked[order], series[order], day[order], partner[order]
    covered = (partner >= 0) & (day >= first_day[np.maximum(partner, 0)])
    other = np.maximum(partner, 0)
    seat_row = np.where(covered, start_row[other] + day - first_day[other], 0)
    frame = pl.DataFrame(
        {
            "customer_id": customer.gather(series),
            "date": pl.Series(day, dtype=pl.Int32).cast(pl.Date),
            metric: means.gather(picked),
            "_seats": means.gather(seat_row),
            "_covered": covered,
        }
    ).filter(pl.col(metric).is_not_null())
    if metric == "seats_used":
        return frame.drop("_seats", "_covered")
    frame = frame.with_columns(pl.when("_covered").then("_seats").alias("seats_used"))
    metrics = [metric, "seats_used"] if (~is_metric).any() else [metric]
    if keys["metric"][int(dense.series[rows[0]])] != metric:
        metrics.reverse()
    return frame.select("customer_id", "date", *metrics)


def benchmark_usage(
    usage: pl.LazyFrame,
    start: date,
    end: date,
    s: BenchmarkSettings,
    last_before: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The usage rows `peer_percentiles` needs for [start, end], read from a (large) window:
    the benchmarked metric and seats from `window_days - 1` days before `start` to `end`
    (`rows_since`: the rolling means are those of the whole window). A daily run reads a
    quarter of the window's rows. `last_before`: `series_last_before` of the window for this
    span's first day (`benchmark_opened`), for a run that reads it a span of days at a time."""
    wanted = usage.filter(benchmarked_metrics(s) & (pl.col("date") <= end))
    return rows_since(wanted, benchmark_opened(start, s), last_before=last_before)


def benchmark_opened(start: date, s: BenchmarkSettings) -> date:
    """The first day of usage a span starting on `start` reads."""
    return start - timedelta(days=s.window_days - 1)


def benchmarked_metrics(s: BenchmarkSettings) -> pl.Expr:
    return pl.col("metric").is_in([s.metric, "seats_used"])


def benchmarked_series_last_before(
    usage: pl.LazyFrame, start: date, s: BenchmarkSettings
) -> pl.DataFrame:
    """`series_last_before` of the benchmarked metrics for the span starting on `start` (one
    pass over the older rows of the window; later spans carry it: `carry_last_before`)."""
    return series_last_before(usage.filter(benchmarked_metrics(s)), benchmark_opened(start, s))


def peer_percentiles(
    usage: pl.DataFrame,
    entitlements: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: BenchmarkSettings,
    lookback_days: int = 112,
) -> pl.DataFrame:
    """Per (customer, day): normalised metric, cohort, cohort size and percentile (0..1).

    An account is benchmarked on day D only if its metric has a row on record between
    `lookback_days` (the usage window's look-back, Settings.lookback_days) and `window_days - 1`
    days before D: what a run of D alone can see. An account whose rows stopped months ago
    counts as 0 in the zero-filled mean of a long range's grid, but not in a day's run, whose
    window no longer holds it; without this rule a range and its days disagreed on cohort sizes
    and medians. (A quiet account still sending rows, or missing some days, is benchmarked.)"""
    w = s.window_days
    wanted = usage.filter(benchmarked_metrics(s) & (pl.col("date") <= end))
    if wanted.filter(pl.col("metric") == s.metric).height == 0:
        return pl.DataFrame()
    # the rolling mean over every day of a series (masked at series starts: rows are contiguous
    # and daily), kept only for the run's days
    dense = usage_grid(wanted, end)
    rows = np.flatnonzero((dense.day >= _epoch_day(start)) & (dense.day <= _epoch_day(end)))
    means = pl.Series("mean", trailing_sums(dense.value, dense.position, w) / w, nan_to_null=True)
    wide = _metric_with_seats(dense, rows, means, s.metric)
    if "seats_used" not in wide.columns:
        wide = wide.with_columns(pl.lit(None, pl.Float64).alias("seats_used"))
    seats = (
        entitlements.filter(pl.col("metric") == "seats_used").select(
            "customer_id", pl.col("entitled_value").alias("entitled_seats")
        )
        if entitlements.height
        else pl.DataFrame(schema={"customer_id": pl.String, "entitled_seats": pl.Float64})
    )
    frame = (
        wide.rename({"date": "partition_date"})
        .join(seats, on="customer_id", how="left")
        .with_columns(
            pl.coalesce(pl.col("entitled_seats"), pl.col("seats_used")).alias("seats"),
        )
        .filter(pl.col(s.metric).is_not_null() & (pl.col("seats") > 0))
        .with_columns((pl.col(s.metric) / pl.col("seats")).alias("per_seat"))
        .join(accounts.select("customer_id", *s.cohort), on="customer_id", how="inner")
        .join(
            # a customer still onboarding is ramping up: neither benchmarked nor a peer
            customer_days(accounts, start, end)
            .filter(
                pl.col("contract_start").is_null()
                | (
                    pl.col("partition_date")
                    >= pl.col("contract_start") + pl.duration(days=s.onboarding_days)
                )
            )
            .select("customer_id", "partition_date"),
            on=["customer_id", "partition_date"],
            how="semi",
        )
    )
    frame = _on_record(frame, wanted, s, lookback_days)
    cohort = [*s.cohort, "partition_date"]
    segment = [s.cohort[0], "partition_date"]
    frame = frame.with_columns(
        pl.len().over(cohort).alias("cohort_size"),
        ((pl.col("per_seat").rank("average").over(cohort) - 0.5) / pl.len().over(cohort)).alias(
            "pct_cohort"
        ),
        pl.len().over(segment).alias("segment_size"),
        ((pl.col("per_seat").rank("average").over(segment) - 0.5) / pl.len().over(segment)).alias(
            "pct_segment"
        ),
        pl.col("per_seat").median().over(cohort).alias("median_cohort"),
        pl.col("per_seat").median().over(segment).alias("median_segment"),
    )
    # An unknown (null) segment or industry is no cohort: those accounts are not peers of each
    # other. Null industry: compared within the segment; null segment: not benchmarked.
    use_cohort = pl.all_horizontal(pl.col(c).is_not_null() for c in s.cohort) & (
        pl.col("cohort_size") >= s.min_cohort
    )
    use_segment = pl.col(s.cohort[0]).is_not_null()
    frame = frame.with_columns(
        pl.when(use_segment).then(pl.col(name)).alias(name)
        for name in ("segment_size", "pct_segment", "median_segment")
    )
    return frame.with_columns(
        pl.when(use_cohort)
        .then(pl.col("pct_cohort"))
        .otherwise(pl.col("pct_segment"))
        .alias("percentile"),
        pl.when(use_cohort)
        .then(pl.col("cohort_size"))
        .otherwise(pl.col("segment_size"))
        .alias("peers"),
        pl.when(use_cohort)
        .then(pl.col("median_cohort"))
        .otherwise(pl.col("median_segment"))
        .alias("peer_median"),
        pl.when(use_cohort)
        .then(pl.concat_str([pl.col(c).cast(pl.String) for c in s.cohort], separator=" "))
        .otherwise(pl.col(s.cohort[0]).cast(pl.String))
        .str.replace_all("_", "-")
        .alias("cohort_name"),
    ).filter(pl.col("peers") >= s.min_cohort)


def _on_record(
    frame: pl.DataFrame, usage: pl.DataFrame, s: BenchmarkSettings, lookback_days: int
) -> pl.DataFrame:
    """The rows (customer_id, partition_date) of `frame` whose account's metric has a row in
    `usage` between `lookback_days` and `window_days - 1` days before the day (see
    `peer_percentiles`). The rows a `rows_since` adds carry the series' last day before them."""
    metric = usage.filter(pl.col("metric") == s.metric)
    day = pl.col("date")
    if "last_before" in metric.columns:  # an added row stands for the series' last real one
        day = pl.coalesce(pl.col("last_before"), day)
    seen = metric.select("customer_id", day.alias("_seen"))
    return seen_between(frame, seen, ["customer_id"], s.window_days - 1, lookback_days)


def detect_benchmarks(percentiles: pl.DataFrame, s: BenchmarkSettings) -> pl.DataFrame:
    if percentiles.height == 0:
        return empty_signals()
    ahead = pl.col("per_seat") >= (1 + s.min_effect) * pl.col("peer_median")
    behind = pl.col("per_seat") * (1 + s.min_effect) <= pl.col("peer_median")
    top = (pl.col("percentile") >= s.top_quantile) & ahead
    bottom = (pl.col("percentile") <= s.bottom_quantile) & behind
    hits = percentiles.filter(top | bottom)
    if hits.height == 0:
        return empty_signals()
    return conform(
        hits.with_columns(
            pl.when(top)
            .then(pl.lit("outperforming"))
            .otherwise(pl.lit("underperforming"))
            .alias("type"),
            pl.lit(s.metric).alias("subject"),
            pl.when(top)
            .then(0.3 + (pl.col("percentile") - s.top_quantile) * 3)
            .otherwise(0.35 + (s.bottom_quantile - pl.col("percentile")) * 3)
            .clip(0.2, 0.7)
            .alias("severity"),
            (pl.col("peers") / 50.0).clip(0.4, 0.9).alias("confidence"),
            evidence_list(
                evidence_item(
                    pl.format("{} per seat ({}-day mean)", pl.lit(s.metric), s.window_days),
                    pl.col("per_seat").round(3),
                    pl.format(
                        "peer median {} across {} {} accounts",
                        pl.col("peer_median").round(3),
                        pl.col("peers"),
                        pl.col("cohort_name"),
                    ),
                    "usage_daily, entitlements",
                ),
                evidence_item(
                    pl.lit("percentile among peers"),
                    (pl.col("percentile") * 100).round(0),
                    pl.format("cohort: {}", pl.col("cohort_name")),
                    "usage_daily",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.lit(s.metric).alias("metric"),
                pl.col("per_seat").round(3).alias("per_seat"),
                pl.col("peer_median").round(3).alias("peer_median"),
                (pl.col("percentile") * 100).round(0).alias("percentile"),
                pl.col("peers"),
                pl.col("cohort_name"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )

"""Peer benchmarks: outperforming / underperforming against a cohort (segment x industry).

The metric is normalised per entitled seat (or per seat in use where there is no entitlement) so
that big and small accounts compare fairly; the percentile within the cohort is the evidence.
Cohorts smaller than min_cohort fall back to the segment alone; smaller still, no benchmark.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from insight_pipeline.lib.detectors.common import customer_days
from insight_pipeline.lib.detectors.usage import _epoch_day, usage_grid, within_series
from insight_pipeline.lib.settings import BenchmarkSettings
from insight_pipeline.lib.signals import conform, empty_signals, evidence_item


def peer_percentiles(
    usage: pl.DataFrame,
    entitlements: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: BenchmarkSettings,
) -> pl.DataFrame:
    """Per (customer, day): normalised metric, cohort, cohort size and percentile (0..1)."""
    w = s.window_days
    wanted = usage.filter(
        pl.col("metric").is_in([s.metric, "seats_used"]) & (pl.col("date") <= end)
    )
    if wanted.filter(pl.col("metric") == s.metric).height == 0:
        return pl.DataFrame()
    # the rolling mean over every day of a series (masked at series starts: rows are contiguous
    # and daily), kept only for the run's days
    dense = usage_grid(wanted, end)
    rows = np.flatnonzero((dense.day >= _epoch_day(start)) & (dense.day <= _epoch_day(end)))
    means = pl.DataFrame({"value": dense.value, "_pos": dense.position}).select(
        within_series(pl.col("value").rolling_mean(w, min_samples=w), w - 1).alias("mean")
    )
    grid = dense.frame(rows).with_columns(means["mean"].gather(rows))
    wide = grid.pivot(on="metric", index=["customer_id", "date"], values="mean")
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
            customer_days(accounts, start, end).select("customer_id", "partition_date"),
            on=["customer_id", "partition_date"],
            how="semi",
        )
    )
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
    use_cohort = pl.col("cohort_size") >= s.min_cohort
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


def detect_benchmarks(percentiles: pl.DataFrame, s: BenchmarkSettings) -> pl.DataFrame:
    if percentiles.height == 0:
        return empty_signals()
    top = pl.col("percentile") >= s.top_quantile
    bottom = pl.col("percentile") <= s.bottom_quantile
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
            pl.concat_list(
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

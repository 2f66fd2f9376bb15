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

from insight_pipeline.lib.detectors.usage import (
    _DenseGrid,
    _epoch_day,
    evidence_list,
    rows_since,
    series_last_before,
    trailing_sums,
    usage_grid,
)
from insight_pipeline.lib.settings import BenchmarkSettings
from insight_pipeline.lib.signals import conform, empty_signals, evidence_item


def _metric_with_seats(
    dense: _DenseGrid, rows: np.ndarray, means: pl.Series, metric: str, seen: np.ndarray
) -> pl.DataFrame:
    """`dense.frame(rows)` with `means` pivoted on metric (`metric` and seats_used) by customer_id
    and date, only the rows with a `metric` mean (the only ones benchmarked): the rows, order and
    columns of that pivot, without its string-keyed group-by.

    A customer has at most one series per metric, adjacent in the grid (sorted by customer and
    metric) and running to the last day, so the seats row of a day is found by offset. The pivot
    orders rows by first appearance: per customer, the days of its first series, then the days
    of its second series before the first one starts; its columns by first appearance too.
    `seen` (one per grid row) comes along as column `_seen`, after the metrics.
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
            "_seen": seen[picked],
        }
    ).filter(pl.col(metric).is_not_null())
    if metric == "seats_used":
        return frame.select("customer_id", "date", metric, "_seen")
    frame = frame.with_columns(pl.when("_covered").then("_seats").alias("seats_used"))
    metrics = [metric, "seats_used"] if (~is_metric).any() else [metric]
    if keys["metric"][int(dense.series[rows[0]])] != metric:
        metrics.reverse()
    return frame.select("customer_id", "date", *metrics, "_seen")


def _seen_in_window(
    dense: _DenseGrid, rows: np.ndarray, usage: pl.DataFrame, metric: str, near: int, far: int
) -> np.ndarray:
    """Per grid row (set on the `metric` rows among `rows`): whether the series has a row in
    `usage` between `far` and `near` days before the row's day. The `seen_between` of the rule in
    `peer_percentiles` on the grid's arrays, instead of a sort and an as-of join of 3M rows on
    string keys: the grid marks the days with a row, and its rows are daily, so the latest one
    `near` days back is a running maximum of row numbers. A row that `rows_since` added stands
    for its series' last day before it (`last_before`), not for its own day."""
    keys = dense.keys
    start_row = np.searchsorted(dense.series, np.arange(keys.height))
    observed, extra_series, extra_day = dense.observed, np.zeros(0, np.int64), np.zeros(0)
    if "last_before" in usage.columns:
        of_metric = pl.col("metric") == metric
        added = usage.filter(of_metric & pl.col("last_before").is_not_null())
        if added.height:
            series_of = keys.with_row_index("_series").filter(of_metric)
            real = (
                usage.filter(
                    of_metric
                    & pl.col("last_before").is_null()
                    & pl.col("date").is_in(added["date"].unique().implode())
                )
                .select("customer_id", "date", pl.lit(True).alias("_real"))
                .unique()
            )
            added = (
                added.select("customer_id", "date", "last_before")
                .join(series_of.select("customer_id", "_series"), on="customer_id", how="inner")
                .join(real, on=["customer_id", "date"], how="left")
            )
            extra_series = added["_series"].to_numpy().astype(np.int64)
            day = added["date"].cast(pl.Int32).to_numpy().astype(np.int64)
            alone = start_row[extra_series] + day - dense.day[start_row[extra_series]]
            observed = observed.copy()
            observed[alone[added["_real"].is_null().to_numpy()]] = False  # only added rows
            extra_day = added["last_before"].cast(pl.Int32).to_numpy().astype(np.int64)
    wanted = rows[(keys["metric"] == metric).to_numpy()[dense.series[rows]]]
    series, position = dense.series[wanted], dense.position[wanted]
    # the latest row with a row on record at most `near` days back, in the same series
    latest = np.maximum.accumulate(np.where(observed, np.arange(observed.size), -1))
    back = latest[np.maximum(wanted - near, 0)]
    seen = (position >= near) & (back >= start_row[series]) & (wanted - back <= far)
    if extra_series.size:
        until = dense.day[wanted] - near
        low = min(int(extra_day.min()), int(until.min()))
        width = max(int(extra_day.max()), int(until.max())) - low + 1
        order = np.lexsort((extra_day, extra_series))
        extra_series, extra_day = extra_series[order], extra_day[order]
        found = np.searchsorted(
            extra_series * width + (extra_day - low), series * width + (until - low), "right"
        )
        found = np.maximum(found - 1, 0)  # (none at or before `until`: index 0, tested below)
        seen |= (
            (extra_series[found] == series)
            & (extra_day[found] <= until)
            & (extra_day[found] >= until + near - far)
        )
    out = np.zeros(dense.day.size, dtype=bool)
    out[wanted] = seen
    return out


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
    seen = _seen_in_window(dense, rows, wanted, s.metric, w - 1, lookback_days)
    wide = _metric_with_seats(dense, rows, means, s.metric, seen)
    if "seats_used" not in wide.columns:
        wide = wide.with_columns(pl.lit(None, pl.Float64).alias("seats_used"))
    seats = (
        entitlements.filter(pl.col("metric") == "seats_used").select(
            "customer_id", pl.col("entitled_value").alias("entitled_seats")
        )
        if entitlements.height
        else pl.DataFrame(schema={"customer_id": pl.String, "entitled_seats": pl.Float64})
    )
    # a customer still onboarding is ramping up: neither benchmarked nor a peer until its
    # whole window lies past its onboarding (a window holding ramp-up days reads a long ramp
    # as underperforming: trial 6, 33 of 58 at day 45; tested on the account's row rather
    # than semi-joined)
    peers, cohort_names, segment_names = _peer_keys(accounts, s)
    began, ended = pl.col("_contract_start"), pl.col("_churned_on")
    day = pl.col("partition_date")
    customer = (ended.is_null() | (ended > day)) & (began.is_null() | (began <= day))
    ramped = began.is_null() | (day >= began + pl.duration(days=s.onboarding_days + w - 1))
    frame = (
        wide.rename({"date": "partition_date"})
        .join(seats, on="customer_id", how="left")
        .with_columns(
            pl.coalesce(pl.col("entitled_seats"), pl.col("seats_used")).alias("seats"),
        )
        .filter(pl.col(s.metric).is_not_null() & (pl.col("seats") > 0))
        .with_columns((pl.col(s.metric) / pl.col("seats")).alias("per_seat"))
        .join(peers, on="customer_id", how="inner")
        # and its metric on record (see above): `_seen_in_window`
        .filter(customer & ramped & pl.col("_seen"))
        .drop("_contract_start", "_churned_on", "_seen")
    )
    # the windows go over one integer per (cohort, day) and (segment, day): the same groups in
    # the same row order as over the string columns and the date, grouped without hashing them
    n_days = (end - start).days + 1
    day_index = (pl.col("partition_date") - pl.lit(start)).dt.total_days()
    cohort = (pl.col("_cohort").cast(pl.Int64) * n_days + day_index).alias("_by_cohort")
    segment = (pl.col("_segment").cast(pl.Int64) * n_days + day_index).alias("_by_segment")
    frame = frame.with_columns(cohort, segment)
    cohort, segment = pl.col("_by_cohort"), pl.col("_by_segment")
    # each account's place from the bottom (`low`: 1 + the peers below it) and from the top,
    # peers tied with it sharing it; the percentile is their midpoint's (the average rank's)
    frame = frame.with_columns(
        pl.len().over(cohort).alias("cohort_size"),
        pl.col("per_seat").rank("min").over(cohort).alias("low_cohort"),
        pl.col("per_seat").rank("max").over(cohort).alias("_high_cohort"),
        pl.len().over(segment).alias("segment_size"),
        pl.col("per_seat").rank("min").over(segment).alias("low_segment"),
        pl.col("per_seat").rank("max").over(segment).alias("_high_segment"),
        pl.col("per_seat").median().over(cohort).alias("median_cohort"),
        pl.col("per_seat").median().over(segment).alias("median_segment"),
    ).drop("_by_cohort", "_by_segment")
    frame = (
        frame.with_columns(
            (((pl.col(f"low_{g}") + pl.col(f"_high_{g}")) / 2 - 0.5) / pl.col(f"{g}_size")).alias(
                f"pct_{g}"
            )
            for g in ("cohort", "segment")
        )
        .with_columns(
            (pl.col(f"{g}_size") + 1 - pl.col(f"_high_{g}")).alias(f"high_{g}")
            for g in ("cohort", "segment")
        )
        .drop("_high_cohort", "_high_segment")
    )
    # An unknown (null) segment or industry is no cohort: those accounts are not peers of each
    # other. Null industry: compared within the segment; null segment: not benchmarked.
    use_cohort = pl.all_horizontal(pl.col(c).is_not_null() for c in s.cohort) & (
        pl.col("cohort_size") >= s.min_cohort
    )
    use_segment = pl.col(s.cohort[0]).is_not_null()
    frame = frame.with_columns(
        pl.when(use_segment).then(pl.col(name)).alias(name)
        for name in ("segment_size", "pct_segment", "median_segment", "low_segment", "high_segment")
    )
    return (
        frame.with_columns(
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
            .then(pl.lit(cohort_names).gather(pl.col("_cohort")))
            .otherwise(pl.lit(segment_names).gather(pl.col("_segment")))
            .alias("cohort_name"),
            *(
                pl.when(use_cohort)
                .then(pl.col(f"{end}_cohort"))
                .otherwise(pl.col(f"{end}_segment"))
                .alias(f"rank_{end}")
                for end in ("low", "high")
            ),
        )
        .drop("_cohort", "_segment", "low_cohort", "high_cohort", "low_segment", "high_segment")
        .filter(pl.col("peers") >= s.min_cohort)
    )


def _peer_keys(
    accounts: pl.DataFrame, s: BenchmarkSettings
) -> tuple[pl.DataFrame, pl.Series, pl.Series]:
    """customer_id, the cohort columns, and for the windows of `peer_percentiles` an integer
    per distinct cohort and segment (`_cohort`, `_segment`: an unknown is a value too, as in a
    window over the columns), with the contract's start and end (for the onboarding rule); and
    the name of each cohort and segment by its integer (made once, not on each row)."""
    codes, names = accounts.select("customer_id", *s.cohort), []
    for name, columns in (("_cohort", list(s.cohort)), ("_segment", [s.cohort[0]])):
        distinct = codes.select(columns).unique(maintain_order=True).with_row_index(name)
        codes = codes.join(
            distinct, on=columns, how="left", nulls_equal=True, maintain_order="left"
        )
        named = pl.concat_str([pl.col(c).cast(pl.String) for c in columns], separator=" ")
        names.append(distinct.select(named.str.replace_all("_", "-")).to_series())
    keys = codes.with_columns(
        accounts["contract_start"].alias("_contract_start"),
        accounts["churned_on"].alias("_churned_on"),
    )
    return keys, names[0], names[1]


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
    # its place among its peers, from the end it is at (1 = the lowest / the highest; peers
    # tied with it share the place: `peer_percentiles`): a percentile of 36 peers reads
    # "bottom 1%", of 200 "bottom 0%"
    entitled = pl.col("entitled_seats").is_not_null()
    per_seat = (
        pl.when(entitled).then(pl.lit("per entitled seat")).otherwise(pl.lit("per seat in use"))
    )
    return conform(
        hits.with_columns(
            pl.when(top)
            .then(pl.col("rank_high"))
            .otherwise(pl.col("rank_low"))
            .cast(pl.Int64)
            .alias("_rank")
        ).with_columns(
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
                    pl.format("{} {} ({}-day mean)", pl.lit(s.metric), per_seat, s.window_days),
                    pl.col("per_seat").round(3),
                    pl.format(
                        "peer median {} across {} {} accounts",
                        pl.col("peer_median").round(3),
                        pl.col("peers"),
                        pl.col("cohort_name"),
                    ),
                    # the entitlements only where they gave the seats
                    pl.when(entitled)
                    .then(pl.lit("usage_daily, entitlements"))
                    .otherwise(pl.lit("usage_daily")),
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
                pl.col("_rank").alias("rank"),
                entitled.alias("entitled_seats"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )

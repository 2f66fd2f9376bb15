"""Usage baselines, anomalies (usage_spike / usage_drop) and weekly trends.

Statistics, all vectorised over every customer x metric at once:
- values are compared on the log1p scale, where count noise is roughly multiplicative; a
  measured quantity (a series holding values that are not whole numbers: hours, gigabytes)
  is judged in thousandths of its unit, where that scale is multiplicative too and the bounds
  set for counts (counting noise, minimum volumes) no longer bind (`_in_counting_units`);
- the expected value for day D is the median of the same weekday over the previous
  `baseline_weeks` weeks (robust, respects the weekly shape, uses nothing from D or later);
- the scale is 1.4826 x the median absolute out-of-sample residual of the previous `scale_days`
  days (a robust standard deviation that includes the account's own noise, holidays and all);
- a day deviates when |z| > z_threshold AND the relative change is at least `min_effect` AND the
  expected volume is at least `min_expected`. A drop (or a sustained spike) needs
  `persistence_days` consecutive deviating days in the same direction; a single-day spike needs
  |z| > `single_day_z`. Requiring both a z-score and an effect size, plus persistence, is what
  keeps clean accounts quiet: on daily data the bare 2-sigma rule fires several times a month.
- adoption trends: week sums over 7-day blocks ending on D; `trend_consecutive_weeks` rises in
  a row (the contract's definition), a total change of at least `min_trend_change`, a
  log-linear slope over `trend_weeks` weeks whose t-statistic passes `trend_t`, and a rise
  across the `trend_test_weeks` week sums by the one-sided Mann-Kendall test below (a dip's
  recovery or a last week's burst also rises three weeks in a row);
- declining usage: the `trend_test_weeks` week sums ending on D fall by a one-sided Mann-Kendall
  test (rank-based: one odd week neither makes nor breaks it, where "three falls in a row"
  breaks on any noisy week), and the window's last two weeks sit at least `min_trend_change`
  and `decline_z` of the account's own weekly variability below its first two;
- a series younger than `min_history_days` (no daily baseline yet: a new account onboarding,
  a short extract), and until its daily scale stands on days judged daily (`young_days`), is
  a usage_drop when its last week falls to `young_drop` of its best week so far
  (`_young_drops_of_grid`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import cache, partial
from statistics import NormalDist

import numpy as np
import polars as pl

from insight_pipeline.lib.detectors.common import (
    _kept,
    mann_kendall_threshold,
    run_positions,
    sign_test_critical,
    trailing_sums,
)
from insight_pipeline.lib.parallel import for_each_chunk
from insight_pipeline.lib.settings import UsageSettings
from insight_pipeline.lib.signals import conform, evidence_item

KEYS = ["customer_id", "metric"]
MAD_TO_SD = 1.4826
SCALE_FLOOR = 0.02
HISTORY_CAP = 84
"""History beyond 12 weeks adds no confidence; capped so windowed and full reads agree."""
"""Smallest robust scale on the log scale (2%): very smooth series still need an effect size."""


def dense_usage(
    usage: pl.DataFrame, end: date, churned: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One row per customer x metric x day from its first observed day to `end`.

    The contract: a missing (customer, date, metric) row is 0 once the customer has any usage
    history. Days on or after a customer's churn date are not produced.
    """
    if usage.height == 0:
        return usage.select(*KEYS, "date", "value")
    return _DenseGrid.build(usage, end, churned).frame()


def usage_grid(usage: pl.DataFrame, end: date, churned: pl.DataFrame | None = None) -> _DenseGrid:
    """`dense_usage` as arrays (series, position in series, day, value), for detectors that
    compute windows on every row but need results only on a few (see `_DenseGrid`)."""
    return _DenseGrid.build(usage, end, churned)


def rows_since(
    usage: pl.LazyFrame,
    opened: date,
    starts: pl.DataFrame | None = None,
    last_before: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The usage rows from `opened` on, plus a 0 on `opened` for each series seen before it.

    Its grid has the same days and values from `opened` on as the grid of all the rows: a
    missing day counts as 0 once a series has begun, and a series that began earlier still
    begins at or before `opened`. For detectors whose windows reach back less than the look-back
    (peer benchmarks: 28 days; entitlement projections: 8 weeks of a 16-week window).

    Column `last_before`: null on the rows read; on each added 0, the series' last day with a
    row before `opened` (where known), so a detector can tell a series that stopped sending
    rows long ago from one that is merely quiet (`peer_percentiles`).

    `starts` (`series_starts` of the same series) or `last_before` (customer_id, metric,
    last_before: `series_last_before` of the same series for this `opened`), when given, save
    the pass over the older rows when one run asks for several `opened` days or several parts of
    the same window; `starts` leaves `last_before` unknown."""
    dtype = usage.collect_schema()["value"]
    columns = ["customer_id", "metric", "date", "value"]
    recent = (
        usage.filter(pl.col("date") >= opened)
        .select(columns)
        .with_columns(pl.lit(None, dtype=pl.Date).alias("last_before"))
    )
    if last_before is not None:
        begun = last_before.lazy().filter(pl.col("last_before") < opened)
    elif starts is not None:
        begun = (
            starts.lazy()
            .filter(pl.col("first_day") < opened)
            .select("customer_id", "metric", pl.lit(None, dtype=pl.Date).alias("last_before"))
        )
    else:
        begun = series_last_before(usage, opened).lazy()
    zeros = begun.select(
        "customer_id",
        "metric",
        pl.lit(opened).alias("date"),
        pl.lit(0, dtype).alias("value"),
        "last_before",
    )
    return pl.concat([recent, zeros]).collect()


def series_last_before(usage: pl.LazyFrame, opened: date) -> pl.DataFrame:
    """customer_id, metric and last_before (the last day with a row before `opened`) of every
    series of `usage` with a row before `opened` (one pass over the older rows)."""
    return (
        usage.filter(pl.col("date") < opened)
        .group_by("customer_id", "metric")
        .agg(pl.col("date").max().alias("last_before"))
        .collect()
    )


def carry_last_before(rows: pl.DataFrame, opened: date) -> pl.DataFrame:
    """`series_last_before` for a later `opened`, from the `rows_since` of an earlier one (its
    rows reach at least to the day before `opened`): a long run's next span learns which series
    began before it, and when they were last seen, without reading the older rows again."""
    seen = pl.coalesce(pl.col("last_before"), pl.col("date"))
    return (
        rows.filter(pl.col("last_before").is_not_null() | (pl.col("date") < opened))
        .group_by("customer_id", "metric")
        .agg(seen.max().alias("last_before"))
    )


def seen_between(
    frame: pl.DataFrame, seen: pl.DataFrame, by: list[str], near: int, far: int
) -> pl.Series:
    """Whether each row of `frame` (in its order) has its `by` key on a day in `seen` (column
    `_seen`) between `far` and `near` days before the row's `partition_date`: what a run of that
    day alone has on record, whatever look-back another run started from. A mask, so that the
    caller filters its own rows instead of joining them back on their keys. (`seen` may repeat a
    day: the as-of join gives each row of `frame` one match, and repeats the same day.)"""
    latest = (
        frame.select(*by, "partition_date")
        .with_row_index("_row")
        .with_columns((pl.col("partition_date") - pl.duration(days=near)).alias("_until"))
        .sort("_until")
        .join_asof(
            seen.select(*by, "_seen").sort("_seen"),
            left_on="_until",
            right_on="_seen",
            by=by,
            strategy="backward",
            check_sortedness=False,  # sorted above (by the join key; `by` groups are not checked)
        )
    )
    on_record = np.zeros(frame.height, dtype=bool)
    recent = pl.col("_seen") >= pl.col("partition_date") - pl.duration(days=far)
    on_record[latest.filter(recent)["_row"].to_numpy()] = True
    return pl.Series("on_record", on_record)


def series_starts(usage: pl.LazyFrame) -> pl.DataFrame:
    """customer_id, metric and first_day of every series in `usage` (one pass, three columns)."""
    return (
        usage.group_by("customer_id", "metric").agg(pl.col("date").min().alias("first_day"))
    ).collect()


@dataclass(frozen=True)
class _DenseGrid:
    """`dense_usage` as arrays: row i is day `day[i]` (days since 1970-01-01), the
    `position[i]`-th day (0 = first observed) of series `series[i]` (a row of `keys`); rows are
    sorted by customer, metric and date. Built from integer codes of the string keys
    (`_series_codes`; a hash group-by on the strings for other inputs) and array arithmetic
    (series offsets, a bincount for the values) instead of a string-keyed join and sort; the
    string columns are only materialised for the rows a caller asks for."""

    keys: pl.DataFrame
    series: np.ndarray
    position: np.ndarray
    day: np.ndarray
    value: np.ndarray
    observed: np.ndarray
    """True where the source had a row (the other rows are the contract's zeros)."""
    unit: np.ndarray | None = None
    """Per series: the factor its values were multiplied by (`_in_counting_units`); None when
    every series is in its own unit."""

    def units(self, rows: np.ndarray) -> np.ndarray | float:
        """The unit of each of `rows` (1.0 when the grid has none)."""
        return 1.0 if self.unit is None else self.unit[self.series[rows]]

    @classmethod
    def build(cls, usage: pl.DataFrame, end: date, churned: pl.DataFrame | None) -> _DenseGrid:
        if usage.height == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(usage.select(KEYS), empty, empty, empty, np.zeros(0), np.zeros(0, bool))
        coded = _series_codes(usage)
        if coded is None:
            return cls._build_by_group_by(usage, end, churned)
        keys, row_series = coded
        day = usage["date"].to_physical().to_numpy()  # days since 1970-01-01 (Int32)
        # the first day of each series (each has a row): an unbuffered minimum, no group-by
        first = np.full(keys.height, np.iinfo(day.dtype).max, dtype=day.dtype)
        np.minimum.at(first, row_series, day)
        spans = _with_last(keys.with_columns(pl.Series("first", first).cast(pl.Date)), end, churned)
        if spans.height != keys.height:  # the churn table repeats a customer
            return cls._build_by_group_by(usage, end, churned)
        values = usage["value"]
        values = (values.fill_null(0.0) if values.null_count() else values).to_numpy()
        return cls._of_rows(spans, row_series, day, values)

    @classmethod
    def _build_by_group_by(
        cls, usage: pl.DataFrame, end: date, churned: pl.DataFrame | None
    ) -> _DenseGrid:
        """`build` by a hash group-by with lists on the string keys: any key dtypes and nulls."""
        spans = (
            usage.group_by(KEYS)
            .agg(
                pl.col("date").cast(pl.Int32).alias("_days"),
                pl.col("value").fill_null(0.0).alias("_values"),
                pl.col("date").min().alias("first"),
            )
            .sort(KEYS)
        )
        spans = _with_last(spans, end, churned)
        # observed rows in series order
        observed = np.repeat(np.arange(spans.height), spans["_days"].list.len().to_numpy())
        day = spans["_days"].explode().to_numpy().astype(np.int64)
        values = spans["_values"].explode().to_numpy()
        if spans["customer_id"].null_count() or spans["metric"].null_count():
            # as with a join, a row whose key is null matches no grid row: its value is not counted
            null_key = (spans["customer_id"].is_null() | spans["metric"].is_null()).to_numpy()
            values = np.where(null_key[observed], 0.0, values)
        return cls._of_rows(spans, observed, day, values)

    @classmethod
    def _of_rows(
        cls, spans: pl.DataFrame, row_series: np.ndarray, row_day: np.ndarray, values: np.ndarray
    ) -> _DenseGrid:
        """The grid of the series `spans` (keys, first and last day; sorted by keys) and of the
        source rows (`row_series` a row of `spans`, day, value). A grid row's value is the sum
        of its source rows in their order (the same float sums whatever the rows' grouping)."""
        first = spans["first"].cast(pl.Int32).to_numpy().astype(np.int64)
        length = (
            spans.select(
                (pl.col("last") - pl.col("first")).dt.total_days().clip(lower_bound=-1) + 1
            )
            .to_series()
            .to_numpy()
            .astype(np.int64)
        )
        offset = np.zeros(len(length), dtype=np.int64)
        np.cumsum(length[:-1], out=offset[1:])
        at = (offset - first)[row_series] + row_day
        last_row = np.full(spans.height, np.iinfo(row_day.dtype).min, dtype=row_day.dtype)
        np.maximum.at(last_row, row_series, row_day)
        if (last_row >= first + length).any():  # rows after the series' last day (churn)
            kept = row_day < (first + length)[row_series]
            at, values = at[kept], values[kept]
        value = np.bincount(at, weights=values, minlength=int(length.sum()))
        observed_rows = np.zeros(value.size, dtype=bool)
        observed_rows[at] = True
        series = np.repeat(np.arange(spans.height), length)
        position = run_positions(offset, length)
        day = np.repeat(first, length)
        day += position
        return cls(spans.select(KEYS), series, position, day, value, observed_rows)

    def frame(self, rows: np.ndarray | None = None) -> pl.DataFrame:
        """customer_id, metric, date, value of `rows` (all rows when None)."""
        series = self.series if rows is None else self.series[rows]
        day = self.day if rows is None else self.day[rows]
        value = self.value if rows is None else self.value[rows]
        if self.unit is not None:
            value = value / self.unit[series]
        return pl.DataFrame(
            {
                "customer_id": self.keys["customer_id"].gather(series),
                "metric": self.keys["metric"].gather(series),
                "date": pl.Series(day, dtype=pl.Int32).cast(pl.Date),
                "value": pl.Series(value, dtype=pl.Float64),
            }
        )


def _with_last(spans: pl.DataFrame, end: date, churned: pl.DataFrame | None) -> pl.DataFrame:
    """`spans` with each series' last day: `end`, or the day before its customer churned."""
    if churned is not None and churned.height:
        return spans.join(churned, on="customer_id", how="left").with_columns(
            pl.min_horizontal(
                pl.lit(end),
                (pl.col("churned_on") - pl.duration(days=1)).fill_null(pl.lit(end)),
            ).alias("last")
        )
    return spans.with_columns(pl.lit(end).alias("last"))


def _series_codes(usage: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray] | None:
    """The series' keys sorted (as `.sort(KEYS)` orders them) and each row's series, from integer
    codes of the two string keys instead of a group-by with lists on them: the customer's from
    its runs, when the rows come mostly grouped by customer (as exports written customer by
    customer do, or `rows_since`'s rows and zeros; one comparison of neighbours), the metric's
    from its few distinct values. None (the caller groups by the strings) for rows not grouped
    by customer, where hashing the customer costs more than the group-by, other key or date
    dtypes, nulls, or more customer x metric pairs than the rows could fill."""
    customer, metric = usage["customer_id"], usage["metric"]
    if (
        customer.dtype != pl.String
        or metric.dtype != pl.String
        or usage["date"].dtype != pl.Date
        or customer.null_count()
        or metric.null_count()
        or usage["date"].null_count()
    ):
        return None
    coded = _run_codes(customer)
    if coded is None:
        return None
    customers, customer_code = coded
    metrics, metric_code = _sorted_codes(metric)
    pairs = customers.len() * metrics.len()
    if pairs > 4 * usage.height + (1 << 16):
        return None
    pair = customer_code  # (each row's code, a fresh array: worked in place)
    pair *= metrics.len()
    pair += metric_code
    present = np.zeros(pairs, dtype=bool)
    present[pair] = True
    series_of_pair = np.cumsum(present) - 1
    kept = np.flatnonzero(present)
    keys = pl.DataFrame(
        {
            "customer_id": customers.gather(kept // metrics.len()),
            "metric": metrics.gather(kept % metrics.len()),
        }
    )
    # (in place: each row's code is read before its series is written there)
    return keys, np.take(series_of_pair, pair, out=pair, mode="clip")


def _run_codes(column: pl.Series) -> tuple[pl.Series, np.ndarray] | None:
    """The sorted distinct values of `column` (no nulls) and each row's index into them, coded
    once a run of equal values; None when runs are too short to pay (not grouped by it)."""
    runs = column.rle().struct.unnest()
    if 8 * runs.height > column.len() + 64:
        return None
    values, code = _sorted_codes(runs["value"])
    return values, np.repeat(code.astype(np.int64), runs["len"].to_numpy())


FEW_VALUES = 8
"""Up to this many distinct values, a column is coded by comparing it with each (a pass per
value) rather than by an Enum cast, which costs as much as ~8 such passes."""


def _sorted_codes(column: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """The sorted distinct values of `column` (no nulls) and each row's index into them. A
    column of few values is coded by comparisons with the values of a strided sample (which
    usually holds them all: a row no value matches leaves a null, and the column's own distinct
    values are taken instead), saving the hash of every row that finding them would cost."""
    guess = column.gather_every(max(1, column.len() >> 12)).unique().sort()
    if guess.len() <= FEW_VALUES:
        code = _compared_codes(column, guess)
        if not code.null_count():
            return guess, code.to_numpy()
    values = column.unique().sort()
    if values.len() <= FEW_VALUES:
        return values, _compared_codes(column, values).to_numpy()
    return values, column.cast(pl.Enum(values)).to_physical().to_numpy()


def _compared_codes(column: pl.Series, values: pl.Series) -> pl.Series:
    """Each row's index into `values` (null where none matches), by one comparison per value."""
    code = pl.when(pl.col("c") == values[0]).then(pl.lit(0, pl.UInt32))
    for i in range(1, values.len()):
        code = code.when(pl.col("c") == values[i]).then(pl.lit(i, pl.UInt32))
    return pl.select(column.alias("c")).select(code.otherwise(None)).to_series()


def _index_since(starts: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... counting rows since the last True in `starts` (the first row always starts)."""
    index = np.arange(starts.size)
    first = starts.astype(bool)
    if first.size:
        first[0] = True
    return index - np.maximum.accumulate(np.where(first, index, 0))


def _epoch_day(day: date) -> int:
    return (day - date(1970, 1, 1)).days


def _lagged_median(
    values: np.ndarray,
    position: np.ndarray,
    rows: np.ndarray,
    lags: Sequence[int],
    min_count: int,
    chunk: int = 1 << 16,
) -> np.ndarray:
    """For each of `rows`: the median of `values[row - lag]` over `lags`, counting only lags
    inside the row's own series (lag <= position) and non-NaN values; NaN below `min_count`.

    This is `rolling_median(...).over(series)` evaluated only on the rows that need it. An even
    count's median is lo + (hi - lo) * 0.5, the arithmetic polars uses, so values are identical.
    The windows of a chunk are gathered with one 2-D take (row-major, not column by column).
    Chunks run on a thread per core: numpy's gathers and sorts release the GIL, and each chunk
    writes only its own slice of the result, so the numbers are the same as one by one.
    """
    out = np.empty(rows.size)
    lag = np.asarray(lags, dtype=np.int64)
    # (a sorting network's whole windows skip the NaN checks when there is no NaN to check)
    any_nan = lag.size > NETWORK_WIDTH or bool(np.isnan(values).any())

    def one(begin: int) -> None:
        part = rows[begin : begin + chunk]
        out[begin : begin + part.size] = _chunk_median(
            values, position, part, lag, min_count, any_nan
        )

    for_each_chunk(one, range(0, rows.size, chunk), "median")
    return out


def _chunk_median(
    values: np.ndarray,
    position: np.ndarray,
    part: np.ndarray,
    lag: np.ndarray,
    min_count: int,
    any_nan: bool = True,
) -> np.ndarray:
    """`_lagged_median` of one chunk of rows (`any_nan`: whether `values` may hold a NaN)."""
    width = lag.size
    if width <= NETWORK_WIDTH and min_count >= 1:  # (a window of no value: NaN as a sort's)
        if any_nan or min_count > width:
            return _network_median(values, position, part, lag, min_count)
        # no NaN: the rows whose lags all lie inside their series have whole windows, those
        # with fewer than `min_count` lags inside (before the min_count-th lag) too few values
        at = position[part]
        whole = at >= lag.max()
        short = np.flatnonzero(~whole & (at >= np.sort(lag)[min_count - 1]))
        out = np.full(part.size, np.nan)
        out[whole] = _whole_window_median(values, part[whole], lag)
        out[short] = _network_median(values, position, part[short], lag, min_count)
        return out
    w = values.take(part[:, None] - lag, mode="clip")
    w[position[part][:, None] < lag] = np.nan  # lags before the series' first day
    return _row_medians(w, min_count)


def _row_medians(w: np.ndarray, min_count: int) -> np.ndarray:
    """Each row's median of its values that are not NaN, as polars takes one (lo + (hi - lo) *
    0.5, so a range and a day give the same bits); NaN below `min_count` values. Sorts `w`."""
    w.sort(axis=1)  # NaN last
    count = w.shape[1] - np.isnan(w).sum(axis=1)
    index = np.arange(w.shape[0])
    lo = w[index, np.maximum(count - 1, 0) // 2]
    hi = w[index, np.minimum(count // 2, w.shape[1] - 1)]
    median = lo + (hi - lo) * 0.5
    median[count < min_count] = np.nan
    return median


NETWORK_WIDTH = 16
"""Up to this many lags a median is taken by a sorting network, 1.5x numpy's sort of short rows."""


def _network_median(
    values: np.ndarray, position: np.ndarray, part: np.ndarray, lag: np.ndarray, min_count: int
) -> np.ndarray:
    """`_chunk_median` by a sorting network over the lags' columns (vector minimum / maximum,
    no per-row sort). A missing value (NaN, or a lag before the series' first day) is +inf,
    after every value as NaN is in a sort: the median's two values are among the first `count`
    of the sorted columns, the same numbers as a sort gives (equal ones at worst swapped, as
    0.0 and -0.0, whose median lo + (hi - lo) * 0.5 is 0.0 either way)."""
    width = lag.size
    before_first = position[part]
    count = np.full(part.size, width)
    columns = []
    for back in lag:
        column = values.take(part - back, mode="clip")
        missing = np.isnan(column) | (before_first < back)
        count -= missing
        column[missing] = np.inf
        columns.append(column)
    for i, j in _sorting_network(width):
        low = np.minimum(columns[i], columns[j])
        np.maximum(columns[i], columns[j], out=columns[j])
        columns[i] = low
    # a full window's middle columns; the few rows with missing values pick theirs
    lo, hi = columns[(width - 1) // 2].copy(), columns[width // 2].copy()
    short = np.flatnonzero(count < width)
    if short.size:
        window = np.stack([column[short] for column in columns], axis=1)
        index, short_count = np.arange(short.size), count[short]
        lo[short] = window[index, np.maximum(short_count - 1, 0) // 2]
        hi[short] = window[index, np.minimum(short_count // 2, width - 1)]
    with np.errstate(invalid="ignore"):  # inf - inf where too few values: NaN below
        median = lo + (hi - lo) * 0.5
    median[count < min_count] = np.nan
    return median


def _whole_window_median(values: np.ndarray, part: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """`_network_median` of rows whose windows are whole (every lag inside the series, no NaN):
    no missing values to count or set aside, and only the comparators and the halves of them
    that lead to the two middle values (`_median_network`) are computed, the same numbers."""
    width = lag.size
    columns = [values.take(part - back, mode="clip") for back in lag]
    for i, j, low, high in _median_network(width):
        if low and high:
            smaller = np.minimum(columns[i], columns[j])
            np.maximum(columns[i], columns[j], out=columns[j])
            columns[i] = smaller
        elif low:
            columns[i] = np.minimum(columns[i], columns[j])
        else:
            np.maximum(columns[i], columns[j], out=columns[j])
    lo, hi = columns[(width - 1) // 2], columns[width // 2]
    return lo + (hi - lo) * 0.5


@cache
def _median_network(width: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """`_sorting_network(width)` less what does not lead to its two middle slots: (i, j,
    whether the minimum at i is used, whether the maximum at j is), in order."""
    used = {(width - 1) // 2, width // 2}
    kept = []
    for i, j in reversed(_sorting_network(width)):
        if i in used or j in used:
            kept.append((i, j, i in used, j in used))
            used |= {i, j}
    return tuple(reversed(kept))


@cache
def _sorting_network(width: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort of the next power of two, less the comparators that touch
    a padding slot (an infinity that never moves): pairs (i, j), i < j, minimum to i."""
    size = 1 << max(width - 1, 0).bit_length()
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                pairs.extend(
                    (i + j, i + j + k)
                    for i in range(min(k, size - j - k))
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p)
                )
            k //= 2
        p *= 2
    return tuple((i, j) for i, j in pairs if j < width)


def _series_rolling_median(
    values: np.ndarray,
    position: np.ndarray,
    rows: np.ndarray,
    lag: int,
    window: int,
    min_count: int,
) -> np.ndarray:
    """For each of `rows`: the median of the `window` values ending `lag` rows back, within the
    row's series, NaN values skipped, NaN below `min_count` values. The same numbers as
    `pl.col(v).shift(lag).rolling_median(window, min_samples=min_count).over(series)`.

    That `.over` runs polars' null-aware median kernel (the shift puts nulls in every series),
    3-4x slower than its kernel for null-free data, which gives the same median of a full window.
    So the null-free kernel runs once over all rows (NaN read as 0; those windows are not used)
    and its result is kept where the row's window is complete and holds no NaN. A row whose
    window holds fewer than `min_count` values (at least one) is NaN, as `_lagged_median` would
    give, without sorting it (most of a series' first `lag + window - 1` days: their values are
    NaN until the series has history); the few other rows take `_lagged_median`. When few rows
    are wanted (a daily run) `_lagged_median` alone is cheaper than a pass over every row:
    sorting a row's window costs about a quarter of a kernel step per value.
    """
    lags = range(lag, lag + window)
    if rows.size * window <= 4 * values.size:
        # Few rows (a daily run): the kernel pass below could not pay off however many windows
        # are clean, so skip it and the NaN prefix sums over every row it would need.
        return _lagged_median(values, position, rows, lags, min_count)
    nan = np.isnan(values)
    nan_before = np.zeros(values.size + 1, dtype=np.int64)
    np.cumsum(nan, out=nan_before[1:])  # NaN count in values[:i]
    last = rows - lag  # the window is values[last - window + 1 : last + 1]
    inside = np.clip(position[rows] - (lag - 1), 0, window)  # its rows within the series
    end = np.maximum(last + 1, 0)  # (no row inside: any index, the count is 0)
    counted = inside - (nan_before[end] - nan_before[end - inside])  # its non-NaN values
    clean = counted == window
    if int(clean.sum()) * window <= 4 * values.size:
        clean[:] = False
    out = np.full(rows.size, np.nan)
    if clean.any():
        medians = (
            pl.Series(np.where(nan, 0.0, values))
            .rolling_median(window_size=window, min_samples=window)
            .to_numpy()
        )
        out[clean] = medians[last[clean]]
    dirty = np.flatnonzero(~clean & (counted >= max(min_count, 1)))
    out[dirty] = _lagged_median(values, position, rows[dirty], lags, min_count)
    return out


def usage_baselines(
    usage: pl.DataFrame,
    start: date,
    end: date,
    settings: UsageSettings,
    churned: pl.DataFrame | None = None,
    population: Populations = None,
    lookback_days: int | None = None,
    units: bool = False,
) -> pl.DataFrame:
    """Per customer x metric x day in [start, end]: value, expected, band, z, run length.

    `usage` must hold the look-back before `start` (see Settings.lookback_days); rows after `end`
    are ignored, so nothing after the partition day is used. `population`: the days a metric's
    whole population moved (`population_shifts`), whose common move is not the account's.
    `lookback_days`: judge each day on the rows of its own look-back only (`_LookBackCut`), so
    that a range gives what each of its days gives alone. `units`: each row's unit in `_unit`
    (a measured quantity's statistics are in thousandths of its own: `_in_counting_units`).
    """
    judge = _judged(usage, start, end, settings, churned, population, lookback_days)
    return judge(partial(_baselines_of_grid, units=units), merge=True)


def usage_baselines_and_trends(
    usage: pl.DataFrame,
    start: date,
    end: date,
    settings: UsageSettings,
    churned: pl.DataFrame | None = None,
    population: Populations = None,
    lookback_days: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`usage_baselines` and the trend signals (`detect_usage_trends` of `weekly_trend_stats`)
    of the same rows, from one dense grid: both lay the usage out per customer x metric x day,
    the costliest step of each. The trend statistics are reduced to their few signals before
    the baselines are computed, so the two wide frames are never in memory together."""
    judge = _judged(usage, start, end, settings, churned, population, lookback_days)
    trends = judge(_trends_of_grid)
    return judge(_baselines_of_grid, merge=True), trends


def usage_trends(
    usage: pl.DataFrame,
    start: date,
    end: date,
    settings: UsageSettings,
    churned: pl.DataFrame | None = None,
    population: Populations = None,
    lookback_days: int | None = None,
) -> pl.DataFrame:
    """The trend signals of [start, end]: `detect_usage_trends` of `weekly_trend_stats`,
    computed only on the rows that could pass its tests (`_trend_candidates`)."""
    judge = _judged(usage, start, end, settings, churned, population, lookback_days)
    return judge(_trends_of_grid)


def _trends_of_grid(
    grid: _DenseGrid,
    start: date,
    end: date,
    settings: UsageSettings,
    population: Populations = None,
    dropped: np.ndarray | None = None,
) -> pl.DataFrame:
    """The weekly signals of the grid: the trends and pattern changes (`detect_usage_trends`)
    and the young series' drops (`_young_drops_of_grid`)."""
    stats = _trend_stats_of_grid(
        grid, start, end, settings, only_candidates=True, population=population, dropped=dropped
    )
    stats = _with_population_trends(stats, population)
    young = _young_drops_of_grid(grid, start, end, settings, population, dropped)
    return pl.concat([detect_usage_trends(stats, settings, partial(_level_rows, grid)), young])


def _rise_change(s: UsageSettings) -> pl.Expr:
    """The log change of adoption's window: its last week against its first."""
    return pl.col("w0").log1p() - pl.col(f"w{s.trend_weeks - 1}").log1p()


def _with_population_trends(stats: pl.DataFrame, population: Populations) -> pl.DataFrame:
    """`stats` with its rows' population trends (`population_trends`), `_pop_trend`,
    `_pop_rise` and `_pop_level`: the sum of the whole book's and the account's cohorts'
    (measured net of each other, `_moved_together`; 0 where none moved)."""
    if not isinstance(population, Population) or population.trends is None:
        return stats
    trends = population.trends.rename({"date": "partition_date"})
    if trends.height == 0 or stats.height == 0:
        return stats
    on = ["customer_id", "metric", "partition_date"]
    rows = stats.select(on).unique()
    book = rows.join(trends.filter(pl.col("cohort").is_null()), on=on[1:], how="inner")
    of_cohorts = rows.join(population.members, on="customer_id", how="inner").join(
        trends.filter(pl.col("cohort").is_not_null()), on=["cohort", *on[1:]], how="inner"
    )
    summed = (
        pl.concat([book.drop("cohort"), of_cohorts.drop("cohort")])
        .group_by(on)
        .agg(pl.col(name).sum().alias(alias) for name, alias in NET_OF_POPULATION.items())
    )
    return stats.join(summed, on=on, how="left", maintain_order="left").with_columns(
        pl.col(*NET_OF_POPULATION.values()).fill_null(0.0)
    )


NET_OF_POPULATION = {
    "trend_change": "_pop_trend",
    "rise_change": "_pop_rise",
    "level_change": "_pop_level",
}
"""The population trends (`population_trends`) and the columns a row's is attached as."""


def _shared_part(own: pl.Expr, population: pl.Expr) -> pl.Expr:
    """The part of an account's log change its population's explains: the population's, where
    both moved the same way, at most the account's own (an account moving beyond its cohort
    keeps the rest; one moving against it, or alone, all of it)."""
    return (
        pl.when((own < 0) & (population < 0))
        .then(pl.max_horizontal(own, population))
        .when((own > 0) & (population > 0))
        .then(pl.min_horizontal(own, population))
        .otherwise(0.0)
    )


def _judged(
    usage: pl.DataFrame,
    start: date,
    end: date,
    settings: UsageSettings,
    churned: pl.DataFrame | None,
    population: Populations,
    lookback_days: int | None,
) -> Callable[..., pl.DataFrame]:
    """`judge(of_grid, merge=False)`: `of_grid` (a `_..._of_grid` statistic) of [start, end] on
    one dense grid of the usage, each day on its own look-back (`_per_look_back`); the grid is
    built once however many statistics are taken from it."""
    grid = _grid_until(usage, end, churned)
    cut = _LookBackCut.of(grid, start, end, settings, lookback_days)
    judged = {"start": start, "end": end, "settings": settings, "population": population}

    def judge(of_grid: Callable[..., pl.DataFrame], merge: bool = False) -> pl.DataFrame:
        return _per_look_back(partial(of_grid, **judged), grid, cut, start, end, merge=merge)

    return judge


def _grid_until(usage: pl.DataFrame, end: date, churned: pl.DataFrame | None) -> _DenseGrid:
    """The dense grid of the rows up to `end` (nothing after the partition day is used), its
    measured series in counting units (`_in_counting_units`)."""
    return _in_counting_units(_DenseGrid.build(usage.filter(pl.col("date") <= end), end, churned))


MEASURED_UNIT = 1000.0
"""What a measured quantity's values are multiplied by before they are judged
(`_in_counting_units`)."""


def _in_counting_units(grid: _DenseGrid) -> _DenseGrid:
    """The grid with each measured series - one whose values, on at least half of its days
    with usage, are not whole numbers: hours, gigabytes, dollars, not a count of events - in
    thousandths of its unit.

    Values are compared on the log1p scale, which is multiplicative (unit-free) for counts of
    a few or more and additive near 0, and the counting noise and minimum volumes are bounds on
    counts. In its own unit, 1.07 hours a day is neither: its 60% drop read z = -0.5 against
    counting noise, 2.9 hours on a weekend was too little to judge, and without those bounds a
    compressed scale made 3.8 hours on a day of 1 an extreme spike (trial 7). In thousandths
    the scale is multiplicative and the bounds no longer bind, as for a large count; the
    values the statistics report are divided back (`_DenseGrid.frame`, the baselines' value
    and band, the weekly signals' facts). The grid's rows decide: a count with a few stray
    fractions stays a count, and a measured quantity is one in any window, so a range and its
    days agree; only a series that changed how it is reported (counts, then hours) within the
    range can be judged in another unit by the range than by some of its days."""
    if grid.value.size == 0:
        return grid
    values = pl.Series(grid.value)
    if not (values.floor() != values).any():  # (polars: 0.14 s for 56M counts, numpy 0.22)
        return grid
    with np.errstate(invalid="ignore"):  # (a NaN, rejected at the source, is no unit)
        non_whole = np.isfinite(grid.value) & (grid.value != np.floor(grid.value))
    if not non_whole.any():
        return grid
    # (most of its days with usage: a count with a stray 0.5 stays a count)
    used = np.bincount(grid.series[grid.value != 0], minlength=grid.keys.height)
    measured = 2 * np.bincount(grid.series[non_whole], minlength=grid.keys.height) >= used
    measured &= used > 0
    if not measured.any():
        return grid
    unit = np.where(measured, MEASURED_UNIT, 1.0)
    return replace(grid, value=grid.value * unit[grid.series], unit=unit)


def usage_reach_days(settings: UsageSettings) -> int:
    """How many days before a partition day its usage statistics read: a series that began
    this long before the day (or earlier) gives the same numbers on it whenever it began. The
    longest reaches: the first judged day (`persistence_days` + 7 back) with its scale's
    `scale_days` residuals, each against `baseline_weeks` same-weekday weeks, and its history
    (capped at `HISTORY_CAP`); the weekly scale of the trend (56 days of week-to-week changes
    ending `trend_weeks` - 1 weeks back, each change two weeks long); the trend test's and the
    trend's week sums; the weekend share's prior weeks."""
    s = settings
    first_judged = s.persistence_days + 7
    return max(
        first_judged + s.scale_days + 7 * s.baseline_weeks,
        first_judged + HISTORY_CAP,
        7 * (s.trend_weeks - 1) + 55 + 13,
        7 * max(s.trend_weeks, s.trend_test_weeks) - 1,
        7 * (s.trend_weeks + BEFORE_TREND_WEEKS) - 1,
        first_judged + MONTH_REACH_DAYS,
        21 + 7 * (PRIOR_WEEKS - 1) + 6,
    )


@dataclass(frozen=True)
class _LookBackCut:
    """What a day's run alone sees of a longer grid. A run of day D reads the usage rows of its
    look-back [D - lookback_days, D], so its grid of a series begins at the series' first row
    in that window. A range's grid begins at the first row of the range's (longer) look-back,
    which gives the same numbers on D unless:
    - the series has no row in D's look-back (it stopped sending rows long ago): a day's run
      has no such series, so the range's row of D is dropped;
    - the series' first row in D's look-back came after a gap, within `usage_reach_days` of D:
      a day's run judges it as a series that began at that row (`restarted`), the range as one
      with a gap of zeros. Such a gap must be longer than the look-back less the reach (11 days
      with the defaults; at least a week with any allowed settings), so this is rare (a
      paused account resuming) and costs little.
    `dropped`: the range grid's rows judged elsewhere or not at all; `restarted`: a grid of the
    restarted series (same keys and series numbers), each from its restart row to the last day
    it is judged as restarted, and `restarted_dropped` its rows before its first such day."""

    dropped: np.ndarray
    restarted: _DenseGrid | None
    restarted_dropped: np.ndarray | None

    @classmethod
    def of(
        cls,
        grid: _DenseGrid,
        start: date,
        end: date,
        settings: UsageSettings,
        lookback_days: int | None,
    ) -> _LookBackCut | None:
        if lookback_days is None or grid.value.size == 0:
            return None
        lookback, reach = lookback_days, usage_reach_days(settings)
        if lookback < reach:  # (Settings refuses it; a caller of the library may not)
            raise ValueError(f"lookback_days={lookback} is shorter than the usage reach {reach}")
        first, last = _epoch_day(start), _epoch_day(end)
        if int(grid.day.min()) >= last - lookback:
            # every row lies in the last day's look-back (a day's run reads no more): no row
            # of the range is beyond its series' last row by more than the look-back, and no
            # gap ends where a day's look-back would begin - nothing to cut
            return None
        in_range = (grid.day >= first) & (grid.day <= last)
        # a grid begins each series on a row, so the count restarts on every series' first row
        dropped = in_range & (_index_since(grid.observed) > lookback)
        rows = np.flatnonzero(grid.observed)
        before, after = rows[:-1], rows[1:]
        gap = (grid.series[before] == grid.series[after]) & (after - before >= lookback - reach + 2)
        before, after = before[gap], after[gap]
        series_end = np.searchsorted(grid.series, grid.series[after], side="right") - 1
        # the days whose look-back begins after the gap's last row, up to the reach
        block_first = np.maximum(grid.day[before] + lookback + 1, grid.day[after])
        block_last = np.minimum(grid.day[after] + reach - 1, grid.day[series_end])
        block_first, block_last = np.maximum(block_first, first), np.minimum(block_last, last)
        kept = block_first <= block_last
        if not kept.any():
            return cls(dropped, None, None) if dropped.any() else None
        after, block_first, block_last = after[kept], block_first[kept], block_last[kept]
        length = block_last - grid.day[after] + 1
        begins = np.zeros(length.size, dtype=np.int64)
        np.cumsum(length[:-1], out=begins[1:])
        position = np.arange(int(length.sum()), dtype=np.int64) - np.repeat(begins, length)
        taken = np.repeat(after, length) + position
        restarted = _DenseGrid(
            grid.keys,
            grid.series[taken],
            position,
            grid.day[taken],
            grid.value[taken],
            grid.observed[taken],
            grid.unit,
        )
        restarted_dropped = restarted.day < np.repeat(block_first, length)
        dropped[taken[~restarted_dropped]] = True
        return cls(dropped, restarted, restarted_dropped)


def _per_look_back(
    compute: Callable[..., pl.DataFrame],
    grid: _DenseGrid,
    cut: _LookBackCut | None,
    start: date,
    end: date,
    merge: bool = False,
) -> pl.DataFrame:
    """`compute(grid, dropped=...)` of the grid as each day's run would see it alone (`cut`,
    None: as it is): the grid less its dropped rows, and the restarted series' rows. Rows in
    series and day order: `merge` (rows of every grid row in [start, end] not dropped, as the
    baselines give) interleaves the two by their grid order; otherwise (a few signals) they are
    sorted."""
    if cut is None:
        return compute(grid, dropped=None)
    frame = compute(grid, dropped=cut.dropped)
    if cut.restarted is None:
        return frame
    extra = compute(cut.restarted, dropped=cut.restarted_dropped)
    if extra.height == 0:
        return frame
    if frame.height == 0:  # (an empty frame may lack the columns computed from rows)
        return extra
    together = pl.concat([frame, extra], how="vertical_relaxed")
    if not merge:
        order = ("customer_id", "metric", "subject", "partition_date", "type")
        return together.sort([c for c in order if c in together.columns], maintain_order=True)
    first, last = _epoch_day(start), _epoch_day(end)

    def order_key(g: _DenseGrid, dropped: np.ndarray) -> np.ndarray:
        rows = (g.day >= first) & (g.day <= last) & ~dropped
        return (g.series[rows].astype(np.int64) << 20) | (g.day[rows] - first)

    ours = order_key(grid, cut.dropped)
    theirs = order_key(cut.restarted, cut.restarted_dropped)  # type: ignore[arg-type]
    order = np.empty(ours.size + theirs.size, dtype=np.int64)
    order[np.arange(ours.size) + np.searchsorted(theirs, ours)] = np.arange(ours.size)
    order[np.arange(theirs.size) + np.searchsorted(ours, theirs)] = ours.size + np.arange(
        theirs.size
    )
    return together[order]


POPULATION_SCHEMA = {
    "metric": pl.String,
    "date": pl.Date,
    "population_shift": pl.Float64,
    "population_spread": pl.Float64,
    "cohort": pl.String,
}
"""A population day: the metric's accounts moved together that day; `cohort` null for the
whole book, else the cohort that did (`industry=education`, `region=EMEA`)."""


@dataclass(frozen=True)
class Population:
    """The population days of a run (`population_shifts`) and, for the cohorts among them,
    which accounts each holds (customer_id, cohort): of every account, not only the sample
    the days were measured on (`cohort_members`)."""

    days: pl.DataFrame
    members: pl.DataFrame
    trends: pl.DataFrame | None = None
    """(metric, date, cohort, trend_change, rise_change, level_change): `population_trends`."""


Populations = pl.DataFrame | Population | None
"""What the usage statistics take as their population: its days alone (the whole book's, as
`population_shifts` gives them without cohorts), with the cohorts' members, or none."""


def cohort_rows(accounts: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """(customer_id, cohort) of each account in its cohort of each of `columns` it has a value
    of: the cohort named "column=value" ("industry=education")."""
    return pl.concat(
        [
            accounts.select(
                "customer_id",
                (pl.lit(f"{column}=") + pl.col(column).cast(pl.String)).alias("cohort"),
            ).drop_nulls()
            for column in columns
        ]
        or [pl.DataFrame(schema={"customer_id": pl.String, "cohort": pl.String})]
    )


def cohort_members(accounts: pl.DataFrame, *frames: pl.DataFrame | None) -> pl.DataFrame:
    """(customer_id, cohort) of the accounts in the cohorts named in `frames` (population
    days, population trends)."""
    none = pl.DataFrame(schema={"customer_id": pl.String, "cohort": pl.String})
    named = pl.concat(
        [
            frame.filter(pl.col("cohort").is_not_null()).select(pl.col("cohort").cast(pl.String))
            for frame in frames
            if frame is not None and "cohort" in frame.columns
        ]
        or [none.select("cohort")]
    )["cohort"].unique()
    if named.len() == 0:
        return none
    columns = sorted({name.split("=", 1)[0] for name in named.to_list()})
    return (
        cohort_rows(accounts, columns)
        .filter(pl.col("cohort").is_in(named.implode()))
        .unique(maintain_order=True)
    )


def population_shifts(
    usage: pl.DataFrame,
    start: date,
    end: date,
    settings: UsageSettings,
    churned: pl.DataFrame | None = None,
    window_start: date | None = None,
    data_from: date | None = None,
    cohorts: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """(metric, date, population_shift, cohort) of the days, from the first one a run judges to
    `end`, on which a metric's median account moved from its own baseline by `population_shift` or
    more: a holiday, a partial export or the product's own outage moves every account at once,
    and is no account's news. The shift is the median log residual (log1p(value) minus the
    baseline's log expectation) over the series judged that day, at least
    `min_population_series` of them, and more of them moved its way than chance would give
    (sign test at `population_alpha`): a small book's median moves by chance, its accounts do
    not all move together. `usage`: a sample of accounts, with the run's look-back from
    `window_start` (default: its first day). `data_from`: the first day of the whole usage
    window's rows (all accounts): before it the source held no history, not zero usage - padded
    from a window start before the source began, every account's first weeks read as zeros and
    a day of theirs as everyone's move (trial 7: a "+18%" day of everyone's hours). Read over
    all accounts, not this sample: a day of the sample's accounts without rows is no start.

    `population_spread` is how far the accounts' residuals spread around the shift that day (a
    robust standard deviation on the log scale, 1.4826 x their MAD): a holiday takes one
    account to 25% and another to 60%, and how deep an account's holiday is is no news of it
    either, so an account moving with its population is judged against it when it is wider
    than the account's own scale (`_baselines_of_grid`): it must stand out among all accounts
    that day, not only against its own ordinary days.

    `cohorts`: the sample's accounts with the columns of `settings.population_cohorts`
    (industry, region). A cohort's accounts that moved together by the same rules are a
    population day of that cohort (`cohort` "industry=education"): a school's summer break, a
    retailer's December, a country's holiday moves a part of the book, which is no account's
    news either, while the rest of the book did not move. The book and each column are
    measured net of the others' moves, and an account's move is their sum (`_moved_together`):
    a fifth of the book at a fifth of its usage drags the book's median (or a region's, where
    the industry is spread across regions) down far enough to read as everyone's holiday.

    The days measured reach back over the trend test's weeks (`_test_weeks`) and the scale's
    days (`_baselines_of_grid` leaves them out of it); the trend test's earliest
    day's 8 same-weekday weeks end a day after a daily run's look-back begins. So that where a
    series' first row falls in the look-back decides nothing (a sparse export misses days, and a
    range's look-back begins earlier than its days'), every series counts from `window_start`
    (a missing day is 0, as in the grid), and a series is judged on a day if it has a row 6 to 8
    weeks before it (`min_history_days`): both read within any run's look-back of that day."""
    s = settings
    # back over the trend test's weeks, the scale's days and the expected value's weeks that
    # leave population days out (`_baselines_of_grid`)
    reach = max(
        7 * s.trend_test_weeks - 1,
        s.persistence_days + 7 + max(s.scale_days, 7 * POPULATION_FREE_WEEKS),
    )
    first_judged = start - timedelta(days=reach)
    if usage.height == 0:
        return pl.DataFrame(schema=POPULATION_SCHEMA)
    opened = window_start or usage["date"].min()
    if data_from is not None:
        opened = max(opened, data_from)
    padded = pl.concat(
        [
            usage.select(*KEYS, "date", "value"),
            usage.select(KEYS)
            .unique()
            .with_columns(
                pl.lit(opened).alias("date"), pl.lit(0, usage.schema["value"]).alias("value")
            ),
        ]
    )
    base = usage_baselines(padded, first_judged, end, s, churned, units=True)
    seen = usage.filter(pl.col("date") >= opened).select(*KEYS, pl.col("date").alias("_seen"))
    # (a series' day is one row of `base`: the rows on record are those of the mask)
    on_record = seen_between(base, seen, KEYS, s.min_history_days, 7 * s.baseline_weeks)
    residuals = (
        base.filter(on_record)
        .filter(
            (pl.col("history_days") >= s.min_history_days)
            & (pl.col("expected") * pl.col("_unit") >= s.min_expected)
            & pl.col("y_expected").is_not_null()
        )
        # (in the grid's units, as y_expected: `_in_counting_units`)
        .select(
            "customer_id",
            "metric",
            "partition_date",
            "value",
            ((pl.col("value") * pl.col("_unit")).log1p() - pl.col("y_expected")).alias("_residual"),
        )
    )
    return _moved_together(residuals, cohorts, s).select(list(POPULATION_SCHEMA))


BACKFIT_PASSES = 2
"""Rounds of measuring each cohort column net of the others' moves (`_moved_together`)."""


def _moved_together(
    residuals: pl.DataFrame, cohorts: pl.DataFrame | None, s: UsageSettings
) -> pl.DataFrame:
    """The (metric, date, cohort) whose accounts' `_residual`s moved together
    (`_shared_moves`), as moves that add up: an account's population moved by the sum of the
    whole book's move (cohort null) and its cohorts' (`_population_rows`). The book and each
    column of `s.population_cohorts` are measured net of the others' moves (backfitting, as a
    median polish fits a two-way table with its overall effect: `BACKFIT_PASSES` rounds): a
    region's holiday moves every industry a little, and a season of one industry every region
    and the book; measured one after the other, the first took the others' moves (trial 11:
    retail at its December peak was no cohort's on Thanksgiving, when its American half fell,
    and its other retailers read the peak as a spike), and a holiday of everyone taken up by
    the industries left the accounts of no measured industry without it. A cohort holding
    every account judged that day is the book. Where a move is void (-inf: most of a cohort
    without usage) its accounts' rows are left out of the other measurements."""
    book_label = pl.lit(None, pl.String).alias("cohort")
    if cohorts is None or not s.population_cohorts or residuals.height == 0:
        return _shared_moves(residuals, [], s).with_columns(book_label).sort("metric", "date")
    on = ["customer_id", "metric", "partition_date"]
    members = {
        column: cohort_rows(cohorts, [column])
        for column in s.population_cohorts
        if column in cohorts.columns
    }
    # (per day: a cohort of every account judged that day is the book)
    judged = residuals.group_by("metric", "partition_date").agg(pl.len().alias("_judged"))
    measured: dict[str | None, pl.DataFrame] = {}

    def net_of(terms: list[str | None]) -> pl.DataFrame:
        """The residuals less the moves of the `terms` (None: the book's; a column: its
        accounts' cohorts'), the rows of a void move left out."""
        parts = []
        for term in terms:
            moved = measured.get(term)
            if moved is None or moved.height == 0:
                continue
            dated = moved.select(
                "cohort", "metric", pl.col("date").alias("partition_date"), "population_shift"
            )
            if term is None:
                parts.append(
                    residuals.select(on).join(dated.drop("cohort"), on=on[1:], how="inner")
                )
            else:
                parts.append(members[term].join(dated, on="cohort").select(*on, "population_shift"))
        if not parts:
            return residuals
        other = pl.concat(parts).group_by(on).agg(pl.col("population_shift").sum().alias("_off"))
        return (
            residuals.join(other, on=on, how="left")
            .filter(pl.col("_off").is_null() | pl.col("_off").is_finite())
            .with_columns(pl.col("_residual") - pl.col("_off").fill_null(0.0))
            .drop("_off")
        )

    terms: list[str | None] = [None, *members]
    for _ in range(BACKFIT_PASSES):
        for term in terms:
            rest = net_of([other for other in terms if other != term])
            if term is None:
                measured[None] = _shared_moves(rest, [], s).with_columns(book_label)
                continue
            moved = _shared_moves(rest.join(members[term], on="customer_id"), ["cohort"], s)
            measured[term] = (
                moved.join(
                    judged.rename({"partition_date": "date"}), on=["metric", "date"], how="left"
                )
                .filter(pl.col("_series") < pl.col("_judged"))
                .drop("_series", "_judged")
            )
    return pl.concat([measured[term] for term in terms], how="diagonal_relaxed").sort(
        "metric", "date", "cohort", nulls_last=False
    )


POPULATION_TRENDS_SCHEMA = {
    "metric": pl.String,
    "date": pl.Date,
    "cohort": pl.String,
    "trend_change": pl.Float64,
    "rise_change": pl.Float64,
    "level_change": pl.Float64,
}


def population_trends(
    usage: pl.DataFrame,
    start: date,
    end: date,
    settings: UsageSettings,
    churned: pl.DataFrame | None,
    days: pl.DataFrame,
    cohorts: pl.DataFrame | None = None,
    lookback_days: int | None = None,
) -> pl.DataFrame:
    """(metric, date, cohort, trend_change, rise_change, level_change) of the days on which
    the weekly statistics of a metric's accounts moved together, as `population_shifts` finds
    days (and on the same sample, cohorts and population `days`): the log change of the trend
    test's last two weeks against its first two (`trend_change`, what declining_usage
    measures), of the last week against the first of adoption's `trend_weeks` (`rise_change`)
    and of the last 3 weeks against the 8 before (`level_change`, a new level); 0 where that
    one did not. A season of more than a few weeks (schools for the summer) is
    more than population days: its weeks read as every school's decline, then as its new
    level and, on its return, its adoption; judged net of their cohort's
    (`_with_population_trends`, `_shared_part`), they are no one's. Rows of a day on which
    none moved are left out."""
    s = settings
    if usage.height == 0:
        return pl.DataFrame(schema=POPULATION_TRENDS_SCHEMA)
    members = cohort_members(cohorts, days) if cohorts is not None else None
    stats = weekly_trend_stats(
        usage,
        start,
        end,
        s,
        churned,
        population=days if members is None else Population(days, members),
        lookback_days=lookback_days,
    )
    if stats.height == 0:
        return pl.DataFrame(schema=POPULATION_TRENDS_SCHEMA)
    history = pl.col("history_days") >= 7 * s.trend_weeks
    measures = {
        "trend_change": pl.when(history & (pl.col("decline_base") >= s.min_weekly_volume)).then(
            pl.col("decline_log_change")
        ),
        "rise_change": pl.when(history & (pl.col("run_base") >= s.min_weekly_volume)).then(
            _rise_change(s)
        ),
        "level_change": pl.when(history & (pl.col("level_prior_week") >= s.min_weekly_volume)).then(
            (pl.col("level_recent3") / 3.0).log1p() - pl.col("level_prior_week").log1p()
        ),
    }
    found: list[pl.DataFrame] = []
    for name, measure in measures.items():
        residuals = stats.select(
            "customer_id",
            "metric",
            "partition_date",
            measure.alias("_residual"),
            pl.lit(1.0).alias("value"),  # (no void days among weeks)
        ).drop_nulls("_residual")
        moved = _moved_together(residuals, cohorts, s)
        found.append(
            moved.select("metric", "date", "cohort", pl.col("population_shift").alias(name))
        )
    both = found[0]
    for other in found[1:]:
        both = both.join(
            other, on=["metric", "date", "cohort"], how="full", coalesce=True, nulls_equal=True
        )
    return (
        both.with_columns(pl.col(*measures).fill_null(0.0))
        .select(list(POPULATION_TRENDS_SCHEMA))
        .sort("metric", "date", "cohort", nulls_last=False)
    )


def _shared_moves(residuals: pl.DataFrame, by: list[str], s: UsageSettings) -> pl.DataFrame:
    """The (`by`, metric, date) whose accounts' residuals moved together (`population_shifts`):
    the median far enough, at least `min_population_series` accounts, more of them its way
    than a sign test's chance, a void day's shift -inf."""
    threshold = math.log1p(s.population_shift)
    shifts = (
        residuals.group_by(*by, "metric", "partition_date")
        .agg(
            pl.col("_residual").median().alias("population_shift"),
            ((pl.col("_residual") - pl.col("_residual").median()).abs().median() * MAD_TO_SD).alias(
                "population_spread"
            ),
            pl.len().alias("_series"),
            (pl.col("_residual") > 0).sum().alias("_up"),
            (pl.col("_residual") < 0).sum().alias("_down"),
            (pl.col("value") == 0).sum().alias("_zero"),
        )
        .filter(
            (pl.col("_series") >= s.min_population_series)
            & (
                (pl.col("population_shift") >= threshold)
                | (pl.col("population_shift") <= -threshold)
            )
        )
        .rename({"partition_date": "date"})
    )
    critical = pl.DataFrame(
        [
            (n, sign_test_critical(n, s.population_alpha))
            for n in shifts["_series"].unique().to_list()  # a few distinct book sizes
        ],
        schema={"_series": shifts["_series"].dtype, "_critical": pl.Int64},
        orient="row",
    )
    shared = pl.when(pl.col("population_shift") > 0).then(pl.col("_up")).otherwise(
        pl.col("_down")
    ) >= pl.col("_critical")
    shifts = shifts.join(critical, on="_series", how="left").filter(shared)
    # A day on which most accounts judged have no usage at all (an export day that is missing
    # or all zeros, the product down, a day everyone is off) is *void*: a log residual of 0
    # against its usual level is the account's size, not its move, so no account's value that
    # day says anything about it. Its shift is -inf: every account moving down with it is
    # judged to have moved by 0, and the weekly sums count its other days (`_test_weeks`).
    void = pl.col("_zero") * 2 > pl.col("_series")
    return shifts.with_columns(
        pl.when(void).then(-math.inf).otherwise("population_shift").alias("population_shift")
    ).select(*by, "metric", "date", "population_shift", "population_spread", "_series")


def _population_at(
    grid: _DenseGrid, population: Populations, columns: Sequence[str]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The grid rows on a population day of their metric (ascending) and, for each of `columns`,
    its value there (a column the frame lacks: 0), from one pass (`_population_rows`): a row's
    moves (the whole book's and its account's cohorts') add up."""
    members = None
    if isinstance(population, Population):
        population, members = population.days, population.members
    if population is None or population.height == 0 or grid.value.size == 0:
        return np.zeros(0, dtype=np.int64), [np.zeros(0) for _ in columns]
    return _population_rows(grid, population, columns, members)


def _placed(at: np.ndarray, values: np.ndarray, rows: np.ndarray | None, size: int) -> np.ndarray:
    """`values` (at the grid rows `at`, ascending) at each of `rows` (ascending; all `size` rows
    of the grid when None), 0 elsewhere: a row's population shift or spread, 0 on an ordinary
    day."""
    out = np.zeros(size if rows is None else rows.size)
    if at.size == 0 or out.size == 0:
        return out
    if rows is None:
        out[at] = values
        return out
    index = np.minimum(np.searchsorted(rows, at), rows.size - 1)
    found = rows[index] == at
    out[index[found]] = values[found]
    return out


def _population_rows(
    grid: _DenseGrid,
    population: pl.DataFrame,
    columns: Sequence[str],
    members: pl.DataFrame | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The grid rows on a population day of their metric, ascending, and the day's value of each
    of `columns` (0 for one the frame lacks): each run of a series' rows (from position 0,
    daily) holds a day at its first day's offset. A cohort's days (`cohort` not null) are the
    days of its `members`' series only; a row's moves add up (`_moved_together`: the book's
    and its cohorts' were measured each net of the others), its spread is the widest."""
    starts = np.flatnonzero(grid.position == 0)
    length = np.diff(starts, append=grid.value.size)
    first_day = grid.day[starts]
    metric_of = grid.keys["metric"].gather(grid.series[starts])
    customer_of = None
    if "cohort" not in population.columns:
        population = population.with_columns(pl.lit(None, pl.String).alias("cohort"))
    found_rows: list[np.ndarray] = []
    found: list[list[np.ndarray]] = [[] for _ in columns]
    # (in a fixed order - the book's, then the cohorts' by name - so that a row's moves are
    # added in the same order by a range and by each of its days)
    groups = sorted(
        population.group_by("metric", "cohort"),
        key=lambda group: (str(group[0][0]), group[0][1] is not None, str(group[0][1])),
    )
    for (metric, cohort), days in groups:
        of_metric = (metric_of == metric).fill_null(False)
        if cohort is not None:
            if members is None:
                continue  # (its accounts unknown: no one's)
            if customer_of is None:
                customer_of = grid.keys["customer_id"].gather(grid.series[starts])
            ids = members.filter(pl.col("cohort") == cohort)["customer_id"]
            of_metric &= customer_of.is_in(ids.implode())
        runs = np.flatnonzero(of_metric.to_numpy())
        pop_day = days["date"].cast(pl.Int32).to_numpy().astype(np.int64)
        offset = pop_day[None, :] - first_day[runs][:, None]
        inside = (offset >= 0) & (offset < length[runs][:, None])
        found_rows.append((starts[runs][:, None] + offset)[inside])
        for out, column in zip(found, columns, strict=True):
            day_values = (
                days[column].to_numpy() if column in days.columns else np.zeros(days.height)
            )
            out.append(np.broadcast_to(day_values[None, :], offset.shape)[inside])
    if not found_rows:
        return np.zeros(0, dtype=np.int64), [np.zeros(0) for _ in columns]
    at = np.concatenate(found_rows)
    order = np.argsort(at, kind="stable")
    at = at[order]
    first = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
    out = []
    for column, values in zip(columns, found, strict=True):
        ordered = np.concatenate(values)[order]
        # the moves add up (a void day's -inf stays -inf); the widest spread
        add = np.add if column == "population_shift" else np.maximum
        out.append(add.reduceat(ordered, first) if ordered.size else ordered)
    return at[first], out


MONTHS_BACK = 3
"""The months before a day whose same point of the month tells a recurring monthly peak
(`_monthly_peak`): a rise that came at this point of each of the last 3 months is no spike
(in 2 of 3, the best of 5 noisy days reached halfway by chance for a third of real rises)."""
MONTH_WINDOW_DAYS = 2
"""Days either side of the same point of a past month (working days move the month's close)."""
MONTH_REACH_DAYS = 92 + MONTH_WINDOW_DAYS
"""The furthest day `_monthly_peak` reads back (3 months of at most 31 + 31 + 30 days)."""


def _weekend(epoch_day: np.ndarray) -> np.ndarray:
    """Whether each day (days since 1970-01-01, a Thursday) is a Saturday or a Sunday."""
    return (epoch_day + 3) % 7 >= 5


def _monthly_peak(
    y: np.ndarray, position: np.ndarray, day: np.ndarray, rows: np.ndarray, expected: np.ndarray
) -> np.ndarray:
    """For each of `rows` (their log values above `expected`; `day`: the grid's epoch days):
    whether the same point of the month - as many days before the month's end for a day in
    its second half, the same day of the month otherwise - came at least halfway as high (in
    log) in each of the last MONTHS_BACK months, within MONTH_WINDOW_DAYS on days of its kind
    (weekdays for a weekday, weekend days for a weekend day): a month-end close, a billing run
    or a payroll day, which a weekday's baseline cannot know, is no spike."""
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    today = day[rows].astype("datetime64[D]")
    month = today.astype("datetime64[M]")
    of_month = (today - month.astype("datetime64[D]")).astype(np.int64)  # 0 = the 1st
    to_end = ((month + 1).astype("datetime64[D]") - 1 - today).astype(np.int64)
    halfway = expected + 0.5 * (y[rows] - expected)
    weekend = _weekend(day[rows])
    reached = np.zeros(rows.size, dtype=np.int64)
    for back in range(1, MONTHS_BACK + 1):
        begins = (month - back).astype("datetime64[D]")
        ends = (month - back + 1).astype("datetime64[D]") - 1
        same = np.where(to_end < of_month, ends - to_end, np.minimum(begins + of_month, ends))
        lag = (today - same).astype(np.int64)
        best = np.full(rows.size, -np.inf)
        for shift in range(-MONTH_WINDOW_DAYS, MONTH_WINDOW_DAYS + 1):
            at = lag + shift
            # (a weekday's level is no weekend's: only days of the row's kind count)
            alike = _weekend(day[rows] - at) == weekend
            inside = (position[rows] >= at) & alike
            best = np.where(inside, np.maximum(best, y[np.maximum(rows - at, 0)]), best)
        reached += best >= halfway
    return reached == MONTHS_BACK


POPULATION_FREE_WEEKS = 6
"""The same-weekday weeks before a judged day whose population days are left out of its
expected value (`_baselines_of_grid`); the older ones count as they are. Every run measures the
population days this far back of each day it judges (`population_shifts`), the first days of a
run (`persistence_days` + 7 before it, judged for the runs of days) included."""


def _expected_without(
    y: np.ndarray,
    position: np.ndarray,
    rows: np.ndarray,
    lags: Sequence[int],
    min_count: int,
    left_out: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(the `rows` that have a `left_out` day among their same-weekday values of the last
    POPULATION_FREE_WEEKS weeks, their median of `y` at `lags` without those days): the
    arithmetic of `_lagged_median` (NaN below `min_count` values)."""
    lag = np.asarray(lags, dtype=np.int64)
    free = lag <= 7 * POPULATION_FREE_WEEKS
    hit = np.zeros(rows.size, dtype=bool)
    for one in lag[free]:
        hit |= (position[rows] >= one) & left_out[np.maximum(rows - one, 0)]
    picked = rows[hit]
    back = picked[:, None] - lag
    w = y.take(back, mode="clip")
    w[(position[picked][:, None] < lag) | (free & left_out.take(back, mode="clip"))] = np.nan
    return picked, _row_medians(w, min_count)


def _baselines_of_grid(
    grid: _DenseGrid,
    start: date,
    end: date,
    settings: UsageSettings,
    population: Populations = None,
    dropped: np.ndarray | None = None,
    units: bool = False,
) -> pl.DataFrame:
    """`usage_baselines` of the grid, less its `dropped` rows (`_LookBackCut`); with `units`,
    each row's unit in `_unit` (`_in_counting_units`: y_expected is in it).

    The statistics are computed on the judged rows (the kept rows and the days before them that
    their runs look back on) in a frame of numbers only; the keys and dates are attached to the
    kept rows alone, so no column is gathered twice."""
    s = settings
    first_judged = start - timedelta(days=s.persistence_days + 7)
    needs_expected = first_judged - timedelta(days=s.scale_days)
    # The two rolling medians, computed only on the rows whose result is used: the expected
    # value from `needs_expected` on (the scale's residuals), the scale from `first_judged` on.
    y = pl.Series(grid.value, dtype=pl.Float64).log1p().to_numpy()
    y_expected = np.full(y.size, np.nan)
    rows = np.flatnonzero(grid.day >= _epoch_day(needs_expected))
    same_weekday = [7 * week for week in range(1, s.baseline_weeks + 1)]
    min_weeks = max(3, s.baseline_weeks // 2)
    y_expected[rows] = _lagged_median(y, grid.position, rows, same_weekday, min_weeks)
    judged_rows = np.flatnonzero(grid.day >= _epoch_day(first_judged))
    on_population, (shift_at, spread_at) = _population_at(
        grid, population, ("population_shift", "population_spread")
    )
    expected_judged = y_expected[judged_rows]
    if on_population.size:
        # A judged day's expected value leaves out the days its whole population moved among
        # its recent same-weekday values: two weeks of holiday in 8 would hold it ~10% low for
        # the next 8 weeks, and every account's return read as a rise. (The scale's residuals
        # keep the plain expected value: a day's run does not measure that far back.)
        left_out = np.zeros(y.size, dtype=bool)
        left_out[on_population] = True
        picked, without = _expected_without(
            y, grid.position, judged_rows, same_weekday, min_weeks, left_out
        )
        # A population day itself keeps the expected value its population's move was measured
        # against (`population_shifts`: the plain one), so that the account's move beyond the
        # population's is measured on one footing: the two differ once a season fills half the
        # baseline's weeks (the fifth week of a school's summer: -0.85 against the plain
        # expected, -1.6 against the one without the season, and every school's day read as a
        # drop).
        keep = left_out[picked]
        at_picked = np.searchsorted(judged_rows, picked)
        expected_judged[at_picked] = np.where(keep, expected_judged[at_picked], without)
    abs_resid = np.abs(y - y_expected)
    # A day its whole population moved says nothing of an account's own day-to-day noise: its
    # residual is left out of the scale (two weeks of holiday in 28 days would double it, and
    # the weeks after would miss real moves), which then needs a week of other days (a quarter
    # of `scale_days`), else it is the scale of all the days, holiday and all (never the
    # counting floor alone). `population_shifts` measures every day a scale reads, in a range
    # and in a day's run alike.
    if on_population.size:
        own_days = abs_resid.copy()
        own_days[on_population] = np.nan
        scale = _series_rolling_median(
            own_days, grid.position, judged_rows, 1, s.scale_days, max(1, s.scale_days // 4)
        )
        too_few = np.flatnonzero(np.isnan(scale))
        # (those days' residuals net of their population's move: weeks of an industry's
        # season, or of its return from it, are the account's noise only in what it moved
        # beyond its cohort - as they are, a return of +300% read as its noise)
        net = abs_resid.copy()
        with np.errstate(invalid="ignore"):
            net[on_population] = np.abs((y - y_expected)[on_population] - shift_at)
        net[np.isinf(net)] = np.nan  # (a void day's: not counted)
        scale[too_few] = _lagged_median(
            net,
            grid.position,
            judged_rows[too_few],
            range(1, s.scale_days + 1),
            s.scale_days // 2,
        )
    else:
        scale = _series_rolling_median(
            abs_resid, grid.position, judged_rows, 1, s.scale_days, s.scale_days // 2
        )
    y_judged = y[judged_rows]
    # On a day its whole population moved (`population_shifts`), an account is judged on its
    # own move beyond the population's, in the population's direction (at most to 0), against
    # the accounts' spread that day when wider than its own scale (how deep one's holiday is
    # differs, `population_spread`); a move against it is judged as on any day (an account
    # that kept working on a holiday is no spike).
    shift = _placed(on_population, shift_at, judged_rows, grid.value.size)
    on_shift = np.flatnonzero(shift)  # (the few rows of population days)
    spread_judged = np.zeros(judged_rows.size)
    if on_shift.size:
        shifted, y_shifted = shift[on_shift], y_judged[on_shift]
        resid = y_shifted - expected_judged[on_shift]
        own = np.where(
            (shifted < 0) & (resid < 0),
            np.minimum(resid - shifted, 0.0),
            np.where((shifted > 0) & (resid > 0), np.maximum(resid - shifted, 0.0), resid),
        )
        # only the rows that moved with their population change (the others keep their bits:
        # a range run holding a population day must give a run of one day's numbers)
        moved = ((shifted < 0) & (resid < 0)) | ((shifted > 0) & (resid > 0))
        expected_judged[on_shift] = np.where(moved, y_shifted - own, expected_judged[on_shift])
        spread = _placed(on_population, spread_at, judged_rows[on_shift], grid.value.size)
        spread_judged[on_shift] = np.where(moved, spread, 0.0)
    # a rise that came at this point of recent months (`_monthly_peak`): on the rows that rose
    # by half the effect size and z_threshold of their scale before its floors (a superset of
    # those that could be spikes: the floors only widen it)
    rise = y_judged - expected_judged
    with np.errstate(invalid="ignore"):
        rising = np.flatnonzero(
            (rise > 0.5 * math.log1p(s.min_effect)) & (rise > s.z_threshold * MAD_TO_SD * scale)
        )
    monthly = np.zeros(judged_rows.size, dtype=bool)
    monthly[rising] = _monthly_peak(
        y, grid.position, grid.day, judged_rows[rising], expected_judged[rising]
    )
    day = grid.day[judged_rows]
    # Rows are sorted by series and date, each series contiguous, so "the previous row of the
    # same series" is a plain shift masked at each series' first rows: no group-by needed.
    # The frame starts at first_judged (or at the series' first day, if later).
    within = np.minimum(grid.position[judged_rows], day - _epoch_day(first_judged))
    frame = pl.DataFrame(
        [
            pl.Series("value", grid.value[judged_rows], dtype=pl.Float64),
            pl.Series(
                "history_days", np.minimum(grid.position[judged_rows], HISTORY_CAP), pl.Int64
            ),
            pl.Series("y_expected", expected_judged, nan_to_null=True),
            pl.Series("population_shift", shift, dtype=pl.Float64),
            pl.Series("_pos", within),
            pl.Series("y", y_judged),
            (pl.Series(scale, nan_to_null=True) * MAD_TO_SD)
            .clip(lower_bound=SCALE_FLOOR)
            .alias("scale"),
            pl.Series("_spread", spread_judged),
            pl.Series("_monthly", monthly),
        ]
    )
    frame = (
        frame.with_columns(pl.col("y_expected").exp().alias("_exp"))
        # Counting noise sets a floor: at an expected value of lambda, a Poisson count has a
        # log-scale sd of about 1/sqrt(lambda + 1); small volumes cannot be judged as precisely.
        .with_columns(
            pl.max_horizontal(pl.col("scale"), pl.col("_exp").sqrt().pow(-1)).alias("scale")
        )
        .with_columns(pl.max_horizontal(pl.col("scale"), pl.col("_spread")).alias("scale"))
        .with_columns(
            ((pl.col("y") - pl.col("y_expected")) / pl.col("scale")).alias("z"),
            (pl.col("_exp") - 1.0).alias("expected"),
        )
        .with_columns(
            pl.when(pl.col("expected") > 0)
            .then(pl.col("value") / pl.col("expected") - 1.0)
            .otherwise(None)
            .alias("rel_change")
        )
    )
    judged = (
        (pl.col("history_days") >= s.min_history_days)
        & (pl.col("expected") >= s.min_expected)
        & pl.col("z").is_not_null()
    )
    direction = (
        pl.when(
            judged
            & (pl.col("z") > s.z_threshold)
            & (pl.col("rel_change") >= s.min_effect)
            & ~pl.col("_monthly")
        )
        .then(1)
        .when(judged & (pl.col("z") < -s.z_threshold) & (pl.col("rel_change") <= -s.min_effect))
        .then(-1)
        .otherwise(0)
        .cast(pl.Int8)
    )

    def previous(column: str, lag: int) -> pl.Expr:
        return pl.when(pl.col("_pos") >= lag).then(pl.col(column).shift(lag))

    frame = frame.with_columns(
        direction.alias("direction"),
        # explicit mean (not rolling_mean): bit-identical however long the run's range is
        pl.mean_horizontal([previous("rel_change", i) for i in range(s.persistence_days)]).alias(
            "run_effect"
        ),
        previous("rel_change", 1).alias("prev_rel_change"),
    )
    kept = (day >= _epoch_day(start)) & (day <= _epoch_day(end))
    if dropped is not None:
        kept &= ~dropped[judged_rows]
    run_days = _run_days(frame["direction"].to_numpy(), within, s.persistence_days + 7)
    kept_rows = judged_rows[kept]
    # only the columns returned are filtered; the bands, needed on the kept rows alone, after
    stats = (
        frame.drop("_pos", "y", "_exp", "_spread", "_monthly")
        .filter(pl.Series(kept))
        .with_columns(
            ((pl.col("y_expected") - s.z_threshold * pl.col("scale")).exp() - 1.0).alias("lower"),
            ((pl.col("y_expected") + s.z_threshold * pl.col("scale")).exp() - 1.0).alias("upper"),
        )
    )
    dates = pl.Series("partition_date", grid.day[kept_rows], dtype=pl.Int32).cast(pl.Date)
    if grid.unit is not None:  # the value and its band in the series' own unit
        unit = pl.Series(grid.units(kept_rows))
        stats = stats.with_columns(pl.col("value", "expected", "lower", "upper") / unit)
    columns = ["y_expected", "population_shift", "scale", "z", "expected", "lower", "upper"]
    return pl.DataFrame(
        [
            grid.keys["customer_id"].gather(grid.series[kept_rows]),
            grid.keys["metric"].gather(grid.series[kept_rows]),
            dates,
            stats["value"],
            dates.dt.weekday().alias("weekday"),
            stats["history_days"],
            *[stats[c] for c in columns],
            stats["rel_change"],
            stats["direction"],
            pl.Series("run_days", run_days[kept], dtype=pl.Int32),
            stats["run_effect"],
            stats["prev_rel_change"],
            *(
                [pl.Series("_unit", np.broadcast_to(grid.units(kept_rows), kept_rows.shape))]
                if units
                else []
            ),
        ]
    ).rechunk()  # one chunk per column: polars' string functions (pl.format) need it


def _run_days(direction: np.ndarray, within: np.ndarray, cap: int) -> np.ndarray:
    """The length of the run of same-direction deviating days ending on each row (0 when it does
    not deviate), capped at `cap` (the same value in range and daily runs). A row continues the
    run of the row before it when that is the previous day of its series (`within` >= 1) and
    deviated the same way: counted over the deviating rows only (a few percent)."""
    out = np.zeros(direction.size, dtype=np.int64)
    deviating = np.flatnonzero(direction)
    if deviating.size:
        later = deviating[1:]
        goes_on = np.zeros(deviating.size, dtype=bool)
        goes_on[1:] = (
            (later - deviating[:-1] == 1)
            & (direction[later] == direction[deviating[:-1]])
            & (within[later] >= 1)
        )
        out[deviating] = _index_since(~goes_on) + 1
    return np.minimum(out, cap)


def evidence_list(*items: pl.Expr) -> pl.Expr:
    """`pl.concat_list(items)` of `evidence_item` structs, built as a fixed-size array turned into
    a list: the same values and dtype, but polars (2.1) concatenates structs into lists row by
    row, 10-20x slower (7 s for the 640k peer-benchmark signals of a year)."""
    return pl.concat_arr(*items).arr.to_list()


def _severity_of_ratio(ratio: pl.Expr) -> pl.Expr:
    """0..1 from a value/expected ratio: halving or doubling = 0.5, 4x either way = 1."""
    return (ratio.clip(lower_bound=1e-3).log().abs() / math.log(4.0)).clip(0.0, 1.0)


def _confidence(z: pl.Expr, history: pl.Expr, z_threshold: float) -> pl.Expr:
    """More history and a larger |z| mean more confidence (0..1)."""
    return (
        (history / HISTORY_CAP).clip(0.0, 1.0) * (z.abs() / (2 * z_threshold)).clip(0.0, 1.0)
    ).clip(0.2, 1.0)


def anomaly_rows(settings: UsageSettings) -> pl.Expr:
    """The `usage_baselines` rows `detect_usage_anomalies` raises a signal on: a run of deviating
    days long enough, or one extreme day for a spike. A row filter only, so that a reader can
    push it into its scan of the stored baselines (~1% of their rows)."""
    s = settings
    sustained = pl.col("run_days").abs() >= s.persistence_days
    # (a direction is only set on a judged row - history and volume, the volume in the units
    # the row was judged in, `_in_counting_units` - and a single spike's z and change pass its
    # bars: the row's `expected`, in its own unit, is not compared again)
    single_spike = (
        (pl.col("direction") > 0)  # (a rise that recurs monthly has none, `_monthly_peak`)
        & (pl.col("rel_change") >= s.min_spike_effect)
        & (
            (pl.col("z") >= s.single_day_z)
            | ((pl.col("run_days") >= 2) & (pl.col("prev_rel_change") >= s.min_spike_effect))
        )
    )
    return (sustained & (pl.col("direction") != 0)) | single_spike


def _fact(value: pl.Expr) -> pl.Expr:
    """A number for the facts: 2 decimals, or 3 significant figures below 1 (a measured
    quantity of 0.004 GB a day is not 0)."""
    return pl.when(value.abs() >= 1).then(value.round(2)).otherwise(value.round_sig_figs(3))


def _counted(count: pl.Expr, noun: str) -> pl.Expr:
    """'1 week', '2 weeks' (evidence text)."""
    return pl.format(
        "{} {}", count, pl.when(count == 1).then(pl.lit(noun)).otherwise(pl.lit(noun + "s"))
    )


def _readable(value: pl.Expr) -> pl.Expr:
    """A number as evidence shows it: whole from 100, one decimal from 1, else 2 significant
    figures (a band of 0.78-1.5 hours is not "0.8-1.5")."""
    size = value.abs()
    return (
        pl.when(size >= 100)
        .then(value.round(0))
        .when(size >= 1)
        .then(value.round(1))
        .otherwise(value.round_sig_figs(2))
    )


def detect_usage_anomalies(
    baselines: pl.DataFrame, settings: UsageSettings, unknown: pl.DataFrame | None = None
) -> pl.DataFrame:
    """usage_spike / usage_drop signals from `usage_baselines` rows. `unknown`: (customer_id,
    metric, date) whose source value was quarantined (null or negative): the grid holds 0 there,
    so a deviation whose days include one is not known to be real and raises nothing."""
    s = settings
    sustained = pl.col("run_days").abs() >= s.persistence_days
    hits = baselines.filter(anomaly_rows(s))
    if unknown is not None and unknown.height and hits.height:
        hits = hits.join(_spanning_unknown_days(hits, unknown), on=SIGNAL_DAY, how="anti")
    if hits.height == 0:
        return conform(hits)
    is_drop = pl.col("direction") < 0
    effect = pl.when(sustained).then(pl.col("run_effect")).otherwise(pl.col("rel_change"))
    pct = (effect * 100).round(0)
    weekday_name = pl.col("partition_date").dt.strftime("%A")
    comparison = pl.format(
        "{} baseline {} (expected range {}–{})",
        weekday_name,
        _readable(pl.col("expected")),
        _readable(pl.col("lower").clip(lower_bound=0)),
        _readable(pl.col("upper")),
    )
    # on a day the whole population moved its way, the baseline moved with it: say so
    shift = pl.col("population_shift")
    with_everyone = shift.is_finite() & (shift * pl.col("direction") > 0)
    comparison = (
        pl.when(with_everyone)
        .then(
            pl.format(
                "{}, moved with the accounts that moved together that day (all, or its "
                "industry or region): their median at {}% of its usual",
                comparison,
                (shift.exp() * 100).round(0).cast(pl.Int64),
            )
        )
        .otherwise(comparison)
    )
    return conform(
        hits.with_columns(
            pl.when(is_drop)
            .then(pl.lit("usage_drop"))
            .otherwise(pl.lit("usage_spike"))
            .alias("type"),
            pl.col("metric").alias("subject"),
            _severity_of_ratio(1.0 + effect).alias("severity"),
            _confidence(pl.col("z"), pl.col("history_days"), s.z_threshold).alias("confidence"),
            evidence_list(
                evidence_item(pl.col("metric"), pl.col("value"), comparison, "usage_daily"),
                evidence_item(
                    pl.format("{} change vs baseline (%)", pl.col("metric")),
                    pct,
                    pl.when(pl.col("run_days").abs() > 1)
                    .then(pl.format("over the last {} days", pl.col("run_days").abs()))
                    .otherwise(pl.lit("on the day")),
                    "usage_daily",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("metric"),
                _fact(pl.col("value")).alias("value"),
                _fact(pl.col("expected")).alias("expected"),
                _fact(pl.col("lower").clip(lower_bound=0)).alias("lower"),
                _fact(pl.col("upper")).alias("upper"),
                pl.col("z").round(2),
                pct.alias("change_pct"),
                pl.col("run_days").abs().clip(1).alias("days"),
                sustained.alias("run_average"),  # change_pct is the run's, else the day's
                weekday_name.alias("weekday"),
                pl.when(with_everyone)
                .then((shift.exp() * 100).round(0).cast(pl.Int64))
                .alias("everyone_pct"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


SIGNAL_DAY = [*KEYS, "partition_date"]

YOUNG_MIN_DAYS = 21
"""Days a series needs before its weeks are read (`_young_drops_of_grid`): the last week and
two before it."""


def young_days(settings: UsageSettings) -> int:
    """Days on record until which a series is judged by its weeks too (`_young_drops_of_grid`):
    `min_history_days` before the daily rule judges it, and `scale_days` more until its daily
    scale stands wholly on days it judged. Before then a fall the weekly rule saw is among the
    scale's residuals and reads as the series' own noise (trial 8, a 56-day extract: on day 42
    a dau at -83% had a scale 14x a clean account's, z -0.5, and five accounts still at 10%
    lost their open insights)."""
    return settings.min_history_days + settings.scale_days


def _young_drops_of_grid(
    grid: _DenseGrid,
    start: date,
    end: date,
    settings: UsageSettings,
    population: Populations = None,
    dropped: np.ndarray | None = None,
) -> pl.DataFrame:
    """usage_drop signals of series too young for a baseline (`UsageSettings.young_drop`): a new
    account whose onboarding stalled, a metric first used and given up. Its last 7 days against
    its best week so far (7-day sums ending 1, 2, ... weeks back, wholly inside the series) and
    their median (half as far below it), and
    its last 3 days against the same weekdays of that week. Read only at the rows of [start,
    end] whose series is that young: a few rows, gathered at their lags (every sum added in the
    same order, so a range gives what each day gives alone). Not on `dropped` rows."""
    s = settings
    position = grid.position
    rows = _young_rows(grid, start, end, young_days(s))
    if dropped is not None:
        rows = rows[~dropped[rows]]
    if s.young_drop <= 0 or rows.size == 0:
        return conform(pl.DataFrame())
    value = grid.value

    def days_total(at: np.ndarray, days: int) -> np.ndarray:
        total = value[at].copy()
        for lag in range(1, days):
            total += value[at - lag]
        return total

    last_week = days_total(rows, 7)
    weeks_back = (position[rows] - 6) // 7  # whole weeks before the last one
    best = np.full(rows.size, -np.inf)
    best_lag = np.zeros(rows.size, dtype=np.int64)
    earlier = np.full((rows.size, int(weeks_back.max())), np.nan)
    for k in range(1, int(weeks_back.max()) + 1):
        inside = weeks_back >= k
        week = np.where(inside, days_total(np.where(inside, rows - 7 * k, rows), 7), -np.inf)
        earlier[:, k - 1] = np.where(inside, week, np.nan)
        better = week > best
        best = np.where(better, week, best)
        best_lag = np.where(better, k, best_lag)
    # ... and its weeks' median: after a one-week spike the best week is the spike, and an
    # ordinary week read as a fall to half (trial 8: 2 such false drops); a stall falls below
    # 1 - young_drop / 2 (three quarters) of its typical earlier week as well
    typical = _row_medians(earlier, 2)
    last3 = days_total(rows, 3)
    best3 = days_total(rows - 7 * best_lag, 3)
    # a holiday (its population moving down, or a day not delivered) in the last week is no
    # account's stall: such rows are read again once the week is past it
    at, (shift_at,) = _population_at(grid, population, ("population_shift",))
    down = np.zeros(value.size, dtype=bool)
    down[at[shift_at < 0]] = True
    moved = np.zeros(value.size, dtype=bool)
    moved[at] = True
    holiday = down[rows].copy()
    for lag in range(1, 7):
        holiday |= down[rows - lag]
    keep = 1.0 - s.young_drop
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.log1p(last_week) - np.log1p(best)) / np.maximum(
            np.sqrt(2.0) * _young_weekly_scale(grid, rows, moved),
            np.sqrt(1.0 / (last_week + 1.0) + 1.0 / (best + 1.0)),  # counting noise
        )
    hit = (
        (best >= 7 * s.min_expected)
        & (last_week <= keep * best)
        & (last_week <= (1.0 - s.young_drop / 2) * typical)
        & (last3 <= keep * best3)
        & (z <= _best_of_weeks_z(s.trend_z, weeks_back))
        & ~holiday
    )
    if not hit.any():
        return conform(pl.DataFrame())
    picked = rows[hit]
    hits = grid.frame(picked).with_columns(
        pl.Series("last_week", last_week[hit]),
        pl.Series("best_week", best[hit]),
        pl.Series("weeks_earlier", best_lag[hit], dtype=pl.Int64),
        pl.Series("days_on_record", position[picked] + 1, dtype=pl.Int64),
        pl.Series("z", z[hit]),
        pl.Series("_unit", np.broadcast_to(grid.units(picked), picked.shape), pl.Float64),
        pl.Series("_level", _level_rows(grid, picked)),
    )
    return _young_drops(hits.rename({"date": "partition_date"}), s)


def _best_of_weeks_z(z: float, weeks: np.ndarray) -> np.ndarray:
    """The (negative) z a last week must reach below the best of `weeks` earlier weeks to be as
    unlikely as `z` below one week (Bonferroni over the weeks the best was picked from)."""
    normal = NormalDist()
    tail = normal.cdf(-z)
    bound = {k: normal.inv_cdf(tail / k) for k in np.unique(weeks).tolist()}
    return np.vectorize(bound.__getitem__, otypes=[float])(weeks)


def _young_rows(grid: _DenseGrid, start: date, end: date, history_days: int) -> np.ndarray:
    """The rows of [start, end] at positions `YOUNG_MIN_DAYS` - 1 to `history_days` - 1 of
    their series, ascending: taken from the series that began late enough (one pass over the
    grid for the series' first rows, not five over every row: 0.25 -> 0.1 s a 100k day)."""
    first, last = _epoch_day(start), _epoch_day(end)
    starts = np.flatnonzero(grid.position == 0)
    began = grid.day[starts]
    starts = starts[(began > first - history_days) & (began <= last - (YOUNG_MIN_DAYS - 1))]
    offsets = np.arange(YOUNG_MIN_DAYS - 1, history_days)
    if starts.size == 0 or offsets.size == 0:
        return np.zeros(0, dtype=np.int64)
    rows = (starts[:, None] + offsets[None, :]).ravel()
    series = np.repeat(grid.series[starts], offsets.size)
    inside = rows < grid.value.size
    rows, series = rows[inside], series[inside]
    kept = (grid.series[rows] == series) & (grid.day[rows] >= first) & (grid.day[rows] <= last)
    return rows[kept]


def without_unknown_weeks(signals: pl.DataFrame, unknown: pl.DataFrame) -> pl.DataFrame:
    """The weekly signals less the young series' drops (`_young_drops_of_grid`) whose last 7
    days hold a day whose source value was quarantined (null or negative: unknown, not 0), as
    `detect_usage_anomalies` leaves out a run of days holding one."""
    drops = signals.filter(pl.col("type") == "usage_drop")
    if unknown.height == 0 or drops.height == 0:
        return signals
    weeks = drops.select(
        "customer_id",
        pl.col("subject").alias("metric"),
        "partition_date",
        pl.lit(7).alias("run_days"),
    )
    spanning = _spanning_unknown_days(weeks, unknown).rename({"metric": "subject"})
    return signals.join(
        spanning.with_columns(pl.lit("usage_drop").alias("type")),
        on=["customer_id", "subject", "partition_date", "type"],
        how="anti",
        maintain_order="left",
    )


def _young_weekly_scale(grid: _DenseGrid, rows: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """At each of `rows` (series at least `YOUNG_MIN_DAYS` old): the log-scale sd of a week sum
    of its series, from its own days before its last week - the robust sd (1.4826 x MAD) of its
    day-over-same-weekday log changes, less the 2 a change holds, over 7 days. A ramp-up's
    steady rise is their median, not their spread; the weekday shape cancels out. A change to
    or from a day its population `moved` (a holiday) is not the account's noise: left out,
    while 7 changes are left."""
    position = grid.position[rows]
    lags = np.arange(7, int(position.max()) - 6)
    at = rows[:, None] - lags[None, :]
    inside = lags[None, :] <= position[:, None] - 7  # the change's earlier day in the series
    at = np.where(inside, at, rows[:, None])
    before = at - np.where(inside, 7, 0)
    # (log1p of the gathered days only: the young rows are few, the grid is every row)
    change = np.where(inside, np.log1p(grid.value[at]) - np.log1p(grid.value[before]), np.nan)

    def robust_sd(changes: np.ndarray) -> np.ndarray:
        middle = _row_medians(changes.copy(), 7)
        return MAD_TO_SD * _row_medians(np.abs(changes - middle[:, None]), 7)

    spread = robust_sd(np.where(moved[at] | moved[before], np.nan, change))
    # (fewer than 7 changes of its own days: the spread of all, holiday and all - wider)
    too_few = np.isnan(spread)
    spread[too_few] = robust_sd(change[too_few])
    return spread / math.sqrt(2.0) / math.sqrt(7.0)


def _young_drops(hits: pl.DataFrame, settings: UsageSettings) -> pl.DataFrame:
    """The usage_drop signals of `_young_drops_of_grid`'s rows: the evidence names the best week
    and how young the series is, the facts say so to the narrative (`young_series`)."""
    ratio = pl.col("last_week") / pl.col("best_week")
    pct = ((ratio - 1.0) * 100).round(0)
    comparison = pl.format(
        "best week so far: {}{} ({} earlier), of {} days on record",
        _shown(pl.col("best_week")),
        pl.when(_per_day()).then(pl.lit(" a day")).otherwise(pl.lit("")),
        _counted(pl.col("weeks_earlier"), "week"),
        pl.col("days_on_record"),
    )
    return conform(
        hits.with_columns(
            pl.lit("usage_drop").alias("type"),
            pl.col("metric").alias("subject"),
            _severity_of_ratio(ratio).alias("severity"),
            (pl.col("z").abs() / (2 * settings.trend_z)).clip(0.2, 1.0).alias("confidence"),
            evidence_list(
                evidence_item(
                    _per_week("{} over the last 7 days"),
                    _shown(pl.col("last_week")),
                    comparison,
                    "usage_daily",
                ),
                evidence_item(
                    pl.format("{} change vs its best week (%)", pl.col("metric")),
                    pct,
                    pl.format(
                        "judged week against week until the series has {} days on record",
                        young_days(settings),
                    ),
                    "usage_daily",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("metric"),
                *_weeks_shown(last_week=pl.col("last_week"), best_week=pl.col("best_week")),
                pl.col("weeks_earlier"),
                pl.col("days_on_record"),
                pct.alias("change_pct"),
                pl.lit(True).alias("young_series"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def _spanning_unknown_days(hits: pl.DataFrame, unknown: pl.DataFrame) -> pl.DataFrame:
    """The SIGNAL_DAY keys of `hits` whose days (the run of deviating days ending on the
    partition date, or that day alone) include an unknown day of their series."""
    span = pl.col("run_days").abs().clip(1)
    return (
        hits.select(*SIGNAL_DAY, span.alias("_days"))
        .join(unknown, on=KEYS, how="inner")
        .filter(
            (pl.col("date") <= pl.col("partition_date"))
            & (pl.col("date") > pl.col("partition_date") - pl.duration(days=pl.col("_days")))
        )
        .select(SIGNAL_DAY)
        .unique()
    )


def within_series(window: pl.Expr, reach: int) -> pl.Expr:
    """A rolling `window` over a grid's rows (contiguous and daily per series, the row's
    position in its series in `_pos`), kept where it reaches back `reach` rows without leaving
    the series, null elsewhere: the `.over(series)` result without a group-by."""
    return pl.when(pl.col("_pos") >= reach).then(window)


def weekly_trend_stats(
    usage: pl.DataFrame,
    start: date,
    end: date,
    settings: UsageSettings,
    churned: pl.DataFrame | None = None,
    population: Populations = None,
    lookback_days: int | None = None,
) -> pl.DataFrame:
    """Per customer x metric x day in [start, end]: week sums ending on that day, the run of
    consecutive rises/falls, and the log-linear slope with its t-statistic; the trend test's
    statistics (`_trend_test_stats`) of the week sums with `population` days taken out.
    `lookback_days`: as in `usage_baselines`."""
    judge = _judged(usage, start, end, settings, churned, population, lookback_days)
    return judge(_trend_stats_of_grid)


SEASON_DAYS = 3
"""Population days in the last 3 weeks from which their weekly shape is not read (a holiday
season; `_trend_stats_of_grid`)."""

USUAL_WEEKS = 4
"""The same-weekday weeks whose median is an account's usual level on a population day in the
trend test's weeks (`_test_weeks`): the test reaches 8 weeks back, and those 4 more stay within
what every run of a day reads (`usage_reach_days`)."""


def _test_weeks(
    grid: _DenseGrid, population: Populations, w0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The week sums the trend test compares: 7-day sums of the grid with each population day
    on which the account moved with its population counted at the account's usual level (the
    median of its same weekday over the 4 weeks before, `USUAL_WEEKS`) moved by its own move
    beyond the population's less the accounts' spread that day (`population_spread`; where its
    usual is unknown, its value less the population's shift), and each row's count of such
    days in its week. A holiday of two weeks is no account's decline, but it is two low weeks
    at the end of every account's window: without this, 1 account in 9 of a noisy book had a
    declining_usage after one (tested); and how deep an account's holiday is (25% of usual, or
    60%) is not its news either, which the population's shift alone left in (4.6 false declines
    per 100 accounts a week of a two-week holiday of such depths, trial 5), while an account
    that fell far beyond everyone still shows. A day the account moved against its population
    (it kept working) counts as it was.

    Summed as seven terms in a fixed order, not as a running sum: adjusted values are not whole
    numbers, and a running sum's rounding would depend on where the grid starts, which a range
    run and a day's run do not share. NaN where the week is not wholly in the series. Also
    each row's count of void days in its week.

    `w0`: the grid's own week sums (`trailing_sums` of its values), which these are but in the
    weeks holding a population day: only those are summed again, in the same order."""
    at, (shift_at, spread_at) = _population_at(
        grid, population, ("population_shift", "population_spread")
    )
    shift = _placed(at, shift_at, None, grid.value.size)
    moved = shift != 0
    if not moved.any():
        none = np.zeros(grid.value.size, dtype=np.int16)
        return w0, none, none
    values = grid.value.copy()
    # A void day (shift -inf, `population_shifts`) is not counted: a week holding some is its
    # other days' sum scaled to seven (NaN when all seven are void).
    void = np.isneginf(shift)
    values[void] = 0.0
    on = np.flatnonzero(moved & ~void)
    y = pl.Series(grid.value, dtype=pl.Float64).log1p().to_numpy()
    usual = _lagged_median(y, grid.position, on, [7 * w for w in range(1, USUAL_WEEKS + 1)], 2)
    moved_by = y[on] - usual
    with_it = ((shift[on] < 0) & (moved_by < 0)) | ((shift[on] > 0) & (moved_by > 0))
    # its own move beyond the population's, shrunk by the accounts' spread that day
    own = moved_by - shift[on]
    spread = _placed(at, spread_at, on, grid.value.size)
    # (the non-negative garrote: a move within the spread is none, one far beyond it nearly
    # all kept)
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = np.where(np.abs(own) > spread, own - spread**2 / own, 0.0)
    # (its usual unknown - a young series: less the shift; a day without usage stays one)
    unknown = np.isnan(usual) & (values[on] > 0)
    values[on] = np.where(
        with_it,
        np.expm1(usual + kept),
        np.where(unknown, np.expm1(y[on] - shift[on]), values[on]),
    )
    scaled = np.zeros(values.size, dtype=bool)
    scaled[on] = True
    days = moved.astype(np.int16)
    void_days = void.astype(np.int16)
    # the weeks holding a scaled or void day: the only sums that differ from w0
    touched = scaled | void
    for lag in range(1, 7):
        days[lag:] += moved[:-lag]
        void_days[lag:] += void[:-lag]
        touched[lag:] |= scaled[:-lag] | void[:-lag]
    touched = np.flatnonzero(touched & (grid.position >= 6))  # (NaN, as in w0, elsewhere)
    if touched.size * 4 > values.size:
        sums = trailing_sums(values, grid.position, 7)
    else:  # summed again in the order `trailing_sums` adds them
        week = values[touched]
        for lag in range(1, 7):
            week += values[touched - lag]
        sums = w0.copy()
        sums[touched] = week
    if void.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            sums = np.where(void_days > 0, sums * 7.0 / (7 - void_days), sums)
    whole = grid.position >= 6
    return sums, np.where(whole, days, 0), np.where(whole, void_days, 0)


def _weeks_back(
    sums: np.ndarray, position: np.ndarray, rows: np.ndarray, first: int, n: int
) -> pl.Series:
    """At `rows`: the total of the `n` week sums ending `first`, `first` + 1, ... weeks back,
    added in that order (see `trailing_sums`); null where they are not wholly in the series."""
    return _where_whole(*_weeks_total(sums, position, rows, first, n))


def _where_whole(total: np.ndarray, whole: np.ndarray) -> pl.Series:
    """`total` where `whole`, null elsewhere (a NaN total stays NaN)."""
    return (
        pl.DataFrame({"total": total, "whole": whole})
        .select(pl.when("whole").then("total"))
        .to_series()
    )


def _weeks_total(
    sums: np.ndarray, position: np.ndarray, rows: np.ndarray, first: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """`_weeks_back` as arrays: the totals, and where they are wholly in the series."""
    if rows.size * 4 >= sums.size:  # most of the grid (a range): whole shifted arrays
        total = np.full(sums.size, np.nan)
        total[7 * first :] = sums[: _kept(sums.size, 7 * first)]
        for i in range(first + 1, first + n):
            total[7 * i :] += sums[: _kept(sums.size, 7 * i)]
        total = total[rows]
    else:  # a day or a few: only their weeks, added in the same order
        total = sums[np.maximum(rows - 7 * first, 0)]
        for i in range(first + 1, first + n):
            total += sums[np.maximum(rows - 7 * i, 0)]
    return total, position[rows] >= 7 * (first + n) - 1


def _trend_stats_of_grid(
    grid: _DenseGrid,
    start: date,
    end: date,
    settings: UsageSettings,
    only_candidates: bool = False,
    population: Populations = None,
    dropped: np.ndarray | None = None,
) -> pl.DataFrame:
    """`weekly_trend_stats` of the grid; with `only_candidates`, only of the rows that could
    become a signal (`_trend_candidates`): the same signals, without the weekly scale's rolling
    median and the wide frame for the rows no test could pass. Not on `dropped` rows."""
    s = settings
    k = s.trend_weeks
    kd = s.trend_test_weeks
    n_weeks = max(k, kd)
    week = [f"w{i}" for i in range(n_weeks)]  # w0 = the 7 days ending on D, w1 the week before
    log_week = [f"_log_w{i}" for i in range(n_weeks)]  # log1p of each
    # Rolling sums need every day of a series; everything else only the rows of [start, end]
    # (`wanted`), so those are taken out first and the week sums gathered at their lags.
    # ... and of those only the rows with all k weeks inside their series (the others would be
    # dropped for a missing week sum: w_i needs 7 i + 7 days of history)
    wanted = np.flatnonzero(
        (grid.day >= _epoch_day(start))
        & (grid.day <= _epoch_day(end))
        & (grid.position >= 7 * (k - 1) + 6)
        & (True if dropped is None else ~dropped)
    )
    weekend_day = _weekend(grid.day)
    w0 = trailing_sums(grid.value, grid.position, 7)  # NaN where the series is shorter than a week
    we7 = trailing_sums(np.where(weekend_day, grid.value, 0.0), grid.position, 7)
    test_w0, moved_days, void_days = _test_weeks(grid, population, w0)
    # A new weekly shape is not read from the last 3 weeks when they hold a void day, or a
    # holiday season (SEASON_DAYS population days or more): those are most often weekdays, so
    # the weekend's share of such weeks rises for everyone (a lone holiday moves it by a point)
    shape_unread = (_last_weeks(void_days, grid.position, 3) > 0) | (
        _last_weeks(moved_days, grid.position, 3) >= SEASON_DAYS
    )
    candidates = None
    if only_candidates:
        candidates = _trend_candidates(w0, we7, test_w0, shape_unread, wanted, grid.position, s)
    if candidates is not None:
        wanted, picked = candidates
    else:  # the last 3 weeks and the 8 before them, at the wanted rows
        if only_candidates:
            wanted = wanted[np.minimum(grid.position[wanted], HISTORY_CAP) >= 7 * k]
        picked = pl.DataFrame(
            [
                (_weeks_back(w0, grid.position, wanted, 3, 8) / 8.0).alias("prior_week"),
                _weeks_back(w0, grid.position, wanted, 0, 3).alias("recent3"),
                _weeks_back(we7, grid.position, wanted, 0, 3).alias("_we_recent"),
                _weeks_back(we7, grid.position, wanted, 3, 8).alias("_we_prior"),
                (_where_whole(*_level_prior(w0, test_w0, grid.position, wanted, kd)) / 8.0)
                .fill_nan(None)
                .alias("level_prior_week"),
                _weeks_back(test_w0, grid.position, wanted, 0, 3)
                .fill_nan(None)
                .alias("level_recent3"),
            ]
        )
    test_week = [f"_test_w{i}" for i in range(kd)]
    test_log_week = [f"_test_log_w{i}" for i in range(kd)]
    test_weeks = [_week_at(test_w0, grid.position, wanted, i) for i in range(kd)]

    # log1p of every week sum, once (polars' log1p, as the rest); the log week sums of the
    # regression and the week-to-week changes below are all gathered from it.
    log_w0 = pl.Series(w0).log1p().to_numpy()  # NaN where w0 is

    # The account's own week-to-week variability: robust scale of past weekly log changes,
    # taken from before the current run could have started (shifted by the trend window).
    # The week before is NaN in a series' first week (position < 7).
    log_w1 = np.where(grid.position >= 7, np.roll(log_w0, 7), np.nan)
    wow = np.abs(log_w0 - log_w1)
    scale = pl.Series(
        _series_rolling_median(wow, grid.position, wanted, 7 * (k - 1), 56, 28), nan_to_null=True
    )
    share_sd = _weekly_share_sd(w0, we7, grid.position, wanted)
    frame = (
        grid.frame(wanted)
        .with_columns(
            pl.Series("w0", w0[wanted], nan_to_null=True),
            pl.Series("history_days", np.minimum(grid.position[wanted], HISTORY_CAP)),
            # every wanted row has its k weeks inside its series (plain gathers at the lags);
            # a decline window longer than that is null where the series is younger
            *[
                pl.Series(week[i], _week_at(w0, grid.position, wanted, i))
                for i in range(1, n_weeks)
            ],
            *[
                pl.Series(log_week[i], _week_at(log_w0, grid.position, wanted, i))
                for i in range(n_weeks)
            ],
            (scale * MAD_TO_SD).clip(lower_bound=SCALE_FLOOR).alias("weekly_scale"),
            pl.Series("weekend_share_sd", share_sd, nan_to_null=True),
            _before_trend(w0, grid.position, wanted, k),
            picked["recent3"],
            picked["prior_week"],
            picked["level_recent3"],
            picked["level_prior_week"],
            *[test_weeks[i].alias(f"level_w{i}") for i in range(3)],
            pl.Series("shape_unread", shape_unread[wanted]),
            pl.Series("_unit", np.broadcast_to(grid.units(wanted), wanted.shape), pl.Float64),
            # the candidates' grid rows (for `_with_level`: only their signals are asked), or
            # every row's level (the full statistics, to compare against)
            pl.Series("_row", wanted)
            if only_candidates
            else pl.Series("_level", _level_rows(grid, wanted)),
            picked["_we_recent"],
            picked["_we_prior"],
            *[w.alias(name) for w, name in zip(test_weeks, test_week, strict=True)],
            *[w.log1p().alias(name) for w, name in zip(test_weeks, test_log_week, strict=True)],
            pl.sum_horizontal([_week_at(moved_days, grid.position, wanted, i) for i in range(kd)])
            .cast(pl.Int32)
            .alias("trend_population_days"),
        )
        .with_columns(
            pl.when(pl.col("recent3") > 0)
            .then(pl.col("_we_recent") / pl.col("recent3"))
            .alias("weekend_share"),
            pl.when(pl.col("prior_week") > 0)
            .then(pl.col("_we_prior") / (8.0 * pl.col("prior_week")))
            .alias("prior_weekend_share"),
        )
    )
    if frame.height == 0:
        return frame.drop(
            "value", "_we_recent", "_we_prior", *log_week, *test_week, *test_log_week
        ).rename({"date": "partition_date"})
    # Consecutive rises counted back from the latest week.
    rises = pl.lit(0, dtype=pl.Int32)
    still_rising = pl.lit(True)
    for i in range(k - 1):
        still_rising = still_rising & (pl.col(week[i]) > pl.col(week[i + 1]))
        rises = rises + still_rising.cast(pl.Int32)
    # OLS of log1p(week sum) on week index x = 0 (oldest) .. k-1 (latest).
    xs = [float(k - 1 - i) for i in range(k)]
    x_mean = sum(xs) / k
    sxx = sum((x - x_mean) ** 2 for x in xs)
    ys = [pl.col(w) for w in log_week[:k]]
    y_mean = pl.sum_horizontal(ys) / k
    slope = pl.sum_horizontal([(x - x_mean) * y for x, y in zip(xs, ys, strict=True)]) / sxx
    frame = frame.with_columns(
        rises.alias("weeks_up"), *_trend_test_stats(test_week, test_log_week)
    )
    frame = frame.with_columns(slope.alias("slope"), y_mean.alias("_ymean"))
    resid_ss = pl.sum_horizontal(
        [
            (y - (pl.col("_ymean") + pl.col("slope") * (x - x_mean))) ** 2
            for x, y in zip(xs, ys, strict=True)
        ]
    )
    se = (resid_ss / (k - 2) / sxx).sqrt().clip(lower_bound=1e-6)
    run_weeks = pl.col("weeks_up")

    def run_base_of(columns: list[str]) -> pl.Expr:
        """The column of the week the run started from (the oldest when no run)."""
        return pl.coalesce(
            [pl.when(run_weeks == n).then(pl.col(columns[n])) for n in range(1, k)]
            + [pl.col(columns[k - 1])]
        )

    run_base = run_base_of(week)
    return (
        frame.with_columns(
            (pl.col("slope") / se).alias("t"),
            ((pl.col(log_week[0]) - run_base_of(log_week)) / pl.col("weekly_scale")).alias("run_z"),
            pl.when(run_base > 0).then(pl.col("w0") / run_base - 1.0).alias("run_change"),
            run_base.alias("run_base"),
            (pl.col("slope").exp() - 1.0).alias("weekly_rate"),
            (pl.col("decline_log_change") / pl.col("weekly_scale")).alias("decline_z"),
        )
        .drop("_ymean", "value", "_we_recent", "_we_prior", *log_week, *test_week, *test_log_week)
        .rename({"date": "partition_date"})
        .rechunk()  # one chunk per column (see usage_baselines)
    )


def _week_at(sums: np.ndarray, position: np.ndarray, wanted: np.ndarray, lag: int) -> pl.Series:
    """The week sum ending `lag` weeks before each wanted row; null where that week is not
    (wholly) inside the row's series."""
    inside = position[wanted] >= 7 * lag + 6
    values = np.where(inside, sums[np.maximum(wanted - 7 * lag, 0)], np.nan)
    return pl.Series(values, nan_to_null=True)


def _week_pairs(weeks: int) -> list[tuple[int, int]]:
    """(later, earlier) week indices of every pair of weeks (index 0 = the latest week)."""
    return [(i, j) for i in range(weeks) for j in range(i + 1, weeks)]


def _trend_test_stats(week: list[str], log_week: list[str]) -> list[pl.Expr]:
    """The trend test's statistics over the given weeks (latest first): the pairs of weeks
    lower (higher) later, Mann-Kendall's S (falls minus rises), and the weekly average of the
    window's last two weeks and of its first two, with the log change between them (the
    effect: a line fitted through a step would make a 20% step read as a 40% slide)."""
    pairs = _week_pairs(len(week))
    falls = pl.sum_horizontal(
        [(pl.col(week[i]) < pl.col(week[j])).cast(pl.Int32) for i, j in pairs]
    )
    rises = pl.sum_horizontal(
        [(pl.col(week[i]) > pl.col(week[j])).cast(pl.Int32) for i, j in pairs]
    )
    log_change = (
        pl.col(log_week[0]) + pl.col(log_week[1]) - pl.col(log_week[-1]) - pl.col(log_week[-2])
    ) / 2
    complete = pl.col(week[-1]).is_not_null()  # every week of the window in the series
    return [
        pl.when(complete).then(falls).alias("decline_pairs"),
        pl.when(complete).then(rises).alias("rise_pairs"),
        pl.when(complete).then(falls - rises).alias("decline_s"),
        ((pl.col(week[0]) + pl.col(week[1])) / 2).alias("decline_recent"),
        ((pl.col(week[-1]) + pl.col(week[-2])) / 2).alias("decline_base"),
        log_change.alias("decline_log_change"),
    ]


PRIOR_WEEKS = 8
"""The weeks before the last 3 that a new pattern is compared with."""

BEFORE_TREND_WEEKS = 6
"""The weeks before the `trend_weeks` a rise is fitted on that say where usage stood before it
began: an adoption trend must end above their median (`detect_usage_trends`)."""


def _before_trend(
    w0: np.ndarray, position: np.ndarray, wanted: np.ndarray, first: int
) -> pl.Series:
    """At the wanted rows: the median of the BEFORE_TREND_WEEKS week sums ending `first`,
    `first` + 1, ... weeks back, null with fewer than half of them inside the series."""
    weeks = np.stack(
        [
            _week_at(w0, position, wanted, lag).to_numpy()  # (null: NaN)
            for lag in range(first, first + BEFORE_TREND_WEEKS)
        ],
        axis=1,
    )
    median = _row_medians(weeks, BEFORE_TREND_WEEKS // 2)
    return pl.Series("before_trend_week", median, nan_to_null=True)


def _weekly_share_sd(
    w0: np.ndarray, we7: np.ndarray, position: np.ndarray, wanted: np.ndarray
) -> np.ndarray:
    """At `wanted`: the standard deviation of the weekend share of each of the 8 weeks before
    the last 3 (week sums ending 21, 28, ... 70 days back, within the series; NaN below 4 such
    weeks). Usage is shared by a day's people - a busy Saturday is busy for all of them - so
    the share moves from week to week far more than a binomial count of uses would say."""
    shares = np.full((wanted.size, PRIOR_WEEKS), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(PRIOR_WEEKS):
            lag = 21 + 7 * i
            rows = np.maximum(wanted - lag, 0)
            inside = position[wanted] - lag >= 6  # the whole week within the series
            total = w0[rows]
            shares[:, i] = np.where(inside & (total > 0), we7[rows] / total, np.nan)
    count = np.sum(~np.isnan(shares), axis=1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, as intended
        sd = np.nanstd(shares, axis=1, ddof=1)
    return np.where(count >= 4, sd, np.nan)


def _trend_candidates(
    w0: np.ndarray,
    we7: np.ndarray,
    test_w0: np.ndarray,
    shape_unread: np.ndarray,
    wanted: np.ndarray,
    position: np.ndarray,
    settings: UsageSettings,
    chunk: int = 1 << 16,
) -> tuple[np.ndarray, pl.DataFrame] | None:
    """Which `wanted` rows pass the cheap preconditions of `detect_usage_trends` (a superset of
    the rows it can keep): enough history, and either `trend_consecutive_weeks` week sums in a
    row rising (falling), or - for a new pattern - enough prior volume, still in use, and the
    last 3 weeks all on one side of the prior weeks or the weekend share moved. The thresholds
    are loosened by a rounding's width, so that a row on the edge is kept, never lost; the
    tests of t, z and the scales are left to `detect_usage_trends`. Only these rows need the
    weekly scale's rolling median: in noise, some 10% of them.

    Some 40 array operations a row, made on chunks of rows that stay in the cache (a year's
    range has millions of wanted rows), on a thread per core; each row's result is its own.
    The sums of the last 3 weeks and of the 8 before them (of `w0` and of the weekend sums
    `we7`) are taken in the chunks too, as `_weeks_back` adds them, and kept at the candidates
    for the frame (prior_week, recent3, _we_recent, _we_prior).

    Returns the candidate rows (of `wanted`) and their sums; None when every row with enough
    history is one (`trend_consecutive_weeks` <= 0)."""
    s = settings
    enough = np.minimum(position[wanted], HISTORY_CAP) >= 7 * s.trend_weeks
    if s.trend_consecutive_weeks <= 0:
        return None
    kept = np.zeros(wanted.size, dtype=bool)
    sums_of: dict[int, list[np.ndarray]] = {}  # chunk -> the sums at its candidates

    def one(begin: int) -> None:
        rows = slice(begin, begin + chunk)
        at = wanted[rows]
        # A null sum (too little history) is NaN here and fails every comparison, as null does
        # in polars. A NaN sum (a NaN usage value, which the contract rejects at the source)
        # compares as the largest number in polars, so such rows are kept, not judged here.
        raw = [_weeks_total(w0, position, at, 3, 8), _weeks_total(w0, position, at, 0, 3)]
        raw += [_weeks_total(we7, position, at, 0, 3), _weeks_total(we7, position, at, 3, 8)]
        not_a_number = np.logical_or.reduce([whole & np.isnan(total) for total, whole in raw])
        # ... and the level test's prior and last 3 weeks (`_level_prior`; a week of void days
        # only is unknown: null, not NaN)
        level = [
            _level_prior(w0, test_w0, position, at, s.trend_test_weeks),
            _weeks_total(test_w0, position, at, 0, 3),
        ]
        picked, wholes = [], []
        for total, whole in raw + level:
            total[~whole] = np.nan
            picked.append(total)
            wholes.append(whole)
        picked[0] /= 8.0  # the prior week
        picked[4] /= 8.0  # ... and as the level test counts it (population days at their level)
        ours = enough[rows] & (
            not_a_number
            | _moving_or_pattern(w0, test_w0, shape_unread, position, at, tuple(picked), s)
        )
        kept[rows] = ours
        sums_of[begin] = [a[ours] for a in (*picked, *wholes)]

    for_each_chunk(one, range(0, wanted.size, chunk), "trend")
    names = ["prior_week", "recent3", "_we_recent", "_we_prior"]
    names += ["level_prior_week", "level_recent3"]
    if not sums_of:
        return wanted[kept], pl.DataFrame(schema=dict.fromkeys(names, pl.Float64))
    columns = [np.concatenate(c) for c in zip(*(sums_of[b] for b in sorted(sums_of)), strict=True)]
    n = len(names)
    picked = pl.DataFrame(
        [
            _where_whole(total, whole).alias(name)
            for name, total, whole in zip(names, columns[:n], columns[n:], strict=True)
        ]
    ).with_columns(pl.col("level_prior_week", "level_recent3").fill_nan(None))
    return wanted[kept], picked


def _last_weeks(per_week: np.ndarray, position: np.ndarray, weeks: int) -> np.ndarray:
    """At each row: `per_week` (a count over the 7 days ending on a row) summed over the
    `weeks` weeks ending on it (0 where they are not all in the row's series, which no trend
    reads) - the void and population days of the last 3 weeks, which a new weekly shape is
    read from."""
    out = per_week.astype(np.int32)
    for i in range(1, weeks):
        out[7 * i :] += per_week[: -7 * i]
    out[position < 7 * weeks - 1] = 0
    return out


def _level_prior(
    w0: np.ndarray, test_w0: np.ndarray, position: np.ndarray, rows: np.ndarray, test_weeks: int
) -> tuple[np.ndarray, np.ndarray]:
    """`_weeks_total` of the PRIOR_WEEKS weeks before the last 3 as the level test counts them:
    those among the trend test's `test_weeks` with their population days at the population's
    level (`test_w0`), the older ones as they were - population days are measured back over
    the test's weeks only, so a range and each day's run agree on them."""
    adjusted = min(max(test_weeks - 3, 0), PRIOR_WEEKS)
    if adjusted == 0:
        return _weeks_total(w0, position, rows, 3, PRIOR_WEEKS)
    total, whole = _weeks_total(test_w0, position, rows, 3, adjusted)
    if adjusted < PRIOR_WEEKS:
        older, whole = _weeks_total(w0, position, rows, 3 + adjusted, PRIOR_WEEKS - adjusted)
        total = total + older
    return total, whole


def _moving_or_pattern(
    w0: np.ndarray,
    test_w0: np.ndarray,
    shape_unread: np.ndarray,
    position: np.ndarray,
    wanted: np.ndarray,
    picked: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    settings: UsageSettings,
) -> np.ndarray:
    """`_trend_candidates`' tests of the run of weeks and of a new pattern, at `wanted` (the
    rows' prior week, last 3 weeks and their weekend sums in `picked`, NaN where null)."""
    s = settings
    k = s.trend_weeks
    run = s.trend_consecutive_weeks
    # the week sums the tests compare: w0..w{run} for a run, w0..w2 for a pattern (k >= 3:
    # UsageSettings refuses less)
    weeks = [w0[wanted - 7 * i] for i in range(min(max(run + 1, 3), k))]
    if run < k:
        moving = np.logical_and.reduce([weeks[i] > weeks[i + 1] for i in range(run)])
    else:  # weeks_up counts at most k - 1 rises
        moving = np.zeros(wanted.size, dtype=bool)
    moving |= _decline_candidates(test_w0, position, wanted, s)

    def slack(bound: np.ndarray) -> np.ndarray:
        return 1e-9 * np.abs(bound) + 1e-12  # comparisons within it count as passed

    prior, recent3, we_recent, we_prior, level_prior, level_recent3 = picked

    def judged(prior: np.ndarray, recent3: np.ndarray) -> np.ndarray:
        used = 0.05 * prior
        return (prior >= s.min_weekly_volume - 1e-9) & (recent3 / 3.0 >= used - slack(used))

    # the level on the weeks with their population days at their level (`_test_weeks`)
    level_weeks = [test_w0[wanted - 7 * i] for i in range(3)]
    high = level_prior * (1 + s.min_effect)
    low = level_prior * (1 - s.min_effect)
    level = (np.minimum(np.minimum(*level_weeks[:2]), level_weeks[2]) >= high - slack(high)) | (
        np.maximum(np.maximum(*level_weeks[:2]), level_weeks[2]) <= low + slack(low)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(recent3 > 0, we_recent / recent3, np.nan)
        prior_share = np.where(prior > 0, we_prior / (8.0 * prior), np.nan)
    shape = (np.abs(share - prior_share) >= s.min_shape_shift - 1e-9) & ~shape_unread[wanted]
    pattern = (judged(level_prior, level_recent3) & level) | (judged(prior, recent3) & shape)
    return moving | pattern


def _decline_candidates(
    w0: np.ndarray, position: np.ndarray, wanted: np.ndarray, settings: UsageSettings
) -> np.ndarray:
    """The wanted rows whose decline window is whole and whose Mann-Kendall S passes (the
    count of `_trend_test_stats`, exactly), or holds a NaN week (compared as polars does, by
    `_trend_test_stats` itself)."""
    kd = settings.trend_test_weeks
    whole = np.flatnonzero(position[wanted] >= 7 * kd - 1)
    rows = wanted[whole]
    if rows.size * 4 < w0.size:  # a day or a few of a long look-back: only their weeks
        falls_minus_rises, nan_weeks = _mann_kendall_s_at(w0, rows, kd)
    else:  # a range: every lag compared once over the grid
        falls_minus_rises, nan_weeks = (a[rows] for a in _mann_kendall_s(w0, kd))
    out = np.zeros(wanted.size, dtype=bool)
    passes = falls_minus_rises >= mann_kendall_threshold(kd, settings.trend_alpha)
    out[whole] = passes | (nan_weeks > 0)
    return out


def _mann_kendall_s_at(w0: np.ndarray, rows: np.ndarray, weeks: int) -> tuple[np.ndarray, ...]:
    """`_mann_kendall_s` at the given rows only (each with its `weeks` weeks in its series),
    their week sums gathered and compared pair by pair."""
    sums = [w0[rows - 7 * i] for i in range(weeks)]
    total = np.zeros(rows.size, dtype=np.int16)
    for i, j in _week_pairs(weeks):
        total += sums[i] < sums[j]
        total -= sums[i] > sums[j]
    return total, np.sum([np.isnan(w) for w in sums], axis=0, dtype=np.int16)


def _mann_kendall_s(w0: np.ndarray, weeks: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row t of the grid: Mann-Kendall's S of the week sums ending on t, t - 7, ...
    (`weeks` of them) as falls minus rises (pairs lower later minus pairs higher later), and
    how many of them are NaN. The pair of weeks ending on t - 7i and t - 7i - 7d compares the
    same two sums as row t - 7i's pair at lag d, so each lag's comparisons are made once over
    the whole grid and added in at their offsets: contiguous arrays, no gather per row and pair
    (a year's range has ~20M rows). Meaningful where the row's series holds all the weeks
    (position >= 7 weeks - 1)."""
    n = w0.size
    total = np.zeros(n, dtype=np.int16)  # |S| <= weeks (weeks - 1) / 2 = 120 at 16 weeks
    sign = np.zeros(n, dtype=np.int16)
    for d in range(1, weeks):
        lag = 7 * d
        if n <= lag:
            break
        later, earlier = w0[lag:], w0[:-lag]
        np.subtract(later < earlier, later > earlier, out=sign[lag:], dtype=np.int16)
        for i in range(weeks - d):  # the pair (i, i + d) of row t is this lag's pair at t - 7i
            total[7 * i :] += sign[: n - 7 * i]
    nan = np.isnan(w0)
    nan_weeks = np.zeros(n, dtype=np.int16)
    for i in range(weeks):
        nan_weeks[7 * i :] += nan[: n - 7 * i]
    return total, nan_weeks


Levels = Callable[[np.ndarray], np.ndarray]
"""Which of some grid rows (`_row`) hold a level (`_level_rows` of their grid)."""


def _with_level(hits: pl.DataFrame, levels: Levels | None) -> pl.DataFrame:
    """The signal rows with `_level` (`_shown`): asked of their grid for these few rows only (a
    year's candidate rows are millions) unless the statistics hold it; False without a grid."""
    if "_level" in hits.columns:
        return hits
    if levels is None or hits.height == 0 or "_row" not in hits.columns:
        return hits.with_columns(pl.lit(False).alias("_level"))
    return hits.with_columns(pl.Series("_level", levels(hits["_row"].to_numpy())))


def detect_usage_trends(
    stats: pl.DataFrame, settings: UsageSettings, levels: Levels | None = None
) -> pl.DataFrame:
    """adoption_trend (sustained weekly growth) and declining_usage (sustained weekly decline);
    `levels`: which rows hold a level, shown by their average day (`_with_level`)."""
    s = settings
    if stats.height == 0:
        return conform(stats)
    # Judged net of the population's trend (`population_trends`: a cohort's season) where it
    # moved the same way; the trend test's change, its part the population's explains.
    own, rise = pl.col("decline_log_change"), _rise_change(s)
    netted = "_pop_trend" in stats.columns
    shared = (_shared_part(own, pl.col("_pop_trend")) if netted else pl.lit(0.0)).fill_null(0.0)
    risen = (_shared_part(rise, pl.col("_pop_rise")) if netted else pl.lit(0.0)).fill_null(0.0)
    enough = (pl.col("run_base") >= s.min_weekly_volume) & (
        pl.col("history_days") >= 7 * s.trend_weeks
    )
    threshold = mann_kendall_threshold(s.trend_test_weeks, s.trend_alpha)
    up = (
        enough
        & (pl.col("weeks_up") >= s.trend_consecutive_weeks)
        & (pl.col("run_change") >= s.min_trend_change)
        & (pl.col("t") >= s.trend_t)
        & (pl.col("run_z") >= s.trend_z)
        & (-pl.col("decline_s") >= threshold)
        # ... and ends above where usage stood before the weeks it is fitted on: back from a
        # season's lull (December, then a holiday) is no adoption (unknown in a young series)
        & (
            pl.col("before_trend_week").is_null()
            | (pl.col("decline_recent") >= (1 + s.min_trend_change) * pl.col("before_trend_week"))
        )
        # ... and beyond its population's rise (a school's return from its summer)
        & ((risen <= 0) | (rise - risen >= math.log1p(s.min_trend_change)))
    ).fill_null(False)  # (a statistic without history is no trend, and no bar to a pattern)
    down = (
        ~up
        & (pl.col("decline_base") >= s.min_weekly_volume)
        & (pl.col("decline_s") >= threshold)
        & (
            pl.col("decline_recent")
            <= (1 - s.min_trend_change) * pl.col("decline_base") * shared.exp()
        )
        & ((own - shared) / pl.col("weekly_scale") <= -s.decline_z)
    ).fill_null(False)
    changes = detect_pattern_changes(stats.filter(~(up | down)), s, levels)
    declines = _declines(_with_level(stats.filter(down), levels), s)
    hits = _with_level(stats.filter(up), levels)
    if hits.height == 0:
        return pl.concat([declines, changes])
    weeks = pl.col("weeks_up")
    pct = (pl.col("run_change") * 100).round(0)
    trends = conform(
        hits.with_columns(
            pl.lit("adoption_trend").alias("type"),
            pl.col("metric").alias("subject"),
            _severity_of_ratio(1.0 + pl.col("run_change")).alias("severity"),
            (pl.col("t").abs() / (2 * s.trend_t)).clip(0.2, 1.0).alias("confidence"),
            evidence_list(
                evidence_item(
                    _per_week("{} over the last 7 days"),
                    _shown(pl.col("w0")),
                    pl.format("{} weeks earlier: {}", weeks, _shown(pl.col("run_base"))),
                    "usage_daily",
                ),
                evidence_item(
                    pl.format("{} change over {} weeks (%)", pl.col("metric"), weeks),
                    pct,
                    pl.format("{} weeks in a row", weeks),  # (3 at least)
                    "usage_daily",
                ),
                evidence_item(
                    pl.lit("weekly trend (%/week)"),
                    (pl.col("weekly_rate") * 100).round(1),
                    pl.format(
                        "log-linear fit over {} weeks, t = {}", s.trend_weeks, pl.col("t").round(1)
                    ),
                    "usage_daily",
                ),
                evidence_item(
                    pl.lit("week pairs higher later"),
                    pl.col("rise_pairs"),
                    _population_note(
                        pl.format(
                            "of {} over {} weeks (Mann-Kendall, one-sided {})",
                            len(_week_pairs(s.trend_test_weeks)),
                            s.trend_test_weeks,
                            s.trend_alpha,
                        )
                    ),
                    "usage_daily",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("metric"),
                *_weeks_shown(last_week=pl.col("w0"), base_week=pl.col("run_base")),
                weeks.alias("weeks"),
                pct.alias("change_pct"),
                (pl.col("weekly_rate") * 100).round(1).alias("weekly_rate_pct"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )
    return pl.concat([trends, declines, changes])


DISTINCT_COUNT = r"(^|_)(dau|wau|mau)(_|$)|active"
"""Metric names of counts of distinct users a day (`dau`, `active_users`): a week's sum of
them is user-days, not users ("weekly daily active users rose from 24 to 186" was 3 to 27 a
day: trial 10), so they are shown by their average day, as levels are."""


def _per_day() -> pl.Expr:
    """Whether a signal row's weeks are shown by their average day (`_shown`): a level
    (`_level`) or a count of distinct users (`DISTINCT_COUNT`)."""
    return pl.col("_level") | pl.col("metric").str.contains(DISTINCT_COUNT)


def _shown(week_total: pl.Expr) -> pl.Expr:
    """A week's total as a signal shows it: in its series' own unit (`_unit`,
    `_in_counting_units`), and a level's (`_level`) as its average day - a week of 21 seats is
    not "147 seats a week". A count, or anything from 100, as a whole number (1,127 hours, not
    1,130), anything else to 3 significant figures (0.4 GB a week is not 0)."""
    unit, per_day = pl.col("_unit"), _per_day()
    total = pl.when(per_day).then(week_total / 7.0).otherwise(week_total) / unit
    return (
        pl.when((unit == 1.0) & ~per_day)
        .then(total.round(0))
        .when(total.abs() >= 100)
        .then(total.round(0))
        .otherwise(total.round_sig_figs(3))
    )


def _weeks_shown(**weeks: pl.Expr) -> list[pl.Expr]:
    """Facts of week totals, each as `_shown` (named by its keyword), and whether they are a
    level's average day (`per_day`, for the templates' wording)."""
    return [
        *(_shown(total).alias(name) for name, total in weeks.items()),
        _per_day().alias("per_day"),
    ]


def _per_week(metric_label: str) -> pl.Expr:
    """`metric_label` (a format of the metric) "per week", or "on an average day" for a level
    (`_shown`)."""
    return (
        pl.when(_per_day())
        .then(pl.format(metric_label.format("{} on an average day"), pl.col("metric")))
        .otherwise(pl.format(metric_label.format("{} per week"), pl.col("metric")))
    )


LEVEL_DAILY_CHANGE = 0.02
"""A series whose median day-to-day change over the last 4 weeks is under 2% (log) is a level held
- seats assigned, storage kept - shown by its average day (`_shown`); an activity count moves
by 10% or more from one day to the next (`RiskSettings.level_change` tells such metrics apart
for the whole book the same way)."""


def _level_rows(grid: _DenseGrid, rows: np.ndarray) -> np.ndarray:
    """At `rows`: whether the series holds a level (`LEVEL_DAILY_CHANGE`), from the changes
    between the 29 days ending on each (within its series; 3 changes at least): a seat more on
    a few days is still a level; usage that stopped (0 on most days) is none."""
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    lags = np.arange(29)
    inside = lags[None, :] <= grid.position[rows][:, None]
    at = np.where(inside, rows[:, None] - lags[None, :], rows[:, None])
    value = np.where(inside, grid.value[at], np.nan)
    change = np.abs(np.diff(np.log1p(value), axis=1))
    with np.errstate(invalid="ignore"):
        held = _row_medians(value, 4) > 0
        return held & (_row_medians(change, 3) < LEVEL_DAILY_CHANGE)


def _population_note(comparison: pl.Expr) -> pl.Expr:
    """The comparison, saying how many days of the trend test's weeks were population days
    (`_test_weeks`), when any were: the week sums shown are then not the raw ones."""
    days = pl.col("trend_population_days").fill_null(0)
    return (
        pl.when(days > 0)
        .then(
            pl.format(
                "{}; {} on which all accounts, or its industry or region, moved together "
                "counted at their usual level",
                comparison,
                _counted(days, "day"),
            )
        )
        .otherwise(comparison)
    )


def _declines(hits: pl.DataFrame, settings: UsageSettings) -> pl.DataFrame:
    """declining_usage signals of the rows that passed the decline test: the evidence says how
    far the window's last two weeks sit below its first two and how many week pairs fell."""
    kd = settings.trend_test_weeks
    pairs = len(_week_pairs(kd))
    ratio = pl.col("decline_recent") / pl.col("decline_base")
    pct = ((ratio - 1.0) * 100).round(0)
    # a fall to (almost) nothing is a collapse, not a weekly rate ("-100% a week")
    weekly_pct = pl.when(ratio >= 0.05).then(((ratio.pow(1.0 / (kd - 2)) - 1.0) * 100).round(1))
    return conform(
        hits.with_columns(
            pl.lit("declining_usage").alias("type"),
            pl.col("metric").alias("subject"),
            _severity_of_ratio(ratio).alias("severity"),
            (-pl.col("decline_z") / (2 * settings.decline_z)).clip(0.2, 1.0).alias("confidence"),
            evidence_list(
                evidence_item(
                    _per_week("{}, last 2 weeks"),
                    _shown(pl.col("decline_recent")),
                    _population_note(
                        pl.format(
                            "{} in the 2 weeks {} weeks earlier",
                            _shown(pl.col("decline_base")),
                            kd - 2,
                        )
                    ),
                    "usage_daily",
                ),
                evidence_item(
                    pl.format("{} change over {} weeks (%)", pl.col("metric"), kd),
                    pct,
                    pl.lit("the last 2 weeks against the first 2"),
                    "usage_daily",
                ),
                evidence_item(
                    pl.lit("week pairs lower later"),
                    pl.col("decline_pairs"),
                    pl.format("of {} (Mann-Kendall, one-sided {})", pairs, settings.trend_alpha),
                    "usage_daily",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("metric"),
                *_weeks_shown(last_week=pl.col("decline_recent"), base_week=pl.col("decline_base")),
                pl.lit(kd).alias("weeks"),
                pct.alias("change_pct"),
                weekly_pct.alias("weekly_rate_pct"),
                pl.col("decline_pairs").alias("falling_pairs"),
                pl.lit(pairs).alias("pairs"),
                pl.col("trend_population_days").fill_null(0).alias("population_days"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def detect_pattern_changes(
    stats: pl.DataFrame, settings: UsageSettings, levels: Levels | None = None
) -> pl.DataFrame:
    """usage_pattern_change: the last 3 weeks each sit on the same side of the 8 weeks before, by
    at least min_effect and trend_z of the account's own weekly variability (a level step that
    stays, not a ramp), or the weekend share of usage moved by `min_shape_shift`."""
    s = settings
    if stats.height == 0:
        return conform(stats)
    # The level is judged on the weeks with their population days at the population's level
    # (`_test_weeks`: a holiday in the last 3 weeks, a void day, a metric no longer exported
    # by anyone, is no account's new level); the weekend shape on the weeks as they were.
    prior, level_prior = pl.col("prior_week"), pl.col("level_prior_week")
    recent, level_recent = pl.col("recent3") / 3.0, pl.col("level_recent3") / 3.0
    # net of its population's new level where it moved the same way (`population_trends`)
    if "_pop_level" in stats.columns:
        own = level_recent.log1p() - level_prior.log1p()
        level_prior = level_prior * _shared_part(own, pl.col("_pop_level")).fill_null(0.0).exp()
    weeks = [pl.col(f"level_w{i}") for i in range(3)]
    up_all = pl.all_horizontal([w >= level_prior * (1 + s.min_effect) for w in weeks])
    down_all = pl.all_horizontal([w <= level_prior * (1 - s.min_effect) for w in weeks])
    # A week's count varies at least by its counting (Poisson) noise, sqrt(2 / count) for a
    # week-to-week log change: a level that barely moves (seats) is many of its own weekly
    # scales away after one more seat, and a small account's one-seat step is no new pattern.
    counting = (2.0 / level_prior.clip(lower_bound=1.0)).sqrt()
    level_z = (level_recent.log1p() - level_prior.log1p()) / pl.max_horizontal(
        pl.col("weekly_scale"), counting
    )
    shape_shift = pl.col("weekend_share") - pl.col("prior_weekend_share")
    history = pl.col("history_days") >= 7 * s.trend_weeks

    def judged(prior: pl.Expr, recent: pl.Expr) -> pl.Expr:
        # Usage that fell to (almost) nothing is a drop or a silent account, not a new pattern.
        return (prior >= s.min_weekly_volume) & history & (recent >= 0.05 * prior)

    enough = judged(prior, recent)
    level = judged(level_prior, level_recent) & (
        (up_all & (level_z >= s.trend_z)) | (down_all & (level_z <= -s.trend_z))
    )
    # Standard error of the change in weekend share (recent 3 weeks vs 8 before): binomial in
    # the uses, or from the account's own week-to-week swings of its share, whichever is wider.
    p0 = pl.col("prior_weekend_share").clip(0.02, 0.98)
    binomial = (p0 * (1 - p0) * (1 / pl.col("recent3") + 1 / (8.0 * prior))).sqrt()
    weekly = pl.col("weekend_share_sd") * math.sqrt(1 / 3 + 1 / PRIOR_WEEKS)
    share_se = pl.max_horizontal(binomial, weekly.fill_null(0.0))
    shape = (
        enough
        & ~pl.col("shape_unread")
        & (shape_shift.abs() >= s.min_shape_shift)
        & (shape_shift.abs() >= s.shape_z * share_se)
    )
    hits = stats.with_columns(level_z.alias("level_z"), shape_shift.alias("shape_shift")).filter(
        level | shape
    )
    hits = _with_level(hits, levels)
    if hits.height == 0:
        return conform(hits)
    # the weeks as the level test read them (as they were where it could not read one)
    recent_week = pl.coalesce("level_recent3", "recent3") / 3.0
    prior_week = pl.coalesce("level_prior_week", "prior_week")
    change_pct = ((recent_week / prior_week - 1.0) * 100).round(0)
    is_shape = pl.col("shape_shift").abs() >= s.min_shape_shift
    return conform(
        hits.with_columns(
            pl.lit("usage_pattern_change").alias("type"),
            pl.col("metric").alias("subject"),
            pl.max_horizontal(
                _severity_of_ratio(recent_week / prior_week),
                pl.col("shape_shift").abs() * 2,
            )
            .clip(0.2, 1.0)
            .alias("severity"),
            (pl.col("level_z").fill_null(0.0).abs() / (2 * s.trend_z))
            .clip(0.4, 1.0)
            .alias("confidence"),
            evidence_list(
                evidence_item(
                    _per_week("{}, last 3 weeks"),
                    _shown(recent_week),
                    pl.format("{} in the 8 weeks before", _shown(prior_week)),
                    "usage_daily",
                ),
                evidence_item(
                    pl.lit("weekend share of usage (%)"),
                    (pl.col("weekend_share") * 100).round(0),
                    pl.format("{}% before", (pl.col("prior_weekend_share") * 100).round(0)),
                    "usage_daily",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("metric"),
                *_weeks_shown(recent_week=recent_week, prior_week=prior_week),
                change_pct.alias("change_pct"),
                (pl.col("weekend_share") * 100).round(0).alias("weekend_pct"),
                (pl.col("prior_weekend_share") * 100).round(0).alias("prior_weekend_pct"),
                is_shape.alias("shape_change"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )

"""Helpers shared by detector families: the customer x day frame, daily event counts, the
Poisson likelihood-ratio test used for 'well above its own baseline', and a fast sort by
several integer columns."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache, cached_property
from statistics import NormalDist

import numpy as np
import polars as pl


def run_positions(offset: np.ndarray, length: np.ndarray) -> np.ndarray:
    """0, 1, ... within each run of `length` rows beginning at `offset` (runs laid end to end):
    one cumulative sum of steps that fall back at each run's start (no row index per run)."""
    step = np.ones(int(length.sum()), dtype=np.int64)
    if step.size:
        begun = length > 0
        step[offset[begun][1:]] = 1 - length[begun][:-1]
        step[0] = 0
    return np.cumsum(step, out=step)


def sort_by_integers(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """`frame.sort(columns)` for integer or date columns, through one integer key that packs
    them when their ranges fit in 64 bits together: several columns are sorted through a row
    encoding ~2.5x slower than one (11M feature-usage rows of a 10k year: 2.96 -> 1.20 s).
    The key is packed and sorted by numpy (its stable sort follows the runs of rows that come
    nearly in order, as grouped sources do: 11M rows 0.9 -> 0.3 s with the packing); when two
    rows share a key, their order is polars' own sort's instead (rows with equal keys come in
    no particular order there, and this returns what it returned). A column with nulls, or
    ranges too wide to pack (or to subtract in Int64), take the plain sort."""
    if (
        frame.height < 2
        or any(frame.get_column(c).null_count() for c in columns)
        or any(frame.schema[c] == pl.UInt64 for c in columns)  # may not fit an Int64
    ):
        return frame.sort(columns)
    values = [frame.get_column(c).to_physical().cast(pl.Int64).to_numpy() for c in columns]
    lows = [int(v.min()) for v in values]
    widths = [(int(v.max()) - low).bit_length() for v, low in zip(values, lows, strict=True)]
    if sum(widths) > 64 or max(widths) > 62:  # hi - lo itself must not overflow an Int64
        return frame.sort(columns)
    # a key of 32 bits or fewer sorts as a UInt32 (a 10k year's 11M feature-usage rows, 26 bits)
    dtype = np.uint32 if sum(widths) <= 32 else np.uint64
    key = np.zeros(frame.height, dtype=dtype)
    for value, low, width in zip(values, lows, widths, strict=True):
        key = (key << dtype(width)) | (value - low).astype(dtype)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    if (ordered[1:] == ordered[:-1]).any():  # equal keys: polars' order of them
        return frame.sort(pl.Series(key))
    return frame[order]


def customer_days(accounts: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    """One row per (customer, partition_date) for the days a customer is a customer."""
    days = pl.DataFrame({"partition_date": pl.date_range(start, end, eager=True)})
    frame = accounts.select("customer_id", "contract_start", "churned_on", "renewal_date").join(
        days, how="cross"
    )
    return frame.filter(is_customer_on("partition_date"))


def is_customer_on(day: str, since: str = "contract_start", until: str = "churned_on") -> pl.Expr:
    """True where the row's account (its `since` contract start and `until` churn date) is a
    customer on `day`: `customer_days` as a filter, for rows that carry their account's dates."""
    return (pl.col(until).is_null() | (pl.col(until) > pl.col(day))) & (
        pl.col(since).is_null() | (pl.col(since) <= pl.col(day))
    )


def on_customer_days(
    frame: pl.DataFrame, accounts: pl.DataFrame, start: date, end: date
) -> pl.DataFrame:
    """The rows of `frame` (customer_id, partition_date, ...) on the days their customer is a
    customer (`customer_days` of start..end), in their order: the semi-join on `customer_days`,
    tested on the account's own row instead of hashing every customer day of the range (3.65M
    in a 10k year) for a few hits. Accounts listed twice take that semi-join."""
    spans = accounts.select(
        "customer_id",
        pl.col("contract_start").alias("_customer_since"),
        pl.col("churned_on").alias("_customer_until"),
    )
    if spans["customer_id"].is_duplicated().any():
        days = customer_days(accounts, start, end).select("customer_id", "partition_date")
        return frame.join(days, on=["customer_id", "partition_date"], how="semi")
    return (
        frame.join(spans, on="customer_id", how="inner", maintain_order="left")
        .filter(
            pl.col("partition_date").is_between(start, end)
            & is_customer_on("partition_date", "_customer_since", "_customer_until")
        )
        .drop("_customer_since", "_customer_until")
    )


def daily_counts(
    events: pl.DataFrame, customers: pl.Series, first: date, last: date, weight: str | None = None
) -> pl.DataFrame:
    """Dense (customer_id, date, n) from event rows (customer_id, date[, weight]); 0 where none.

    Rows come sorted by customer, then date, every customer with the same days, so a row's
    position within its customer is `(date - first).days` (`day_position`). The whole
    `DayGrid` as a frame: for a small grid (a run's own days) or when every cell is read.
    """
    grid = DayGrid.build(customers, first, last)
    (n,) = grid.counts(events, weight)
    return grid.frame(np.arange(n.values.size), n=n.values.astype(np.float64))


def customer_index(rows: pl.DataFrame, ids: pl.Series) -> tuple[pl.DataFrame, np.ndarray]:
    """The `rows` whose customer_id is among `ids` (sorted, distinct), in their order, and each
    one's index among `ids`: what an inner join on a frame of the ids and their indexes gives,
    found as the rows' codes in an Enum of the ids (a null id, sorted first, matches no row),
    ~4x cheaper than that join on strings for the millions of active days of a year."""
    code = rows["customer_id"].cast(pl.Enum(ids.drop_nulls()), strict=False)
    known = code.is_not_null()
    index = code.filter(known).to_physical().to_numpy().astype(np.int64) + ids.null_count()
    return rows.filter(known), index


@dataclass(frozen=True)
class DayGrid:
    """Every customer (sorted ids) x every day first..last as flat numpy arrays, cell
    `customer * n_days + day`: the grid of `daily_counts` without the frame.

    A rolling window over 100k customers x 195 days is ~20M cells, but a run reads a few of them
    (its own days, then the few that can hit). Counts and window sums stay numpy arrays indexed
    by cell; ids and dates are attached only to the cells read (`frame`), instead of building
    and filtering a 20M-row string-keyed frame.
    """

    ids: pl.Series
    first: date
    n_days: int

    @classmethod
    def build(cls, customers: pl.Series, first: date, last: date) -> DayGrid:
        return cls(customers.unique().sort(), first, (last - first).days + 1)

    def counts(self, events: pl.DataFrame, *weights: str | None) -> list[CellCounts]:
        """Per cell, for each of `weights`: the sum of that column over the event rows
        (customer_id, date, ...) in the grid (None: the number of rows); 0 where none. The
        customer lookup (`customer_index`) is done once for all of them."""
        last = self.first + timedelta(days=self.n_days - 1)
        rows, customer = customer_index(
            events.filter(pl.col("date").is_between(self.first, last)), self.ids
        )
        cell = customer * self.n_days + ((rows["date"] - self.first).dt.total_days().to_numpy())
        order = None if bool((cell[1:] >= cell[:-1]).all()) else np.argsort(cell, kind="stable")
        if order is not None:
            cell = cell[order]
        out = []
        for name in weights:
            if name is None:  # whole counts: every sum is exact
                out.append(CellCounts(self, cell, None, exact=True))
                continue
            w = rows[name].cast(pl.Float64).fill_null(0.0).to_numpy()
            exact = _sums_exact(w)
            out.append(CellCounts(self, cell, w if order is None else w[order], exact=exact))
        return out

    def cells(self, start: date, end: date) -> np.ndarray:
        """The cells of the days start..end, by customer then day (`daily_counts`' order)."""
        days = np.arange((start - self.first).days, (end - self.first).days + 1)
        return (np.arange(self.ids.len())[:, None] * self.n_days + days[None, :]).ravel()

    def days_on_record(
        self,
        cells: np.ndarray,
        accounts: pl.DataFrame,
        since: date | None,
        window: int,
        lag: int,
    ) -> np.ndarray:
        """At `cells`: how many of the `window` days ending `lag` days before are on record for
        the customer - on or after both the source's first day (`since`: the table's first
        event day; None = all) and the customer's contract_start. A baseline rate is its sum
        over these days, not over the whole window: a table exported for six weeks, or a
        customer of a month, has no quiet half-year behind it."""
        first = pl.lit(since) if since is not None else pl.lit(None, pl.Date)
        starts = (
            pl.DataFrame({"customer_id": self.ids})
            .join(accounts.select("customer_id", "contract_start"), on="customer_id", how="left")
            .select(pl.max_horizontal(first, pl.col("contract_start")).alias("start"))
            .to_series()
        )
        epoch = (self.first - date(1970, 1, 1)).days
        start = starts.cast(pl.Int32).fill_null(np.iinfo(np.int32).min).to_numpy()
        start = start.astype(np.int64)[cells // self.n_days]
        window_end = cells % self.n_days + epoch - lag  # the window's last day (epoch days)
        return np.clip(window_end - np.maximum(start, window_end - window + 1) + 1, 0, window)

    def frame(self, cells: np.ndarray, **columns: np.ndarray) -> pl.DataFrame:
        """(customer_id, date, *columns) of `cells`; NaN in a column is null."""
        return pl.DataFrame(
            {
                "customer_id": self.ids.gather(cells // self.n_days),
                "date": pl.Series(
                    (cells % self.n_days + (self.first - date(1970, 1, 1)).days).astype(np.int32)
                ).cast(pl.Date),
                **{name: pl.Series(v, nan_to_null=True) for name, v in columns.items()},
            }
        )


def trailing_sums(values: np.ndarray, position: np.ndarray, window: int) -> np.ndarray:
    """The sums of the `window` days ending on each row of a grid (rows contiguous and daily per
    series, `position` the row's day in its series), NaN where the window is not wholly in the
    series. Added in a fixed order - the seven days of each week, then the weeks (latest
    first) and the days left - not as a running sum: usage need not be whole numbers (hours,
    gigabytes), and a running sum's rounding depends on where the grid starts, which a range
    run and a day's run do not share (their sums would differ in the last bits)."""
    weeks, days = divmod(window, 7)
    size = values.size
    week = values.copy()
    for lag in range(1, 7):
        week[lag:] += values[: _kept(size, lag)]
    if window == 7:
        total = week
    else:
        total = np.zeros_like(values)
        for k in range(weeks):
            total[7 * k :] += week[: _kept(size, 7 * k)]
        for d in range(days):
            lag = 7 * weeks + d
            total[lag:] += values[: _kept(size, lag)]
    return np.where(position >= window - 1, total, np.nan)


def _kept(size: int, lag: int) -> int:
    """How many of `size` values a shift by `lag` keeps (none when the lag is longer)."""
    return max(size - lag, 0)


@dataclass(frozen=True)
class CellCounts:
    """Per-cell sums of a `DayGrid` (`DayGrid.counts`), to be summed over day windows at the
    cells a detector reads. Kept as the events themselves - their cells, sorted, and weights -
    rather than as an array of every cell: a grid of 100k customers x 195 days has 19.5M
    cells, a few million of which hold an event, and a window sum is a difference of the
    events' running totals found by binary search. The dense array (`values`) is built only
    for a caller that reads many cells (a range), or for sums that are not exact."""

    grid: DayGrid
    cells: np.ndarray
    """The events' cells, in increasing order."""
    weights: np.ndarray | None
    """Each event's weight, in the same order (None: each counts 1)."""
    exact: bool
    """Every sum of them is exact in float64 (`_sums_exact`)."""

    @cached_property
    def values(self) -> np.ndarray:
        """One per cell: int64 counts or float64 sums of the weights."""
        size = self.grid.ids.len() * self.grid.n_days
        return np.bincount(self.cells, weights=self.weights, minlength=size)

    @cached_property
    def _running(self) -> np.ndarray:
        """running[k] = the sum of the first k events (in cell order)."""
        if self.weights is None:
            return np.arange(self.cells.size + 1, dtype=np.int64)
        running = np.zeros(self.cells.size + 1, dtype=np.float64)
        np.cumsum(self.weights, out=running[1:])
        return running

    @cached_property
    def _prefix(self) -> np.ndarray:
        """prefix[i] = values[:i].sum(): one pass over every cell, shared by every window."""
        prefix = np.zeros(self.values.size + 1, dtype=self.values.dtype)
        np.cumsum(self.values, out=prefix[1:])
        return prefix

    def _before(self, stop: np.ndarray) -> np.ndarray:
        """values[:stop].sum() for each stop (exact sums only). A few stops (a day's run reads
        one cell per customer) by a binary search among the events; many (a range reads most
        cells) from the prefix sums of every cell, built once: the same numbers either way."""
        if 16 * stop.size < self.grid.ids.len() * self.grid.n_days:
            return self._running[np.searchsorted(self.cells, stop, side="left")]
        return self._prefix[stop]

    def trailing_sum(
        self, cells: np.ndarray, window: int, *, lag: int = 0, partial: bool = False
    ) -> np.ndarray:
        """At `cells`: the sum over the `window` days ending `lag` days before, within the
        customer; NaN (null) where the window is incomplete, unless `partial` (then the sum of
        the days there are; only without a lag).

        Differences of running totals read at the cells when the sums are exact (whole counts,
        weights like 0.5: any order of additions gives the same float), else `trailing_sums`
        (added in a fixed order, so that a range's grid and a day's, which start on different
        days, give the same floats)."""
        if partial and lag:
            raise ValueError("partial windows are only supported without a lag")
        n_days = self.grid.n_days
        day = cells % n_days  # (each pass over the cells once: a range reads millions of them)
        complete = day - lag >= window - 1
        stop = cells - lag + 1  # the window is values[stop - window : stop]
        if self.exact:
            upto = self._before(stop)
            full = (upto - self._before(np.where(complete, stop - window, 0))).astype(np.float64)
            if partial:
                since_first = upto - self._before(cells - day)
        else:  # sums in a fixed order: the same floats whichever day the grid starts on
            values = np.asarray(self.values, dtype=np.float64)
            position = np.arange(values.size) % n_days
            full = trailing_sums(values, position, window)[np.maximum(cells - lag, 0)]
            if partial:  # (not needed otherwise: a pass over every cell)
                running = np.cumsum(values)
                customer_first = cells - day
                since_first = running[cells] - (running[customer_first] - values[customer_first])
        if not partial:
            return np.where(complete, full, np.nan)
        # fewer days than the window: the running total since the customer's first day
        return np.where(complete, full, since_first.astype(np.float64))


def _sums_exact(values: np.ndarray) -> bool:
    """Whether every sum of any of `values` is exact in float64, whatever the order of the
    additions: all are multiples of 1/1024 (whole counts, weights like 0.5) and their absolute
    total is below 2**42, so no partial sum needs more than 53 bits. Then a difference of prefix
    sums equals a sliding-window sum to the bit."""
    scaled = values * 1024.0
    return bool(np.array_equal(scaled, np.trunc(scaled)) and np.abs(values).sum() < 2.0**42)


def day_position() -> pl.Expr:
    """A row's index within its customer in a `daily_counts` grid (days since its first day)."""
    return (pl.col("date") - pl.col("date").min()).dt.total_days()


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


def excess_dispersion(
    counts: CellCounts, cells: np.ndarray, on_record: np.ndarray, window: int, baseline: int
) -> np.ndarray:
    """At `cells`: how much more its counts of `window` days vary than random (Poisson) events
    would, from the baseline's whole windows on record (1 where they do not): contact in threads
    (a few days of messages, then weeks of nothing) or tickets filed in clusters were as bursty
    in their past, and a cluster is not a rise. The variance-to-mean ratio of those windows'
    counts (the quasi-Poisson scale of a likelihood-ratio test), where it is beyond what chance
    gives a Poisson account's windows (their 99th percentile: chi-square with m - 1 df, in the
    Wilson-Hilferty approximation)."""
    blocks = baseline // window
    sums = np.stack(
        [counts.trailing_sum(cells, window, lag=k * window) for k in range(1, blocks + 1)]
    )
    whole = np.minimum(on_record // window, blocks).astype(np.int64)  # windows on record
    sums[np.arange(1, blocks + 1)[:, None] > whole[None, :]] = np.nan
    # (a cell with fewer than 2 windows on record, possible under a short min_baseline_days,
    # has no variance: numpy warns, and `bursty` leaves it at 1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(sums, axis=0)
        ratio = np.nanvar(sums, axis=0, ddof=1) / mean
        df = np.maximum(whole - 1, 1).astype(np.float64)
        chance = (1 - 2 / (9 * df) + 2.326 * np.sqrt(2 / (9 * df))) ** 3  # chi2_0.99(df) / df
    bursty = (whole >= 3) & (mean > 0) & np.isfinite(ratio) & (ratio > chance)
    return np.where(bursty, ratio, 1.0)


def population_days(
    days: pl.Series, sample: pl.DataFrame, end: date, baseline_days: int, *, median: bool
) -> pl.DataFrame:
    """(date, events, usual) per day from the first of `days` (one per event of a fixed sample
    of all accounts) to `end`: the sample's events that day, and what the same weekday's events
    per customer (`sample`: their contract starts and churn dates) over the `baseline_days`
    before make of that day's customers - their median or mean, null until 8 such weekdays are
    on record. What a population's day usually is, for the detectors that ask whether everyone
    moved (contact, tickets)."""
    calendar = pl.DataFrame({"date": pl.date_range(days.min(), end, eager=True)})
    events = days.alias("date").to_frame().group_by("date").len("events")
    customers = customer_days(sample, calendar["date"][0], end).group_by("partition_date").len()
    share = pl.when(pl.col("len") > 0).then(pl.col("events") / pl.col("len")).shift(1)
    weeks = baseline_days // 7
    usual = (
        share.rolling_median(weeks, min_samples=8)
        if median
        else share.rolling_mean(weeks, min_samples=8)
    )
    return (
        calendar.join(events, on="date", how="left")
        .join(customers, left_on="date", right_on="partition_date", how="left")
        .with_columns(pl.col("events", "len").fill_null(0).cast(pl.Float64))
        .select(
            "date",
            "events",
            usual.over(pl.col("date").dt.weekday()).mul(pl.col("len")).alias("usual"),
        )
    )


def poisson_g(observed: pl.Expr, expected: pl.Expr) -> pl.Expr:
    """G = 2 (k ln(k/lambda) - (k - lambda)): the Poisson likelihood-ratio statistic for an excess
    over the expected count (chi-square with 1 df under the null); 0 when k <= lambda."""
    k = observed
    lam = expected.clip(lower_bound=1e-9)
    g = 2.0 * (pl.when(k > 0).then(k * (k / lam).log()).otherwise(0.0) - (k - lam))
    return pl.when(k > lam).then(g).otherwise(0.0)


def poisson_tail(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """P(X >= observed) for X ~ Poisson(expected), elementwise: 1 - sum_{i < k} e^-l l^i / i!,
    summed term by term up to the largest count (counts of rare events: a few terms)."""
    k = np.asarray(observed, dtype=np.int64)
    lam = np.asarray(expected, dtype=np.float64)
    out = np.ones(lam.shape)  # P(X >= 0) = 1
    some = np.flatnonzero(k > 0)  # only those need the sum (a storm at one account: few cells)
    k, lam = k[some], lam[some]
    term = np.exp(-lam)
    below = np.zeros(lam.shape)
    for i in range(int(k.max(initial=0))):
        below += np.where(i < k, term, 0.0)
        term = term * lam / (i + 1)
    out[some] = np.clip(1.0 - below, 0.0, 1.0)
    return out


def mann_kendall_threshold(weeks: int, alpha: float) -> int:
    """The smallest Mann-Kendall S (pairs falling later minus pairs rising later) significant
    at one-sided `alpha` among `weeks` values: the normal approximation with its continuity
    correction, variance n(n-1)(2n+5)/18 (ties, rare in weekly sums, only make it stricter)."""
    sd = math.sqrt(weeks * (weeks - 1) * (2 * weeks + 5) / 18)
    return math.ceil(1 + NormalDist().inv_cdf(1 - alpha) * sd - 1e-9)


@cache
def sign_test_critical(n: int, alpha: float) -> int:
    """The fewest of `n` accounts moving one way that a fair coin per account reaches with
    probability below `alpha` (exact binomial tail); n + 1 when no count does."""
    total, tail = 2**n, 0
    for k in range(n, -1, -1):
        tail += math.comb(n, k)
        if tail >= alpha * total:
            return k + 1
    return 0


def attendances(
    attendees: pl.DataFrame, meetings: pl.DataFrame, contacts: pl.Series
) -> pl.DataFrame:
    """(contact_id, met_on) of every meeting `contacts` attended: only those contacts' rows
    (a few among millions) are joined to the meetings' days."""
    theirs = attendees.filter(pl.col("contact_id").is_in(contacts.unique().implode()))
    if not (theirs.height and meetings.height):
        return pl.DataFrame(schema={"contact_id": pl.String, "met_on": pl.Date})
    return theirs.join(meetings.select("meeting_id", "start_at"), on="meeting_id").select(
        "contact_id", pl.col("start_at").dt.date().alias("met_on")
    )

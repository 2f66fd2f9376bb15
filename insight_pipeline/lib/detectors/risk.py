"""Risk detectors: silent_account, champion_left, health_drop, support_surge, detractor_nps.

(declining_usage, the other risk type, is a weekly trend: see usage.py.)
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl

from insight_pipeline.lib.detectors.common import (
    DayGrid,
    attendances,
    customer_index,
    daily_counts,
    excess_dispersion,
    last_flagged_date,
    on_customer_days,
    poisson_g,
    poisson_tail,
    population_days,
)
from insight_pipeline.lib.detectors.usage import (
    _epoch_day,
    _lagged_median,
    evidence_list,
    trailing_sums,
    usage_grid,
    within_series,
)
from insight_pipeline.lib.settings import RiskSettings
from insight_pipeline.lib.signals import conform, empty_signals, evidence_item

MAD_TO_SD = 1.4826
READING_GAP_DAYS = 31
"""A health reading's change is measured from the reading before it when that one is at most a
month older (a longer silence is no measure of day-to-day noise)."""
MIN_NOISE_READINGS = 3
"""Reading-to-reading changes a health score's noise is measured on (over the 8 weeks before
the last one: a weekly score has 8, a fortnightly one 4)."""


def _window_days(frame: pl.DataFrame, start_col: str, days: int) -> pl.Expr:
    """The partition days [start_col, start_col + days - 1] as a list column."""
    return pl.date_ranges(pl.col(start_col), pl.col(start_col) + pl.duration(days=days - 1))


LEVEL_SCHEMA = {"date": pl.Date, "metric": pl.String}


def level_metrics_by_day(
    usage: pl.DataFrame, start: date, end: date, s: RiskSettings
) -> pl.DataFrame:
    """(date, metric) of the metrics that behave as a level held on each day of [start, end]:
    seats assigned, storage kept, a running total - above 0 every day while nobody uses the
    product. Such a metric's median account changes by less than `level_change` (in log terms)
    from one day to the next over the 28 days to that day; an activity count (users, events,
    logins) moves by 10% or more even on a steady account. `usage`: a sample of accounts with
    the look-back; a metric needs `min_level_accounts` of them with usage to be judged."""
    if s.level_change <= 0 or usage.height == 0:
        return pl.DataFrame(schema=LEVEL_SCHEMA)
    window = 28
    grid = usage_grid(usage.filter(pl.col("date") <= end), end)
    y = np.log1p(grid.value)
    step = np.abs(y - np.roll(y, 1))  # from the day before (masked below at series starts)
    # the mean of the `window` days' changes, each from its previous day in the series (a sum
    # in a fixed order: the same floats whichever day the run's grid starts on)
    change = trailing_sums(step, grid.position - 1, window) / window
    per_series = (
        pl.DataFrame(
            {
                "_pos": grid.position,
                "change": pl.Series(change, nan_to_null=True),
                "used": grid.value > 0,
                "day": grid.day,
                "series": grid.series,
            }
        )
        .with_columns(
            within_series(pl.col("used").cast(pl.Int8).rolling_max(window), window - 1).alias(
                "used"
            ),
        )
        .filter(
            (pl.col("day") >= _epoch_day(start))
            & (pl.col("day") <= _epoch_day(end))
            & (pl.col("used") == 1)
            & pl.col("change").is_not_null()
        )
    )
    per_series = per_series.with_columns(grid.keys["metric"].gather(per_series["series"]))
    by_metric = per_series.group_by("day", "metric").agg(
        pl.col("change").median(), pl.len().alias("accounts")
    )
    level = (pl.col("accounts") >= s.min_level_accounts) & (pl.col("change") < s.level_change)
    # A day on which every metric would be a level keeps its activity metrics (none found):
    # a source of steady giants must not make every account silent.
    activity_left = (~level & ~pl.col("metric").is_in(s.level_metrics)).any().over("day")
    return (
        by_metric.filter(level & activity_left)
        .select(pl.col("day").cast(pl.Int32).cast(pl.Date).alias("date"), "metric")
        .sort("date", "metric")
    )


def detect_silent_account(
    active_days: pl.DataFrame,
    communications: pl.DataFrame,
    meetings: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: RiskSettings,
) -> pl.DataFrame:
    """No usage and no two-way contact (a meeting held, an inbound message: the contract's
    two-way contact) for silent_days. Outbound messages are the CSM's own: an account that
    answers none of them is silent all the same.

    `active_days`: (customer_id, date) of the days a customer used anything (any metric above
    0 but the level metrics, `RiskSettings.level_metrics`); repeated rows are allowed and
    change nothing, and before `start` only each customer's latest day matters (a caller may
    pass just that one)."""
    parts = [active_days.select("customer_id", "date")]
    contact_on_record = communications.height > 0 or meetings.height > 0
    if communications.height:
        parts.append(
            communications.filter(pl.col("direction") == "inbound").select(
                "customer_id", pl.col("sent_at").dt.date().alias("date")
            )
        )
    if meetings.height:
        parts.append(meetings.select("customer_id", pl.col("start_at").dt.date().alias("date")))
    activity = pl.concat(parts)
    if activity.height == 0:
        return empty_signals()
    # The last active day up to each partition day: the latest before the range (one aggregate),
    # else the latest within it (a grid of the range's days only). The one before is taken by
    # the grid rows' customer (each has the range's days), not by a left join on strings.
    before = (
        activity.filter(pl.col("date") < start)
        .group_by("customer_id")
        .agg(pl.col("date").max().alias("active_before"))
    )
    grid = daily_counts(activity, accounts["customer_id"], start, end)
    n_days = (end - start).days + 1
    before, customer = customer_index(before, grid["customer_id"].gather_every(n_days))
    active_before = pl.Series("active_before", [None] * (grid.height // n_days), pl.Date)
    grid = (
        grid.with_columns(last_flagged_date(pl.col("n") > 0).alias("last_active"))
        .with_columns(
            active_before.scatter(customer, before["active_before"]).gather(
                np.arange(grid.height) // n_days
            )
        )
        .with_columns(pl.coalesce("last_active", "active_before").alias("last_active"))
    )
    silent = (pl.col("date") - pl.col("last_active")).dt.total_days()
    hits = (
        grid.filter(
            pl.col("date").is_between(start, end)
            & pl.col("last_active").is_not_null()
            & (silent >= s.silent_days)
        )
        .with_columns(silent.alias("days_silent"))
        .rename({"date": "partition_date"})
        .pipe(on_customer_days, accounts, start, end)
    )
    if hits.height == 0:
        return empty_signals()
    return conform(
        hits.with_columns(
            pl.lit("silent_account").alias("type"),
            pl.lit("").alias("subject"),
            (0.6 + 0.4 * (pl.col("days_silent") / (4.0 * s.silent_days)).clip(0.0, 1.0)).alias(
                "severity"
            ),
            pl.lit(0.9).alias("confidence"),
            pl.concat_list(
                evidence_item(
                    pl.lit(
                        "days without usage, a meeting or an inbound message"
                        if contact_on_record
                        else "days without usage (no communication on record)"
                    ),
                    pl.col("days_silent"),
                    pl.format("last activity on {}", pl.col("last_active")),
                    "usage_daily, communications, meetings" if contact_on_record else "usage_daily",
                )
            ).alias("evidence"),
            pl.struct(
                pl.col("days_silent"),
                pl.col("last_active").cast(pl.String).alias("last_active"),
                pl.lit(contact_on_record).alias("communications"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def detect_champion_left(
    contacts: pl.DataFrame,
    attendees: pl.DataFrame,
    meetings: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: RiskSettings,
    history_days: int,
) -> pl.DataFrame:
    """A champion or executive sponsor left (left_on <= D), for champion_window_days, with the
    meetings they attended in the `history_days` up to D (what a run of D alone reads: a range
    run reads further back and further on, and must count the same)."""
    if contacts.height == 0:
        return empty_signals()
    left = (
        contacts.filter(
            pl.col("role").is_in(list(s.champion_roles)) & pl.col("left_on").is_not_null()
        )
        .with_columns(
            _window_days(contacts, "left_on", s.champion_window_days).alias("partition_date")
        )
        .explode("partition_date")
        .filter(pl.col("partition_date").is_between(start, end))
        .pipe(on_customer_days, accounts, start, end)
    )
    if left.height == 0:
        return empty_signals()
    attended = attendances(attendees, meetings, left["contact_id"])
    met = (
        left.select("contact_id", "partition_date")
        .unique()
        .join(attended, on="contact_id", how="inner")
        .filter(
            pl.col("met_on").is_between(
                pl.col("partition_date") - pl.duration(days=history_days),
                pl.col("partition_date"),
            )
        )
        .group_by("contact_id", "partition_date")
        .len("meetings_attended")
    )
    left = left.join(met, on=["contact_id", "partition_date"], how="left").with_columns(
        pl.col("meetings_attended").fill_null(0)
    )
    return conform(
        left.with_columns(
            pl.lit("champion_left").alias("type"),
            pl.col("contact_id").alias("subject"),
            pl.when(pl.col("role") == "executive_sponsor")
            .then(0.9)
            .otherwise(0.8)
            .alias("severity"),
            pl.lit(0.95).alias("confidence"),
            evidence_list(
                evidence_item(
                    pl.format("{} left: {} ({})", pl.col("role"), pl.col("name"), pl.col("title")),
                    (pl.col("partition_date") - pl.col("left_on")).dt.total_days(),
                    pl.format("days since leaving on {}", pl.col("left_on")),
                    "contacts",
                ),
                evidence_item(
                    pl.lit(f"meetings they attended in the last {history_days} days"),
                    pl.col("meetings_attended"),
                    pl.lit("meeting_attendees"),
                    "meeting_attendees",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("name").alias("contact_name"),
                pl.col("title").alias("contact_title"),
                pl.col("role").str.replace("_", " ").alias("contact_role"),
                pl.col("left_on").cast(pl.String),
                pl.col("meetings_attended"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def detect_health_drop(
    health: pl.DataFrame, accounts: pl.DataFrame, start: date, end: date, s: RiskSettings
) -> pl.DataFrame:
    """Latest health score vs the median of the baseline window ending health_gap_days before D:
    a drop of at least health_drop_points and of health_noise_k robust sds of the account's own
    day-to-day variation."""
    if health.height == 0:
        return empty_signals()
    b, gap = s.health_baseline_days, s.health_gap_days
    # the grid reaches the noise's look-back (2b + gap days) and a reading's predecessor
    # (READING_GAP_DAYS) before it, so a run of one day sees what a range run sees
    first = start - timedelta(days=2 * b + gap + READING_GAP_DAYS)
    rows = health.filter(pl.col("date").is_between(first, end))  # the grid starts at `first`
    # A dense customer x day matrix (customers sorted, days from `first`), scores carried
    # forward within the customer; the two medians evaluated only on the run's days, over the
    # b days ending `gap` days back (`_lagged_median`: polars' rolling median on those rows).
    ids = rows["customer_id"].unique().sort()
    n_days = (end - first).days + 1
    seen, customer = customer_index(rows, ids)
    seen = seen.with_columns(pl.Series("_c", customer))
    cells = customer * n_days + (seen["date"] - first).dt.total_days().to_numpy()
    scores = seen["score"].cast(pl.Float64).to_numpy()
    matrix = np.full((ids.len(), n_days), np.nan)
    # A day's score is the mean of its rows: a cell's only row is taken as it is (its mean),
    # the few repeated cells averaged by polars (a group-by of every row by string was most of
    # the time, and there is usually one row per account and day).
    repeated = np.bincount(cells, minlength=matrix.size)[cells] > 1
    matrix.flat[cells[~repeated]] = scores[~repeated]
    if repeated.any():
        means = seen.filter(pl.Series(repeated)).group_by("_c", "date").agg(pl.col("score").mean())
        matrix.flat[
            means["_c"].to_numpy() * n_days + (means["date"] - first).dt.total_days().to_numpy()
        ] = means["score"].cast(pl.Float64).to_numpy()
    last_seen = np.maximum.accumulate(np.where(np.isnan(matrix), 0, np.arange(n_days)), axis=1)
    score = np.take_along_axis(matrix, last_seen, axis=1)  # forward filled (NaN before any)
    # The noise is the change from one reading to the next, on the reading's day: a weekly
    # score carried forward would show six days without change a week, a noise of ~0, and let
    # the 15 points alone decide on an account whose readings swing by 10.
    # A change counts when the reading before it is at most READING_GAP_DAYS earlier.
    change = np.full_like(score, np.nan)
    days = np.arange(1, n_days)
    recent = days - last_seen[:, :-1] <= READING_GAP_DAYS
    change[:, 1:] = np.where(
        np.isnan(matrix[:, 1:]) | ~recent, np.nan, np.abs(score[:, 1:] - score[:, :-1])
    )
    position = np.tile(np.arange(n_days), ids.len())
    wanted_day = np.arange(n_days)[(start - first).days :]
    rows = (np.arange(ids.len())[:, None] * n_days + wanted_day[None, :]).ravel()
    lags = range(gap, gap + b)
    # A median is at most the largest value of its window: a row whose window's highest score
    # is not health_drop_points above its own score cannot drop, and is left out before the
    # medians (most of their time) and the frame (the rule below is applied to the rest as is).
    peak = _trailing_max_at(score, b, wanted_day - gap).ravel()
    with np.errstate(invalid="ignore"):
        rows = rows[(rows % n_days >= gap) & (peak - score.ravel()[rows] >= s.health_drop_points)]
    stats = pl.DataFrame(
        {
            "customer_id": ids.gather(rows // n_days),
            "date": pl.Series((rows % n_days).astype(np.int32) + _epoch_day(first)).cast(pl.Date),
            "score": pl.Series(score.ravel()[rows], nan_to_null=True),
            "baseline": pl.Series(
                _lagged_median(score.ravel(), position, rows, lags, b // 2), nan_to_null=True
            ),
            "noise_mad": pl.Series(
                _lagged_median(
                    change.ravel(), position, rows, range(gap, gap + 2 * b), MIN_NOISE_READINGS
                ),
                nan_to_null=True,
            ),
        }
    )
    drop = pl.col("baseline") - pl.col("score")
    noise = (MAD_TO_SD * pl.col("noise_mad")).clip(lower_bound=1.0)
    hits = (
        stats.filter(
            pl.col("baseline").is_not_null()
            & (drop >= s.health_drop_points)
            & (drop >= s.health_noise_k * noise)
        )
        .rename({"date": "partition_date"})
        .pipe(on_customer_days, accounts, start, end)
        .with_columns(drop.alias("drop"))
    )
    if hits.height == 0:
        return empty_signals()
    return conform(
        hits.with_columns(
            pl.lit("health_drop").alias("type"),
            pl.lit("").alias("subject"),
            (pl.col("drop") / 40.0).clip(0.3, 1.0).alias("severity"),
            pl.lit(0.8).alias("confidence"),
            pl.concat_list(
                evidence_item(
                    pl.lit("health score"),
                    pl.col("score").round(0),
                    pl.format(
                        "median {} over the {} days before last week",
                        pl.col("baseline").round(0),
                        b,
                    ),
                    "health_scores",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("score").round(0).alias("score"),
                pl.col("baseline").round(0).alias("baseline"),
                pl.col("drop").round(0).alias("drop_points"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def _trailing_max_at(matrix: np.ndarray, width: int, columns: np.ndarray) -> np.ndarray:
    """`_trailing_max(matrix, width)[:, columns]`: a few columns (a day's run reads one) each
    from its own window, whole windows only; many by doubling spans over the whole matrix."""
    passes = max(1, width.bit_length())
    few = 0 < columns.size and columns.size * width <= passes * matrix.shape[1]
    if few and columns.min() >= width - 1:
        windows = np.lib.stride_tricks.sliding_window_view(matrix, width, axis=1)
        return np.fmax.reduce(windows[:, columns - (width - 1), :], axis=2)
    return _trailing_max(matrix, width)[:, columns]


def _trailing_max(matrix: np.ndarray, width: int) -> np.ndarray:
    """Per cell: the largest non-NaN value of the `width` cells of its row ending on it (NaN if
    none), by doubling spans: a few passes over the matrix, not a window per cell."""
    out, span = matrix.copy(), 1
    while span < width:
        step = min(span, width - span)
        if step < out.shape[1]:  # (numpy reads the overlapping right-hand side before writing)
            out[:, step:] = np.fmax(out[:, step:], out[:, : out.shape[1] - step])
        span += step
    return out


def ticket_population(
    tickets: pl.DataFrame, sample: pl.DataFrame, window_start: date, end: date, s: RiskSettings
) -> pl.DataFrame:
    """(date, factor) per day to `end`: how many times their usual a fixed sample of all
    accounts (`sample`: their contract starts and churn dates) filed tickets over the
    support_window_days ending that day, at its lower bound (`population_sds` Poisson sds below
    the count: chance never raises it) and at least 1. The usual is the same weekday's mean
    tickets per customer over the baseline before (`population_days`). An incident that makes most
    accounts file at once is no one account's surge (`detect_support_surge` scales its expected
    count by this)."""
    schema = {"date": pl.Date, "factor": pl.Float64}
    days = pl.col("opened_at").dt.date()
    events = tickets.filter(days.is_between(window_start, end)).select(days.alias("date"))
    if events.height == 0 or sample.height == 0:
        return pl.DataFrame(schema=schema)
    # a mean: tickets are rare, and a median of small counts is below their mean
    w = s.support_window_days
    frame = population_days(
        events["date"], sample, end, s.support_baseline_days, median=False
    ).with_columns(
        pl.col("events").rolling_sum(w, min_samples=w).alias("filed"),
        pl.col("usual").rolling_sum(w, min_samples=w).alias("expected"),
    )
    filed, expected = pl.col("filed"), pl.col("expected")
    bound = (filed - s.population_sds * filed.sqrt()) / expected
    # rounded: a range's running sums start earlier than a day's, and may differ in the last bit
    factor = pl.when(expected > 0).then(pl.max_horizontal(bound, 1.0).round(3)).otherwise(1.0)
    return frame.select("date", factor.fill_null(1.0).alias("factor"))


def detect_support_surge(
    tickets: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: RiskSettings,
    since: date | None = None,
    population: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Priority-weighted tickets over the last window well above the account's own baseline
    (the count's Poisson test scaled by the account's own clustering: `excess_dispersion`; the
    baseline by how far above theirs everyone's tickets run, `population`: `ticket_population`,
    as an incident that makes most accounts file is no one account's surge), or an
    escalation: urgent tickets in the last urgent_window_days that the account's own urgent rate
    makes rare (`urgent_alpha`). The rates are over the baseline days on record
    (`DayGrid.days_on_record`: from `since`, the table's first day, and the contract start)."""
    if tickets.height == 0:
        return empty_signals()
    w, b = s.support_window_days, s.support_baseline_days
    events = tickets.select(
        "customer_id",
        pl.col("opened_at").dt.date().alias("date"),
        pl.col("priority")
        .replace_strict(s.priority_weights, default=1.0, return_dtype=pl.Float64)
        .alias("weight"),
        (pl.col("priority") == "urgent").cast(pl.Float64).alias("urgent"),
    )
    grid = DayGrid.build(accounts["customer_id"], start - timedelta(days=w + b), end)
    tickets_n, weight_n, urgent_n = grid.counts(events, None, "weight", "urgent")
    cells = grid.cells(start, end)
    count = tickets_n.trailing_sum(cells, w)
    urgent = urgent_n.trailing_sum(cells, s.urgent_window_days, partial=True)
    # An urgent ticket is an escalation when that many in the window are rare at the account's
    # own urgent rate (the baseline days before the window): any for an account that had none,
    # two or more in days for one that files an urgent ticket every few weeks.
    # (Only the cells with an urgent ticket can be one: the rate and the test on those alone.)
    urgent_cells = np.flatnonzero(urgent > 0)
    at = cells[urgent_cells]
    urgent_days = grid.days_on_record(at, accounts, since, b, s.urgent_window_days)
    usual_urgent = np.nan_to_num(
        urgent_n.trailing_sum(at, b, lag=s.urgent_window_days)
        / np.maximum(urgent_days, 1)
        * s.urgent_window_days
    )
    escalation = np.zeros(cells.size, dtype=bool)
    escalation[urgent_cells] = (
        poisson_tail(np.nan_to_num(urgent[urgent_cells]), usual_urgent) < s.urgent_alpha
    )
    # Only cells with enough tickets or an escalation can hit (both conditions are also in the
    # filter below): the test statistics are computed on those few, and the days on record
    # read only there.
    busy = count >= s.min_support_tickets
    read = np.flatnonzero(busy | escalation)
    on_record = np.zeros(cells.size, dtype=np.int64)
    on_record[read] = grid.days_on_record(cells[read], accounts, since, b, w)
    keep = (busy & (on_record >= s.min_support_baseline_days)) | escalation
    on_record = np.maximum(on_record[keep], 1)
    cells = cells[keep]
    stats = grid.frame(
        cells,
        recent=weight_n.trailing_sum(cells, w),
        expected=weight_n.trailing_sum(cells, b, lag=w) / on_record * w,
        tickets=count[keep],
        count_expected=tickets_n.trailing_sum(cells, b, lag=w) / on_record * w,
        judged=on_record >= s.min_support_baseline_days,
        recent_urgent=urgent[keep],
        escalation=escalation[keep],
    )
    if population is not None and population.height:
        # (in the cells' order: the burstiness below is read at `cells` by position)
        stats = stats.join(population, on="date", how="left", maintain_order="left").with_columns(
            pl.col("expected", "count_expected") * pl.col("factor").fill_null(1.0)
        )
    else:
        stats = stats.with_columns(factor=pl.lit(1.0))
    stats = stats.with_columns(
        poisson_g(pl.col("tickets"), pl.col("count_expected")).alias("g_count")
    )
    surge = (
        pl.col("judged")
        & (pl.col("recent") >= s.min_support_weight)
        & (pl.col("recent") >= s.support_ratio * pl.col("expected"))
        & (pl.col("tickets") >= s.min_support_tickets)
        & (pl.col("g_count") >= s.support_g)
    )
    # A surge by the Poisson test is judged again against the account's own clusters of tickets
    # (an incident files several at once): its statistic scaled by their dispersion.
    rise = stats.select(surge).to_series().to_numpy()
    dispersion = np.ones(cells.size)
    dispersion[rise] = excess_dispersion(tickets_n, cells[rise], on_record[rise], w, b)
    stats = stats.with_columns(pl.col("g_count") / pl.Series(dispersion))
    hits = (
        stats.filter(surge | pl.col("escalation"))
        .rename({"date": "partition_date"})
        .pipe(on_customer_days, accounts, start, end)
    )
    if hits.height == 0:
        return empty_signals()
    ratio = pl.col("recent") / pl.col("expected").clip(lower_bound=0.5)
    return conform(
        hits.with_columns(
            pl.lit("support_surge").alias("type"),
            pl.lit("").alias("subject"),
            pl.max_horizontal(
                (ratio.log() / pl.lit(16.0).log()).clip(0.2, 1.0),
                pl.when(pl.col("escalation")).then(0.75).otherwise(0.0),
            ).alias("severity"),
            pl.lit(0.85).alias("confidence"),
            evidence_list(
                evidence_item(
                    pl.format("priority-weighted tickets, last {} days", w),
                    pl.col("recent"),
                    pl.when(pl.col("factor") > 1.0)
                    .then(
                        pl.format(
                            "usual for {} days: {} (everyone's tickets at {}x their usual)",
                            w,
                            pl.col("expected").round(1),
                            pl.col("factor").round(1),
                        )
                    )
                    .otherwise(pl.format("usual for {} days: {}", w, pl.col("expected").round(1))),
                    "support_tickets",
                ),
                evidence_item(
                    pl.format("urgent tickets, last {} days", s.urgent_window_days),
                    pl.col("recent_urgent"),
                    pl.lit(f"urgent = weight {s.priority_weights.get('urgent', 1.0):g}"),
                    "support_tickets",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("recent").round(1).alias("weighted_tickets"),
                pl.col("expected").round(1).alias("usual_weighted"),
                # (an escalation on a record too short to know its usual: trial 7b's accounts
                # 0-13 days old read "against about 0 usually")
                pl.col("judged").alias("usual_known"),
                pl.col("recent_urgent").cast(pl.Int64).alias("urgent_tickets"),
                pl.lit(w).alias("window_days"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def detect_detractor_nps(
    nps: pl.DataFrame,
    contacts: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: RiskSettings,
) -> pl.DataFrame:
    """An NPS response of 0-6 in the last nps_window_days, weighted by the responder's role."""
    if nps.height == 0:
        return empty_signals()
    roles = contacts.select("contact_id", "role", "name", "title") if contacts.height else None
    frame = nps.filter(pl.col("score") <= s.detractor_max_score)
    if roles is not None:
        frame = frame.join(roles, on="contact_id", how="left")
    else:
        frame = frame.with_columns(
            pl.lit(None, pl.String).alias("role"),
            pl.lit(None, pl.String).alias("name"),
            pl.lit(None, pl.String).alias("title"),
        )
    frame = (
        frame.with_columns(
            _window_days(frame, "responded_on", s.nps_window_days).alias("partition_date")
        )
        .explode("partition_date")
        .filter(pl.col("partition_date").is_between(start, end))
        .pipe(on_customer_days, accounts, start, end)
    )
    if frame.height == 0:
        return empty_signals()
    weight = pl.col("role").replace_strict(s.role_weights, default=0.5, return_dtype=pl.Float64)
    return conform(
        frame.with_columns(
            pl.lit("detractor_nps").alias("type"),
            pl.col("contact_id").fill_null("").alias("subject"),
            ((0.4 + 0.6 * (7.0 - pl.col("score")) / 7.0) * weight).clip(0.1, 1.0).alias("severity"),
            pl.lit(0.9).alias("confidence"),
            pl.concat_list(
                evidence_item(
                    pl.format(
                        "NPS from {} ({})",
                        pl.col("name").fill_null("a contact"),
                        pl.col("role").str.replace_all("_", " ").fill_null("unknown role"),
                    ),
                    pl.col("score"),
                    pl.format("responded on {}; 0-6 is a detractor", pl.col("responded_on")),
                    "nps_responses",
                )
            ).alias("evidence"),
            pl.struct(
                pl.col("score").cast(pl.Int64).alias("score"),
                pl.col("name").fill_null("a contact").alias("contact_name"),
                pl.col("role").fill_null("contact").str.replace("_", " ").alias("contact_role"),
                pl.col("responded_on").cast(pl.String),
                pl.col("comment"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )

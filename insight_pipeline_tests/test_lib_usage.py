"""Usage detectors on synthetic series: planted drops, spikes and trends are found on the right
customer within the stated delay, clean customers stay quiet, and nothing after day D is used."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from insight_pipeline.lib.detectors.common import mann_kendall_threshold, run_positions
from insight_pipeline.lib.detectors.usage import (
    KEYS,
    Population,
    Populations,
    _best_of_weeks_z,
    _DenseGrid,
    _epoch_day,
    _grid_until,
    _lagged_median,
    _LookBackCut,
    _mann_kendall_s,
    _mann_kendall_s_at,
    _readable,
    _series_codes,
    _series_rolling_median,
    _shown,
    _sorted_codes,
    _test_weeks,
    _trend_stats_of_grid,
    _young_rows,
    anomaly_rows,
    carry_last_before,
    cohort_members,
    dense_usage,
    detect_usage_anomalies,
    detect_usage_trends,
    population_shifts,
    population_trends,
    rows_since,
    seen_between,
    series_last_before,
    series_starts,
    trailing_sums,
    usage_baselines,
    usage_baselines_and_trends,
    usage_reach_days,
    usage_trends,
    weekly_trend_stats,
    without_unknown_weeks,
    young_days,
)
from insight_pipeline.lib.insights.narrate import TemplateNarrator, narrative_context
from insight_pipeline.lib.settings import Settings, UsageSettings
from insight_pipeline_tests.synthetic import (
    USAGE_SCHEMA,
    WEEKDAY_SHAPE,
    ramp,
    step,
    usage_series,
)

END = date(2026, 6, 30)
DAYS = 240
S = UsageSettings()


def _anomalies(usage: pl.DataFrame, first: date, last: date) -> pl.DataFrame:
    return detect_usage_anomalies(usage_baselines(usage, first, last, S), S)


def _trends(usage: pl.DataFrame, first: date, last: date) -> pl.DataFrame:
    return detect_usage_trends(weekly_trend_stats(usage, first, last, S), S)


def day_of(index: int) -> date:
    return END - timedelta(days=DAYS - 1 - index)


@pytest.mark.parametrize("factor", [0.2, 0.45])
def test_planted_drop_found_within_a_week(factor: float) -> None:
    at = 180
    usage = usage_series(30, DAYS, END, multipliers={3: step(DAYS, at, factor)})
    found = _anomalies(usage, day_of(150), END)
    drops = found.filter((pl.col("customer_id") == "C0003") & (pl.col("type") == "usage_drop"))
    assert drops.height > 0
    delay = (drops["partition_date"].min() - day_of(at)).days
    assert 0 <= delay <= 7
    # No drop raised before the pattern began (no detection out of thin air).
    assert drops["partition_date"].min() >= day_of(at)


def test_single_day_spike_found_on_its_day() -> None:
    at = 200
    mult = np.ones(DAYS)
    mult[at] = 4.0
    usage = usage_series(30, DAYS, END, multipliers={7: mult}, seed=3)
    found = _anomalies(usage, day_of(190), END)
    spikes = found.filter((pl.col("customer_id") == "C0007") & (pl.col("type") == "usage_spike"))
    assert day_of(at) in spikes["partition_date"].to_list()


def test_clean_customers_stay_quiet_over_a_quarter() -> None:
    """Under one false usage alert per clean customer per quarter (measured rate asserted)."""
    customers = 200
    usage = usage_series(customers, DAYS, END, seed=11)
    first = END - timedelta(days=89)
    anomalies = _anomalies(usage, first, END)
    trends = _trends(usage, first, END)
    # Count alerts as episodes: consecutive days of one pattern are one alert.
    alerts = pl.concat([anomalies, trends]).select("customer_id", "type", "subject").unique()
    rate = alerts.height / customers
    assert rate < 0.2, f"{rate:.2f} false alerts per clean customer per quarter"


@pytest.mark.parametrize(("rate", "kind"), [(0.12, "adoption_trend"), (-0.12, "declining_usage")])
def test_gradual_trend_found_within_six_weeks(rate: float, kind: str) -> None:
    at = 150
    usage = usage_series(20, DAYS, END, multipliers={5: ramp(DAYS, at, rate, weeks=8)}, seed=5)
    found = _trends(usage, day_of(140), END)
    hits = found.filter((pl.col("customer_id") == "C0005") & (pl.col("type") == kind))
    assert hits.height > 0
    delay = (hits["partition_date"].min() - day_of(at)).days
    assert 0 <= delay <= 42
    others = found.filter(pl.col("customer_id") != "C0005")
    assert others.height <= 1


def _noisy(customers: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Day-to-day noise of real usage (lognormal, ~30%), far above the counts' Poisson noise."""
    return {i: rng.lognormal(0.0, 0.3, DAYS) for i in range(customers)}


def test_noisy_gradual_decline_found_though_weeks_do_not_fall_in_a_row() -> None:
    """A decline of 7% a week for 9 weeks in usage with 30% day-to-day noise seldom falls three
    weeks in a row (that rule found 10 of 30, and one clean account); the trend across the
    weeks is found in most accounts, never before two weeks of it, and clean ones stay quiet."""
    found_planted = clean_alarms = 0
    for seed in (1, 2, 3):
        rng = np.random.default_rng(100 + seed)
        multipliers = _noisy(40, rng)
        for i in range(10):
            multipliers[i] = multipliers[i] * ramp(DAYS, 160, -0.07, weeks=9)
        usage = usage_series(40, DAYS, END, multipliers=multipliers, seed=seed)
        declines = _trends(usage, day_of(160), END).filter(pl.col("type") == "declining_usage")
        planted = pl.col("customer_id").is_in([f"C{i:04d}" for i in range(10)])
        first = declines.filter(planted).group_by("customer_id").agg(pl.col("partition_date").min())
        assert first["partition_date"].min() >= day_of(160) + timedelta(days=14)
        found_planted += first.height
        clean_alarms += declines.filter(~planted)["customer_id"].n_unique()
    assert found_planted >= 15, f"{found_planted} of 30 slow declines found"
    assert clean_alarms == 0, f"{clean_alarms} of 90 clean accounts declining"


def test_a_small_step_down_or_one_bad_week_is_not_a_declining_trend() -> None:
    """A level that dropped 20% once and stayed, and a single bad week in a flat series, are
    not a decline across the weeks (a line fitted through the step would call it a 40% slide),
    while a 40% step that stays is one: the weeks after it all sit below the weeks before."""
    week_off = np.ones(DAYS)
    week_off[200:207] = 0.3
    multipliers = {1: step(DAYS, 205, 0.8), 2: week_off, 3: step(DAYS, 205, 0.6)}
    usage = usage_series(20, DAYS, END, multipliers=multipliers, seed=8)
    declines = _trends(usage, day_of(170), END).filter(pl.col("type") == "declining_usage")
    assert set(declines["customer_id"]) == {"C0003"}
    facts = declines["facts"].str.json_decode()
    assert facts.struct.field("change_pct").is_between(-45, -35).all()


def test_a_dips_recovery_rising_three_weeks_is_not_adoption() -> None:
    """Usage at 110% until seven weeks ago, then a dip to 65% and five weekly rises back to
    120%: five rises in a row, +85% and a clean log-linear fit over six weeks, but no sustained
    rise across the weeks (usage is back where it was), so no adoption_trend; the same six
    weeks after a level as low as the dip are one."""
    recovery = np.full(DAYS, 1.1)
    growth = np.full(DAYS, 0.65)
    for weeks_back, level in enumerate([1.2, 1.05, 0.95, 0.85, 0.75, 0.65]):
        days = slice(DAYS - 7 * weeks_back - 7, DAYS - 7 * weeks_back)
        recovery[days] = growth[days] = level
    usage = usage_series(10, DAYS, END, level=1000.0, multipliers={1: recovery, 2: growth}, seed=6)
    stats = weekly_trend_stats(usage, END, END, S)
    assert stats.filter(pl.col("customer_id") == "C0001")["weeks_up"].item() == 5
    adoption = detect_usage_trends(stats, S).filter(pl.col("type") == "adoption_trend")
    assert adoption["customer_id"].to_list() == ["C0002"]


def test_the_end_of_a_seasons_lull_is_no_adoption_and_a_rise_above_it_is() -> None:
    """Five weeks at 70% (December and a holiday, too shallow a day at a time to be the
    population's), then four weekly rises back to the usual level: three rises in a row, +40%,
    a clean fit and most week pairs higher later, but usage ends where it stood before the
    rise's weeks (`BEFORE_TREND_WEEKS`), so no adoption_trend; the same lull followed by a rise
    to 150% is one."""
    lull = np.ones(DAYS)
    lull[DAYS - 63 : DAYS - 28] = 0.7
    for weeks_back, level in enumerate([1.0, 0.93, 0.85, 0.78]):
        lull[DAYS - 7 * weeks_back - 7 : DAYS - 7 * weeks_back] = level
    rise = lull.copy()
    for weeks_back, level in enumerate([1.5, 1.3, 1.1, 0.9]):
        rise[DAYS - 7 * weeks_back - 7 : DAYS - 7 * weeks_back] = level
    multipliers = {i: lull for i in range(20)} | {i: rise for i in range(5)}
    usage = usage_series(20, DAYS, END, level=1000.0, multipliers=multipliers, seed=8)
    stats = weekly_trend_stats(usage, END, END, S)
    back = stats.filter(pl.col("customer_id") == "C0010")
    assert back["weeks_up"].item() >= 3 and back["run_change"].item() > 0.3
    adoption = detect_usage_trends(stats, S).filter(pl.col("type") == "adoption_trend")
    found, risen = set(adoption["customer_id"]), {f"C{i:04d}" for i in range(5)}
    assert found <= risen and len(found) >= 4, found


def test_a_young_series_new_pattern_does_not_wait_for_a_long_trend_window() -> None:
    """A level step in a series 80 days old is a new pattern on the same days whatever the
    trend test's window: a window the series cannot fill yet (16 weeks) is no trend and no bar
    to the pattern test."""
    usage = usage_series(10, DAYS, END, level=400.0, multipliers={1: step(DAYS, 200, 1.8)}).filter(
        pl.col("date") >= day_of(120)
    )
    changes = [
        detect_usage_trends(weekly_trend_stats(usage, day_of(190), END, st), st)
        .filter((pl.col("type") == "usage_pattern_change") & (pl.col("customer_id") == "C0001"))
        .get_column("partition_date")
        .to_list()
        for st in (S, replace(S, trend_test_weeks=16))
    ]
    assert changes[0] and changes[0] == changes[1]


def test_no_look_ahead_same_result_on_cut_source() -> None:
    usage = usage_series(40, DAYS, END, multipliers={2: step(DAYS, 200, 0.3)}, seed=9)
    day = day_of(205)
    full = _anomalies(usage, day, day)
    cut = _anomalies(usage.filter(pl.col("date") <= day), day, day)
    assert full.height > 0
    assert full.sort("customer_id", "type").equals(cut.sort("customer_id", "type"))


def test_range_equals_single_days() -> None:
    usage = usage_series(25, DAYS, END, multipliers={1: step(DAYS, 190, 0.3)}, seed=4)
    first, last = day_of(185), day_of(200)
    ranged = _anomalies(usage, first, last)
    singles = pl.concat(
        [
            _anomalies(usage, first + timedelta(days=i), first + timedelta(days=i))
            for i in range((last - first).days + 1)
        ]
    )
    key = ["customer_id", "type", "partition_date"]
    assert ranged.height > 0
    assert ranged.sort(key).equals(singles.sort(key))


def test_baselines_and_trends_from_one_grid_equal_each_on_its_own() -> None:
    """The daily step derives both from one dense grid: neither may disturb the other's input
    (a churned customer, a planted drop and a planted trend included)."""
    usage = usage_series(
        30,
        DAYS,
        END,
        multipliers={1: step(DAYS, 190, 0.3), 2: ramp(DAYS, 150, 0.15, weeks=8)},
        seed=6,
    )
    churned = pl.DataFrame({"customer_id": ["C0005"], "churned_on": [day_of(200)]})
    first, last = day_of(180), END
    baselines, trends = usage_baselines_and_trends(usage, first, last, S, churned)
    alone = usage_baselines(usage, first, last, S, churned)
    assert baselines.height > 0 and (baselines["direction"] != 0).any()
    assert baselines.equals(alone)
    assert trends.height > 0
    assert trends.equals(detect_usage_trends(weekly_trend_stats(usage, first, last, S, churned), S))


@pytest.mark.parametrize(
    "settings",
    [
        S,
        UsageSettings(trend_consecutive_weeks=2, trend_weeks=8),
        UsageSettings(min_effect=0.1),
        UsageSettings(trend_consecutive_weeks=0),
        UsageSettings(trend_consecutive_weeks=6),
        UsageSettings(trend_test_weeks=14),
    ],
    ids=[
        "default",
        "longer-window",
        "smaller-effect",
        "no-run-needed",
        "run-longer-than-window",
        "long-decline-window",
    ],
)
def test_trend_candidates_keep_every_signal(settings: UsageSettings) -> None:
    """The trend signals computed on the candidate rows only (the pipeline's path) are those of
    the full statistics, for rises, falls, level steps and a weekend shift, while most rows of
    the range (noise) are never given the expensive statistics."""
    weekend = np.array([(END - timedelta(days=DAYS - 1 - d)).weekday() >= 5 for d in range(DAYS)])
    shift = np.where(weekend & (np.arange(DAYS) >= 170), 3.0, 1.0)
    multipliers = {
        1: ramp(DAYS, 140, 0.15, weeks=8),
        2: ramp(DAYS, 150, -0.12, weeks=8),
        3: step(DAYS, 175, 1.7),
        4: step(DAYS, 180, 0.55),
        5: shift,
        6: step(DAYS, 200, 0.0),  # goes silent: a drop, not a new pattern
    }
    usage = usage_series(40, DAYS, END, multipliers=multipliers, seed=21)
    # Series that start late, and series near the weekly volume floor (a level step among
    # them), sit on the edges of the history and volume tests.
    young = usage_series(
        30, DAYS, END, level=3.0, metric="events", multipliers={0: ramp(DAYS, 190, 0.2, 6)}
    ).filter(pl.col("date") >= day_of(150))
    small = usage_series(30, DAYS, END, level=4.5, metric="logins", seed=5)
    small_step = usage_series(
        1, DAYS, END, level=6.0, metric="logins", multipliers={0: step(DAYS, 215, 3.0)}, seed=4
    ).with_columns(pl.lit("C0999").alias("customer_id"))
    usage = pl.concat([usage, young, small, small_step])
    # A NaN value (rejected at the source, not by the detectors) gives the same signals too.
    # (one 14 days before the end; one 84, in a decline, where only a long window reaches)
    nan_day = ((pl.col("customer_id") == "C0010") & (pl.col("date") == day_of(225))) | (
        (pl.col("customer_id") == "C0002") & (pl.col("date") == day_of(155))
    )
    nan_value = pl.when(nan_day).then(float("nan")).otherwise("value").alias("value")
    usage = usage.with_columns(nan_value)
    first = day_of(120)
    full = weekly_trend_stats(usage, first, END, settings)
    candidates = _trend_stats_of_grid(
        _grid_until(usage, END, None), first, END, settings, only_candidates=True
    )
    expected = detect_usage_trends(full, settings)
    _, found = usage_baselines_and_trends(usage, first, END, settings)
    run_possible = 0 < settings.trend_consecutive_weeks < settings.trend_weeks
    if run_possible:
        assert {"adoption_trend", "declining_usage"} <= set(expected["type"])
    assert "usage_pattern_change" in set(expected["type"])
    assert found.equals(expected)
    if settings.trend_consecutive_weeks > 0:  # (with no run needed, every row is a candidate)
        assert candidates.height < full.height / 2


@pytest.mark.parametrize("weeks", [6, 8, 16])
def test_mann_kendall_counted_by_lag_over_the_grid_equals_counting_each_rows_pairs(
    weeks: int,
) -> None:
    """The two ways to count the trend test's S (falls minus rises) and NaN weeks - each row's
    pairs of week sums gathered (a day's run), or each lag compared once over the whole grid
    and added in at its offsets (a range) - agree on every row with its weeks in its series:
    series of many lengths, tied sums, NaN sums, rising and falling ones."""
    rng = np.random.default_rng(weeks)
    lengths = rng.integers(1, 200, 150)
    position = np.concatenate([np.arange(n) for n in lengths])
    direction = np.repeat(rng.choice([-1.0, 0.0, 1.0], lengths.size), lengths)
    w0 = np.round(rng.gamma(2.0, 5.0, position.size)) + 0.2 * position * direction
    w0[rng.random(position.size) < 0.01] = np.nan
    rows = np.flatnonzero(position >= 7 * weeks - 1)
    over_grid = [a[rows] for a in _mann_kendall_s(w0, weeks)]
    per_row = _mann_kendall_s_at(w0, rows, weeks)
    np.testing.assert_array_equal(over_grid[0], per_row[0])
    np.testing.assert_array_equal(over_grid[1], per_row[1])
    threshold = mann_kendall_threshold(weeks, 0.01)
    assert per_row[0].max() >= threshold and per_row[0].min() <= -threshold
    assert (per_row[1] > 0).any() and (per_row[0] == 0).any()


def test_rows_since_with_series_starts_learnt_once() -> None:
    """`rows_since` with the series' first days given (learnt from the whole window, in one pass
    for all parts and spans) yields the rows it finds by reading the older rows itself: series
    that begin before, on and after the opened day, and one with a gap across it."""
    usage = usage_series(12, DAYS, END, seed=3)
    late = (pl.col("customer_id") == "C0002") & (pl.col("date") < day_of(205))
    gap = (pl.col("customer_id") == "C0003") & pl.col("date").is_between(day_of(150), day_of(215))
    usage = usage.filter(~late & ~gap)
    keys = ["customer_id", "metric", "date", "value"]  # a begun series' 0 beside its row
    starts = series_starts(usage.lazy())
    assert starts.filter(pl.col("customer_id") == "C0002")["first_day"].item() == day_of(205)
    for opened in (day_of(200), day_of(205), day_of(210)):
        scan = usage.lazy().filter(pl.col("date") <= END)
        expected = rows_since(scan, opened)
        zeros = expected.filter((pl.col("date") == opened) & (pl.col("value") == 0))
        assert ("C0002" in zeros["customer_id"]) == (opened > day_of(205))
        given = rows_since(scan, opened, starts).select(keys)
        assert given.sort(keys).equals(expected.select(keys).sort(keys))
        # ... or their last days before it, learnt once or carried from an earlier span
        last = series_last_before(scan, opened)
        carried = carry_last_before(rows_since(scan, day_of(190)), opened)
        assert carried.sort("customer_id").equals(last.sort("customer_id"))
        both = ["customer_id", "metric", "date", "value", "last_before"]
        assert rows_since(scan, opened, last_before=carried).sort(both).equals(expected.sort(both))
    # the 0 added for the series with a gap across the opened day says when it was last seen
    added = rows_since(usage.lazy(), day_of(210)).filter(
        (pl.col("customer_id") == "C0003") & pl.col("last_before").is_not_null()
    )
    assert added["last_before"].to_list() == [day_of(149)]


def test_a_trend_window_too_short_is_refused_by_name() -> None:
    from insight_pipeline.lib.settings import Settings

    with pytest.raises(ValueError, match=r"usage\.trend_weeks=2"):
        Settings.from_dict({"usage": {"trend_weeks": 2}})
    assert Settings.from_dict({"usage": {"trend_weeks": 3}}).usage.trend_weeks == 3
    with pytest.raises(ValueError, match=r"usage\.trend_test_weeks=3"):
        Settings.from_dict({"usage": {"trend_test_weeks": 3}})
    with pytest.raises(ValueError, match=r"usage\.trend_alpha=0"):
        Settings.from_dict({"usage": {"trend_alpha": 0}})
    # 5 weeks have 10 pairs: none of their orderings is significant at 1%
    with pytest.raises(ValueError, match=r"usage\.trend_test_weeks=5: too few weeks"):
        Settings.from_dict({"usage": {"trend_test_weeks": 5}})
    assert Settings.from_dict({"usage": {"trend_test_weeks": 5, "trend_alpha": 0.05}})


def test_missing_rows_count_as_zero_usage() -> None:
    """A customer whose rows stop (not zeros: missing) is a drop, per the contract."""
    usage = usage_series(10, DAYS, END, seed=2)
    stop = day_of(210)
    usage = usage.filter(~((pl.col("customer_id") == "C0004") & (pl.col("date") >= stop)))
    found = _anomalies(usage, stop, END)
    drops = found.filter((pl.col("customer_id") == "C0004") & (pl.col("type") == "usage_drop"))
    assert drops.height > 0
    assert (drops["partition_date"].min() - stop).days <= 7


def test_lookback_window_is_enough() -> None:
    """Reading only `lookback_days` before D (what the source asset reads) changes nothing."""
    from insight_pipeline.lib.settings import Settings

    lookback = Settings().lookback_days
    usage = usage_series(40, DAYS, END, multipliers={2: ramp(DAYS, 150, 0.15, weeks=8)}, seed=8)
    day = day_of(200)
    cut = usage.filter(pl.col("date") >= day - timedelta(days=lookback))
    for detect in (_anomalies, _trends):
        full, windowed = detect(usage, day, day), detect(cut, day, day)
        assert full.sort("customer_id", "type").equals(windowed.sort("customer_id", "type"))
    stats_full = weekly_trend_stats(usage, day, day, S).sort("customer_id")
    stats_cut = weekly_trend_stats(cut, day, day, S).sort("customer_id")
    assert stats_full.equals(stats_cut)


@pytest.mark.parametrize(
    "settings", [S, replace(S, trend_weeks=4)], ids=["trend-reaches-furthest", "baselines-do"]
)
def test_each_day_of_a_range_is_judged_on_its_own_look_back(settings: UsageSettings) -> None:
    """A run of day D reads the rows of [D - lookback, D] only: a series that paused and
    resumed begins, for it, at its first row after the pause, and a series that stopped long
    ago is not there at all; a range reads further back and would see zeros in the pause (the
    baselines' history, scale and expected level then differ for weeks). With `lookback_days`
    the range gives, row for row, what each day alone gives on its own look-back, and so does
    a range given the whole history: pauses of 5 to 130 days ending at several distances from
    the range, a stopped account, a sparse export and a drop after a resumption."""
    lookback = Settings().lookback_days
    first = day_of(180)
    multipliers = {1: step(DAYS, 205, 0.3), 2: ramp(DAYS, 150, -0.12, weeks=8)}
    usage = usage_series(30, DAYS, END, level=300.0, multipliers=multipliers, seed=17)
    pauses = [5, 9, 10, 11, 12, 14, 20, 30, 45, 60, 80, 100, 111, 112, 113, 130]
    resumed = [95 + 3 * i for i in range(len(pauses))]
    for i, (pause, back) in enumerate(zip(pauses, resumed, strict=True)):
        paused = pl.col("date").is_between(day_of(back - pause), day_of(back - 1))
        usage = usage.filter(~((pl.col("customer_id") == f"C{i + 1:04d}") & paused))
    stopped = (pl.col("customer_id") == "C0020") & (pl.col("date") > day_of(75))
    sparse = (pl.col("customer_id") == "C0021") & pl.Series(
        np.random.default_rng(3).random(usage.height) < 0.3
    )
    usage = usage.filter(~stopped & ~sparse)
    key = ["customer_id", "subject", "partition_date", "type"]

    def run(frame: pl.DataFrame, a: date, b: date, cut: int | None = lookback) -> tuple:
        base, trends = usage_baselines_and_trends(frame, a, b, settings, lookback_days=cut)
        return base, trends.sort(key)

    def window(day: date) -> pl.DataFrame:
        return usage.filter(pl.col("date") >= day - timedelta(days=lookback))

    days = [first + timedelta(days=i) for i in range((END - first).days + 1)]
    alone = [run(window(day).filter(pl.col("date") <= day), day, day) for day in days]
    base_days = pl.concat([b for b, _ in alone]).sort(*KEYS, "partition_date")
    trend_days = pl.concat([t for _, t in alone]).sort(key)
    assert trend_days.filter(pl.col("customer_id") == "C0002").height > 0  # signals compared
    # a day's own look-back needs no cut (every row of it is in it), a range's does
    for day in (first, END):
        grid = _grid_until(window(day).filter(pl.col("date") <= day), day, None)
        assert _LookBackCut.of(grid, day, day, settings, lookback) is None
    assert _LookBackCut.of(_grid_until(window(first), END, None), first, END, settings, lookback)
    # the stopped account is there while its last row is in a day's look-back, then not
    last_seen = base_days.filter(pl.col("customer_id") == "C0020")["partition_date"].max()
    assert last_seen == day_of(75) + timedelta(days=lookback)
    for frame in (window(first), usage):
        base, trends = run(frame, first, END)
        assert base.equals(base_days)
        assert trends.equals(trend_days)
    # every trend statistic too (the weekly scale reads furthest back), not only the signals
    stats = weekly_trend_stats(usage, first, END, settings, lookback_days=lookback)
    stats_days = pl.concat(
        [
            weekly_trend_stats(window(day), day, day, settings, lookback_days=lookback)
            for day in days
        ]
    ).sort(*KEYS, "partition_date")
    assert stats.equals(stats_days)
    # the restarts were needed: judged on the range's look-back, some days differ
    assert not run(window(first), first, END, cut=None)[0].equals(base_days)
    # and the baselines, which keep every row, keep the part of a day's grid it begins with
    assert usage_baselines(usage, first, END, settings, lookback_days=lookback).equals(base_days)


def test_trend_statistics_of_fractional_usage_are_a_ranges_and_its_days_to_the_bit() -> None:
    """Usage in hours or gigabytes is no whole number: the week sums of a range and of a day
    alone are added in the same order (a running sum's rounding depends on where the grid
    starts), so every statistic is the same float, and every weekly total is its seven days'."""
    usage = usage_series(40, DAYS, END, level=200.0, seed=4).with_columns(
        pl.col("value") * 0.37 + 0.013
    )
    first = day_of(200)

    def window(day: date) -> pl.DataFrame:
        return usage.filter(pl.col("date") >= day - timedelta(days=112))

    ranged = weekly_trend_stats(window(first), first, END, S, lookback_days=112)
    for offset in range(0, 40, 3):
        day = first + timedelta(days=offset)
        alone = weekly_trend_stats(window(day), day, day, S, lookback_days=112)
        assert alone.equals(ranged.filter(pl.col("partition_date") == day)), day
    last = ranged.filter(pl.col("partition_date") == END).sort("customer_id")
    week = usage.filter(pl.col("date") > END - timedelta(days=7))
    totals = week.group_by("customer_id").agg(pl.col("value").sum()).sort("customer_id")
    # (in thousandths of their unit, as every measured quantity is judged: `_in_counting_units`)
    assert (last["_unit"] == 1000.0).all()
    in_own_unit = (last["w0"] / last["_unit"]).to_numpy()
    assert np.allclose(in_own_unit, totals["value"].to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("window", [7, 10, 28, 30])
def test_trailing_sums_are_the_window_sums_of_any_grid_however_short(window: int) -> None:
    """Every series of a grid, long or shorter than the window, and a whole grid shorter than
    the window's weeks: each row holds the sum of its window's days, NaN where the window is
    not wholly in its series."""
    rng = np.random.default_rng(3)
    for lengths in ([3, 40, 1, 65, 29], [5], [12, 3], [20]):
        position = np.concatenate([np.arange(n) for n in lengths])
        values = rng.gamma(2.0, 1.3, size=position.size)
        sums = trailing_sums(values, position, window)
        for row in range(values.size):
            if position[row] >= window - 1:
                assert sums[row] == pytest.approx(values[row - window + 1 : row + 1].sum())
            else:
                assert np.isnan(sums[row])


def test_a_short_restarted_series_in_a_range_is_judged_as_its_days() -> None:
    """An account that sent rows for a few days, paused five months and came back 61 days
    before the end: in a 41-day range its days are computed on a restarted copy of 60-odd rows,
    shorter than the weeks the trend reaches back over (no error; the same rows as each day)."""
    usage = usage_series(4, DAYS, END, level=150.0, seed=9)
    back = (pl.col("customer_id") == "C0003") & ~(
        pl.col("date").is_between(day_of(DAYS - 146), day_of(DAYS - 141))
        | (pl.col("date") >= day_of(DAYS - 61))
    )
    usage = usage.filter(~back)
    lookback = usage_reach_days(S) + 7
    first = day_of(DAYS - 41)
    window = usage.filter(pl.col("date") >= first - timedelta(days=lookback))
    ranged = weekly_trend_stats(window, first, END, S, lookback_days=lookback)
    assert ranged.filter(pl.col("customer_id") == "C0003").height > 0
    for offset in range(0, 41, 4):
        day = first + timedelta(days=offset)
        alone = usage.filter(pl.col("date").is_between(day - timedelta(days=lookback), day))
        found = weekly_trend_stats(alone, day, day, S, lookback_days=lookback)
        assert found.equals(ranged.filter(pl.col("partition_date") == day)), day


def test_a_look_back_shorter_than_the_statistics_reach_is_refused() -> None:
    """Eight trend weeks read 117 days back (their weekly scale): a 112-day look-back would
    judge a day on less history than that. The look-back holds a week more than the reach,
    so that a weekday-only export's weekends never restart a series in a range run."""
    with pytest.raises(ValueError, match=r"lookback_days=112: .* 117 days .* to 124 or more"):
        Settings.from_dict({"usage": {"trend_weeks": 8}})
    with pytest.raises(ValueError, match=r"lookback_days=120"):
        Settings.from_dict({"usage": {"trend_weeks": 8}, "lookback_days": 120})
    assert Settings.from_dict({"usage": {"trend_weeks": 8}, "lookback_days": 124})
    # usage growth's earlier weeks must lie before the day and within its look-back
    for weeks in (3, 17):
        with pytest.raises(ValueError, match=rf"opportunity\.growth_weeks={weeks}: from 4"):
            Settings.from_dict({"opportunity": {"growth_weeks": weeks}})
    with pytest.raises(ValueError, match=r"shorter than the usage reach"):
        usage_baselines(usage_series(2, 120, END), END, END, S, lookback_days=90)


def test_a_weekday_only_export_restarts_nothing() -> None:
    """Weekend days without rows are no pause: with the longest trend test the settings allow
    (16 weeks, its look-back a week beyond its reach), a range of weekday-only rows is judged
    without restarted copies, and equals its days."""
    settings = Settings.from_dict({"usage": {"trend_test_weeks": 16}, "lookback_days": 118})
    usage = usage_series(6, DAYS, END, level=200.0, seed=4).filter(pl.col("date").dt.weekday() <= 5)
    first = day_of(200)
    grid = _grid_until(usage, END, None)
    cut = _LookBackCut.of(grid, first, END, settings.usage, settings.lookback_days)
    assert cut is None or cut.restarted is None
    ranged = weekly_trend_stats(usage, first, END, settings.usage, lookback_days=118)
    for offset in range(0, 40, 3):
        day = first + timedelta(days=offset)
        window = usage.filter(pl.col("date").is_between(day - timedelta(days=118), day))
        alone = weekly_trend_stats(window, day, day, settings.usage, lookback_days=118)
        assert alone.equals(ranged.filter(pl.col("partition_date") == day)), day


def test_a_range_wholly_inside_a_restart_gives_its_days_statistics() -> None:
    """Every day of the range judged on a restarted copy (the grid itself has none left):
    the statistics are the copy's, with every column."""
    usage = usage_series(1, DAYS, END, level=300.0, seed=2).filter(
        ~pl.col("date").is_between(day_of(100), day_of(159))
    )
    first, last = day_of(215), day_of(225)
    ranged = weekly_trend_stats(usage, first, last, S, lookback_days=112)
    day = day_of(220)
    window = usage.filter(pl.col("date") >= day - timedelta(days=112))
    assert ranged.height == 11 and ranged.columns == weekly_trend_stats(window, day, day, S).columns
    assert ranged.filter(pl.col("partition_date") == day).equals(
        weekly_trend_stats(window, day, day, S, lookback_days=112)
    )


@pytest.mark.parametrize("nan_share", [0.01, 0.0])
@pytest.mark.parametrize("min_count", [3, 0])
@pytest.mark.parametrize("wanted", ["few rows (direct medians)", "every row (kernel pass)"])
def test_series_medians_equal_polars_rolling_median_over_series(
    wanted: str, min_count: int, nan_share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baselines' and trends' medians (`_series_rolling_median`, chunks of rows on threads)
    are polars' `shift(lag).rolling_median(window).over(series)`, value for value: NaN gaps,
    series shorter than the window, windows crossing series starts and windows of too few
    values (or none, with `min_count` 0) included; without NaN, the sorting network's whole
    windows take its pruned comparators. Small chunks put many chunks on the threads."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 60, size=300)
    series = np.repeat(np.arange(lengths.size), lengths)
    position = np.concatenate([np.arange(n) for n in lengths])
    values = np.round(rng.gamma(2.0, 3.0, size=series.size), 1)
    values[rng.random(series.size) < nan_share] = np.nan
    lag, window = 2, 7
    expected = (
        pl.DataFrame({"v": values, "s": series}, nan_to_null=True)
        .select(pl.col("v").shift(lag).rolling_median(window, min_samples=min_count).over("s"))
        .to_series()
        .fill_null(np.nan)
        .to_numpy()
    )
    if wanted.startswith("few"):
        rows = np.flatnonzero(rng.random(series.size) < 0.05)
    else:
        rows = np.arange(series.size)
    kernel_passes = []
    rolling_median = pl.Series.rolling_median

    def counted(series: pl.Series, *args: object, **kwargs: object) -> pl.Series:
        kernel_passes.append(series.len())
        return rolling_median(series, *args, **kwargs)

    monkeypatch.setattr(pl.Series, "rolling_median", counted)
    got = _series_rolling_median(values, position, rows, lag, window, min_count)
    # the path under test ran: polars' kernel over every row, or none of it
    assert bool(kernel_passes) == wanted.startswith("every")
    assert rows.size > 0 and not np.isnan(got).all()
    np.testing.assert_array_equal(got, expected[rows])
    chunked = _lagged_median(values, position, rows, range(lag, lag + window), min_count, chunk=7)
    np.testing.assert_array_equal(chunked, expected[rows])


def test_a_holiday_of_every_account_raises_nothing_but_an_accounts_own_drop_still_shows() -> None:
    """Three days on which every account works at 30%, 15% and 50% of its usual (a holiday; a
    partial export reads alike) are the population's, not any account's: judged against the
    population's move, the clean accounts raise nothing, an account that kept working raises no
    spike, and an account whose own drop began the day before is still found."""
    holiday = {200: 0.3, 201: 0.15, 202: 0.5}
    everyone = np.ones(DAYS)
    for day, factor in holiday.items():
        everyone[day] = factor
    own_drop = everyone * step(DAYS, 199, 0.3)
    kept_working = np.ones(DAYS)
    multipliers = {i: everyone for i in range(80)} | {5: own_drop, 9: kept_working}
    usage = usage_series(80, DAYS, END, multipliers=multipliers, seed=11)
    first, last = day_of(195), day_of(206)

    population = population_shifts(usage, first, last, S)
    assert set(population["date"]) == {day_of(d) for d in holiday}
    assert np.allclose(np.exp(population["population_shift"]), list(holiday.values()), atol=0.08)

    def drops_and_spikes(found: pl.DataFrame) -> dict[str, set[str]]:
        return {
            kind: set(found.filter(pl.col("type") == kind)["customer_id"])
            for kind in ("usage_drop", "usage_spike")
        }

    naive = drops_and_spikes(_anomalies(usage, first, last))
    assert len(naive["usage_drop"] - {"C0005"}) > 20  # judged alone, the holiday is everyone's drop
    baselines = usage_baselines(usage, first, last, S, population=population)
    judged = drops_and_spikes(detect_usage_anomalies(baselines, S))
    assert judged == {"usage_drop": {"C0005"}, "usage_spike": set()}
    # a run of each day alone measures the same population days and gives the same rows
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        alone = usage_baselines(
            usage, day, day, S, population=population_shifts(usage, day, day, S)
        )
        assert alone.equals(baselines.filter(pl.col("partition_date") == day)), day
    # the account that kept working deviates on no day (not up against the population either)
    kept = baselines.filter(pl.col("customer_id") == "C0009")
    assert kept.filter(pl.col("partition_date").is_in([day_of(d) for d in holiday]))[
        "direction"
    ].to_list() == [0, 0, 0]


def _uneven_holiday_book() -> tuple[pl.DataFrame, int]:
    """150 accounts (15% day-to-day noise) on a two-week holiday at each one's own 25-60% of
    usual, ending 26 days before the end; 10 days later the first 5 drop to 35% and the next 5
    rise 2.5x. Returns the usage and the day index of the change."""
    rng = np.random.default_rng(5)
    holiday = slice(DAYS - 40, DAYS - 26)
    change = DAYS - 16
    multipliers = {i: rng.lognormal(0.0, 0.15, DAYS) for i in range(150)}
    for i in range(150):
        multipliers[i][holiday] *= rng.uniform(0.25, 0.6)
    for i in range(5):
        multipliers[i] = multipliers[i] * step(DAYS, change, 0.35)
        multipliers[5 + i] = multipliers[5 + i] * step(DAYS, change, 2.5)
    return usage_series(150, DAYS, END, multipliers=multipliers, seed=5), change


def test_a_holiday_deeper_for_some_accounts_is_no_ones_decline() -> None:
    """In the trend test's weeks an account's holiday days count at its usual level moved by
    its own move beyond the population's shrunk by the accounts' spread that day: how deep its
    holiday was is no decline (with the population's shift alone, twice as many clean accounts
    declined), while accounts whose usage fell after it are found."""
    usage, _change = _uneven_holiday_book()
    first = day_of(DAYS - 42)
    population = population_shifts(usage, first, END, S)
    clean = ~pl.col("customer_id").is_in([f"C{i:04d}" for i in range(10)])

    def declining(population: pl.DataFrame) -> set[str]:
        found = usage_trends(usage, first, END, S, population=population)
        return set(found.filter(clean & (pl.col("type") == "declining_usage"))["customer_id"])

    shrunk, shifted = declining(population), declining(population.drop("population_spread"))
    assert len(shrunk) <= 4 < len(shifted), (shrunk, shifted)
    found = usage_trends(usage, first, END, S, population=population)
    fell = found.filter(~clean & pl.col("type").is_in(["declining_usage", "usage_pattern_change"]))
    # 16 days after the fall, before a trend window could hold it whole (usage_drop finds all
    # five in days, the test below)
    assert len(set(fell["customer_id"]) & {f"C{i:04d}" for i in range(5)}) >= 2


def test_a_holiday_deeper_for_some_accounts_is_no_ones_drop_and_real_moves_after_it_show() -> None:
    """Two weeks on which every account works at its own 25% to 60% of usual (how many of its
    people are off differs by account): an account moving with the population is judged
    against how far the accounts spread that day, so the deep end of the holiday raises no
    drop (judged against its own ordinary days, 18 of the 140 did). Those days are left
    out of each account's scale, so a real drop and a real rise ten days after the holiday are
    found within days (with them in, half of the scale's window is holiday, and few were), and
    out of its expected value's recent weeks; a run of each day alone gives the same rows."""
    usage, change = _uneven_holiday_book()
    first = day_of(DAYS - 42)
    population = population_shifts(usage, first, END, S)
    assert set(population["date"]) >= {day_of(d) for d in range(DAYS - 40, DAYS - 26)}
    baselines = usage_baselines(usage, first, END, S, population=population)
    found = detect_usage_anomalies(baselines, S)
    clean = ~pl.col("customer_id").is_in([f"C{i:04d}" for i in range(10)])
    in_holiday = pl.col("partition_date").is_between(day_of(DAYS - 40), day_of(DAYS - 24))
    false_drops = found.filter(clean & in_holiday & (pl.col("type") == "usage_drop"))
    assert false_drops["customer_id"].n_unique() <= 2, false_drops
    after = found.filter(clean & (pl.col("partition_date") > day_of(DAYS - 24)))
    assert after["customer_id"].n_unique() <= 2, after
    # the weeks after it are judged against the accounts' usual level, not one the holiday's
    # same-weekday values held ~8% low
    ordinary = baselines.filter(
        clean
        & pl.col("partition_date").is_between(day_of(DAYS - 25), day_of(DAYS - 1))
        & (pl.col("population_shift") == 0)
    )
    usual = ordinary.select((pl.col("value") / pl.col("expected")).median()).item()
    assert abs(usual - 1.0) < 0.03, usual

    def first_day(kind: str, customers: range) -> dict[str, int]:
        hits = found.filter(
            (pl.col("type") == kind)
            & pl.col("customer_id").is_in([f"C{i:04d}" for i in customers])
            & (pl.col("partition_date") >= day_of(change))
        )
        return {
            c: (d - day_of(change)).days
            for c, d in hits.group_by("customer_id").agg(pl.col("partition_date").min()).rows()
        }

    drops, rises = first_day("usage_drop", range(5)), first_day("usage_spike", range(5, 10))
    assert len(drops) >= 4 and max(drops.values()) <= 5, drops
    assert len(rises) >= 4 and max(rises.values()) <= 3, rises
    for offset in (-30, -12, -1):
        day = END + timedelta(days=offset)
        alone = usage_baselines(
            usage, day, day, S, population=population_shifts(usage, day, day, S)
        )
        assert alone.equals(baselines.filter(pl.col("partition_date") == day)), day


def test_a_month_end_that_peaks_every_month_is_no_spike_and_a_real_rise_still_is() -> None:
    """Accounts that work at 2.5x on the last 3 working days of every month (a finance team's
    close), which a same-weekday baseline cannot know: a rise that came at the same point of
    each of the last 3 months (on days of its kind) is no spike (trial 6: 34.7 spikes per 100
    such accounts a week, 1.7 now); a real 2x rise mid-month is still found within days, also
    on a weekend day next to the month's weekdays; a run of each day alone gives the same rows."""
    rng = np.random.default_rng(9)
    dates = [END - timedelta(days=DAYS - 1 - d) for d in range(DAYS)]
    close = np.ones(DAYS)
    for i, d in enumerate(dates):
        following = [x for x in dates[i + 1 : i + 6] if x.month == d.month and x.weekday() < 5]
        if d.weekday() < 5 and len(following) < 3:  # one of the month's last 3 working days
            close[i] = 2.5
    change = DAYS - 20
    multipliers = {i: close * rng.lognormal(0.0, 0.15, DAYS) for i in range(60)}
    for i in range(5):
        multipliers[i] = multipliers[i] * step(DAYS, change, 2.0)
    usage = usage_series(60, DAYS, END, multipliers=multipliers, seed=9)
    first = day_of(DAYS - 70)
    found = _anomalies(usage, first, END)
    spikes = found.filter(pl.col("type") == "usage_spike")
    risen = {f"C{i:04d}" for i in range(5)}
    clean = spikes.filter(~pl.col("customer_id").is_in(list(risen)))
    assert clean["customer_id"].n_unique() <= 2, clean
    late = spikes.filter(pl.col("customer_id").is_in(list(risen)))
    delays = late.group_by("customer_id").agg(pl.col("partition_date").min() - day_of(change))
    assert delays.height == 5 and delays["partition_date"].dt.total_days().max() <= 5, delays
    for day in (END - timedelta(days=1), day_of(change + 1)):
        alone = usage_baselines(usage, day, day, S, lookback_days=Settings().lookback_days)
        ranged = usage_baselines(usage, first, END, S, lookback_days=Settings().lookback_days)
        assert alone.equals(ranged.filter(pl.col("partition_date") == day)), day


def test_a_holiday_season_on_weekdays_is_no_new_weekly_shape() -> None:
    """Two weeks on which every account works at 10% on weekdays and as usual at weekends (the
    holidays fall on weekdays): the last 3 weeks' weekend share reads ~25% against 11% before
    for nearly every account ("weekends now carry 25%", 104 of 120 before the rule); weeks
    holding a holiday season (3 or more population days, `SEASON_DAYS`) are not read for a new
    shape, so none raises one."""
    rng = np.random.default_rng(3)
    dates = [END - timedelta(days=DAYS - 1 - d) for d in range(DAYS)]
    weekend = np.array([d.weekday() >= 5 for d in dates])
    season = np.ones(DAYS)
    holiday = np.zeros(DAYS, dtype=bool)
    holiday[DAYS - 24 : DAYS - 10] = True
    season[holiday & ~weekend] = 0.1
    multipliers = {i: season * rng.lognormal(0.0, 0.1, DAYS) for i in range(120)}
    usage = usage_series(120, DAYS, END, multipliers=multipliers, seed=3)
    first = day_of(DAYS - 10)
    population = population_shifts(usage, first, END, S)
    stats = weekly_trend_stats(usage, first, END, S, population=population)
    moved = stats.filter(pl.col("weekend_share") - pl.col("prior_weekend_share") >= 0.12)
    assert moved["customer_id"].n_unique() > 60  # the shape really moved for most
    found = usage_trends(usage, first, END, S, population=population)
    assert found.filter(pl.col("type") == "usage_pattern_change").height == 0


def test_a_drop_on_a_day_everyone_fell_says_its_baseline_moved_with_them() -> None:
    """The baseline a drop is shown against on a population day is the account's usual moved
    with everyone's fall (`_baselines_of_grid`), which "937" alone does not say: the evidence
    says it, with everyone's level that day; not on an ordinary day, a day everyone rose, or a
    void day (where nobody is judged down)."""
    usage = usage_series(10, DAYS, END, multipliers={3: step(DAYS, DAYS - 5, 0.2)}, seed=2)
    baselines = usage_baselines(usage, day_of(DAYS - 5), END, S)
    drop = baselines.filter(anomaly_rows(S) & (pl.col("direction") < 0)).head(1)
    assert drop.height == 1

    def signal(shift: float) -> tuple[str, dict]:
        moved = drop.with_columns(pl.lit(shift).alias("population_shift"))
        found = detect_usage_anomalies(moved, S)
        return found["evidence"][0][0]["comparison"], json.loads(found["facts"][0])

    text, facts = signal(np.log(0.42))
    assert text.endswith(
        ", moved with the accounts that moved together that day (all, or its industry or "
        "region): their median at 42% of its usual"
    )
    assert facts["everyone_pct"] == 42
    context = narrative_context(
        {"type": "usage_drop", "category": "risk", "customer_id": "C0003", "facts": facts}
    )
    summary = TemplateNarrator().narrate([context])[0]["summary"]
    assert (
        "moved together that day (all of them, or its industry or region), whose median was "
        "at 42% of its usual" in summary
    )
    for shift in (0.0, np.log(1.3), -np.inf):
        text, facts = signal(shift)
        assert "median account" not in text and facts["everyone_pct"] is None, shift


def test_a_day_the_whole_export_is_missing_or_zero_is_no_accounts_drop_or_decline() -> None:
    """One export day missing for every account and another all zeros (a failed export, an
    outage) are void days of the population: no account's value there says anything, so no
    clean account raises a drop or a decline over them, while the accounts whose own usage
    fell by 80% in the same weeks are still found; a range judges each day as its runs alone do.
    Judged against a plain log shift instead, a zero is the account's size, not its move (every
    account above the median account "dropped")."""
    rng = np.random.default_rng(7)
    multipliers = _noisy(100, rng)
    planted = {f"C{i:04d}" for i in range(5)}
    for i in range(5):
        multipliers[i] = multipliers[i] * step(DAYS, DAYS - 12, 0.2)
    missing, zero = DAYS - 7, DAYS - 4
    for i in multipliers:
        multipliers[i][zero] = 0.0
    usage = usage_series(100, DAYS, END, multipliers=multipliers, seed=7).filter(
        pl.col("date") != day_of(missing)
    )
    first = day_of(DAYS - 14)
    population = population_shifts(usage, first, END, S)
    void = population.filter(pl.col("population_shift") == -np.inf)
    assert set(void["date"]) == {day_of(missing), day_of(zero)}
    baselines = usage_baselines(usage, first, END, S, population=population)
    drops = detect_usage_anomalies(baselines, S).filter(pl.col("type") == "usage_drop")
    assert set(drops["customer_id"]) == planted
    on_void = baselines.filter(pl.col("population_shift") == -np.inf)
    assert on_void.height > 0 and (on_void["direction"] <= 0).all()
    assert on_void.filter(pl.col("direction") < 0).is_empty()
    trends = usage_trends(usage, first, END, S, population=population)
    assert set(trends.filter(pl.col("type") == "declining_usage")["customer_id"]) <= planted
    # a plain log shift of the void days (their median residual) flags most accounts
    shifted = population.with_columns(
        pl.when(pl.col("population_shift") == -np.inf)
        .then(-3.0)
        .otherwise("population_shift")
        .alias("population_shift")
    )
    plain = usage_baselines(usage, first, END, S, population=shifted)
    assert plain.filter(pl.col("direction") < 0)["customer_id"].n_unique() > 20
    for offset in range((END - first).days + 1):
        day = first + timedelta(days=offset)
        alone = usage_baselines(
            usage, day, day, S, population=population_shifts(usage, day, day, S)
        )
        assert alone.equals(baselines.filter(pl.col("partition_date") == day)), day


def test_a_week_holding_void_days_is_its_other_days_scaled_to_seven() -> None:
    """The trend test's week sums leave void days out (`_test_weeks`): a week holding one is
    its six other days times 7/6, a week of seven void days is unknown (NaN), and a day of an
    ordinary population move is still taken at its level."""
    days = 35
    usage = pl.DataFrame(
        {
            "customer_id": "C1",
            "date": [END - timedelta(days=days - 1 - i) for i in range(days)],
            "metric": "dau",
            "value": np.where(np.arange(days) == 10, 5.0, 10.0),  # day 10: half, with everyone
        }
    )
    void = [END - timedelta(days=days - 1 - i) for i in (20, *range(26, 33))]
    population = pl.DataFrame(
        {
            "metric": "dau",
            "date": [END - timedelta(days=days - 11), *void],
            "population_shift": [np.log(0.5)] + [-np.inf] * len(void),
        }
    )
    grid = _grid_until(usage, END, None)
    w0 = trailing_sums(grid.value, grid.position, 7)
    sums, moved_days, void_days = _test_weeks(grid, population, w0)
    at = {i: float(sums[i]) for i in (9, 10, 16, 20, 25, 32, 34)}
    # the half day is taken at its level (its log1p less the population's shift)
    assert at[9] == 70.0 and np.isclose(at[10], 60.0 + np.expm1(np.log1p(5.0) - np.log(0.5)))
    assert at[20] == 60.0 * 7 / 6 and at[25] == 60.0 * 7 / 6
    assert np.isnan(at[32]) and at[34] == 20.0 * 7 / 2
    assert moved_days[32] == 7 and moved_days[16] == 1
    assert void_days[32] == 7 and void_days[25] == 1 and void_days[16] == 0


def _holiday_book(seed: int) -> pl.DataFrame:
    """120 noisy accounts whose usage all falls to 60% for the last 14 days (a holiday), the
    first 8 of them also declining 8% a week over the last 8 weeks."""
    rng = np.random.default_rng(seed)
    multipliers = _noisy(120, rng)
    for i in multipliers:
        multipliers[i][DAYS - 14 :] *= 0.6
    for i in range(8):
        multipliers[i] = multipliers[i] * ramp(DAYS, DAYS - 56, -0.08, weeks=8)
    return usage_series(120, DAYS, END, multipliers=multipliers, seed=seed)


def test_a_holiday_at_the_end_of_the_trend_window_is_no_accounts_decline() -> None:
    """Two weeks of holiday close every account's 8-week window with two low weeks: judged on
    the raw week sums, one account in nine has a declining_usage. With the days the whole book
    moved taken at its level, the clean accounts stay quiet, the declining ones are still
    found, and the evidence says which days were taken out."""
    first = day_of(DAYS - 21)
    planted = {f"C{i:04d}" for i in range(8)}
    false_raw = false_adjusted = found = 0
    for seed in (1, 2):
        usage = _holiday_book(seed)
        population = population_shifts(usage, first, END, S)
        assert set(population["date"]) >= {day_of(d) for d in range(DAYS - 14, DAYS)}
        raw = usage_trends(usage, first, END, S).filter(pl.col("type") == "declining_usage")
        adjusted = usage_trends(usage, first, END, S, population=population).filter(
            pl.col("type") == "declining_usage"
        )
        false_raw += len(set(raw["customer_id"]) - planted)
        false_adjusted += len(set(adjusted["customer_id"]) - planted)
        found += len(set(adjusted["customer_id"]) & planted)
        holiday_end = adjusted.filter(pl.col("partition_date") == END)
        for evidence in holiday_end["evidence"]:
            assert (
                "14 days on which all accounts, or its industry or region, moved together"
                in evidence[0]["comparison"]
            )
    assert false_raw >= 15
    assert false_adjusted <= 1
    assert found >= 8  # of 16


def test_a_new_level_of_the_whole_book_or_a_metric_no_one_exports_is_no_accounts_pattern() -> None:
    """Three weeks at half the usual level for every account (a long holiday), or a metric no
    longer exported by anyone (every day of the last three weeks void): judged on the weeks as
    they were, most accounts "settled lower"; on the weeks with the population's days at their
    level, no clean account does, while the accounts whose own level fell as well are found -
    from the candidate rows and from the full statistics alike."""
    rng = np.random.default_rng(5)
    multipliers = _noisy(120, rng)
    planted = {f"C{i:04d}" for i in range(6)}
    for i in multipliers:
        multipliers[i][DAYS - 21 :] *= 0.5
    for i in range(6):
        multipliers[i] = multipliers[i] * step(DAYS, DAYS - 21, 0.4)
    usage = usage_series(120, DAYS, END, multipliers=multipliers, seed=5)
    retired = usage.filter(pl.col("date") <= day_of(DAYS - 22))
    first = day_of(DAYS - 3)

    def settled(usage: pl.DataFrame, population: pl.DataFrame | None) -> set[str]:
        found = usage_trends(usage, first, END, S, population=population)
        full = detect_usage_trends(
            weekly_trend_stats(usage, first, END, S, population=population), S
        )
        assert found.equals(full)
        return set(found.filter(pl.col("type") == "usage_pattern_change")["customer_id"])

    assert len(settled(usage, None) - planted) > 50
    adjusted = settled(usage, population_shifts(usage, first, END, S))
    assert adjusted - planted == set() and len(adjusted & planted) >= 5
    assert len(settled(retired, None)) > 50
    assert settled(retired, population_shifts(retired, first, END, S)) == set()


def test_the_trend_tests_population_days_are_the_same_in_a_range_and_in_each_day_alone() -> None:
    """A range's population days and trend signals are those of each day run alone with its
    own look-back, though the earliest days measured sit at the start of a day's look-back and
    the export is sparse (40% of the rows missing: a series' first row in a look-back falls on
    different days for a range and for a day); from the candidate rows and from the full
    statistics alike."""
    rng = np.random.default_rng(11)
    usage = _holiday_book(3)
    # and a shared outage eight and a half weeks before the end: population days at the start
    # of the look-back of the range's last days, their shift a median of the accounts' residuals
    outage = pl.col("date").is_between(day_of(DAYS - 61), day_of(DAYS - 59))
    usage = usage.with_columns(
        pl.when(outage).then((pl.col("value") * 0.5).round(0)).otherwise("value").alias("value")
    )
    usage = usage.filter(pl.Series(rng.random(usage.height) >= 0.4))
    lookback = Settings().lookback_days
    first = day_of(DAYS - 20)

    def window(day: date) -> pl.DataFrame:
        return usage.filter(pl.col("date") >= day - timedelta(days=lookback))

    def measured(frame: pl.DataFrame, a: date, b: date) -> pl.DataFrame:
        return population_shifts(frame, a, b, S, window_start=a - timedelta(days=lookback))

    cut = window(first)
    population = measured(cut, first, END)
    ranged = usage_trends(cut, first, END, S, population=population)
    full = detect_usage_trends(weekly_trend_stats(cut, first, END, S, population=population), S)
    assert ranged.equals(full)
    assert ranged.height > 0
    assert day_of(DAYS - 61) in set(population["date"])
    for offset in range(20):
        day = first + timedelta(days=offset)
        alone = measured(window(day), day, day)
        reach = pl.col("date") >= day - timedelta(days=7 * S.trend_test_weeks - 1)
        assert alone.equals(population.filter(reach & (pl.col("date") <= day))), day
        wanted = pl.col("partition_date") == day
        found = usage_trends(window(day), day, day, S, population=alone)
        assert found.equals(ranged.filter(wanted)), day


def test_accounts_younger_than_six_weeks_do_not_move_the_population() -> None:
    """A book where most accounts began four to five weeks ago: counted from the look-back's
    first day, their weeks before they began are zeros, so their expected level is half their
    level or less and every day they seem to rise. They are not judged until they have a row
    6-8 weeks back, so their ordinary days are no population's."""
    old = usage_series(40, DAYS, END, seed=2)
    young = usage_series(60, DAYS, END, seed=9).with_columns(
        ("Y" + pl.col("customer_id")).alias("customer_id")
    )
    young = young.filter(pl.col("date") >= END - timedelta(days=34))
    usage = pl.concat([old, young])
    first = END - timedelta(days=6)
    lookback = Settings().lookback_days
    window = usage.filter(pl.col("date") >= first - timedelta(days=lookback))
    population = population_shifts(
        window, first, END, S, window_start=first - timedelta(days=lookback)
    )
    assert population.filter(pl.col("date") >= first).height == 0


def test_a_small_books_shared_outage_is_the_populations_and_its_ordinary_days_are_not() -> None:
    """A book of 12 noisy accounts (30% day-to-day) that all fall to 20% for three days: the
    days are the population's (every account moved, which chance does not do), so no account
    raises a drop; on ordinary days the median of 12 noisy accounts moves 15% now and then by
    chance, and those days are not taken for the population's (without the sign test they are)."""
    outage = {200: 0.2, 201: 0.2, 202: 0.2}
    rng = np.random.default_rng(7)
    multipliers = _noisy(12, rng)
    for i in multipliers:
        multipliers[i][list(outage)] *= 0.2
    usage = usage_series(12, DAYS, END, multipliers=multipliers, seed=7)
    first, last = day_of(150), END

    population = population_shifts(usage, first, last, S)
    assert set(population["date"]) == {day_of(d) for d in outage}
    by_median_alone = population_shifts(usage, first, last, replace(S, population_alpha=1.0))
    assert by_median_alone.height > population.height + 3
    naive = _anomalies(usage, first, last).filter(pl.col("type") == "usage_drop")
    assert naive["customer_id"].n_unique() >= 10  # judged alone, every account dropped
    baselines = usage_baselines(usage, first, last, S, population=population)
    drops = detect_usage_anomalies(baselines, S).filter(pl.col("type") == "usage_drop")
    assert drops.height == 0


def test_a_weekend_share_within_the_accounts_own_swings_is_no_new_pattern() -> None:
    """Two accounts of 1,000 uses a week move their weekend share from ~20% to ~38% for three
    weeks. One swings between 5% and 35% from week to week anyway (a busy or a quiet weekend
    for all its people at once): that is its usual, not a new pattern, though a binomial count
    of 1,000 uses would call it 9 standard errors. The other, always at 19-21%, has changed."""
    weeks = 30
    days = [END - timedelta(days=7 * weeks - 1 - d) for d in range(7 * weeks)]
    rows = []
    for customer, swing in (("SWINGING", 0.15), ("STEADY", 0.01)):
        for d, day in enumerate(days):
            week = d // 7
            share = 0.38 if week >= weeks - 3 else 0.20 + swing * (-1) ** week
            weekend = day.weekday() >= 5
            value = 1000 * (share / 2 if weekend else (1 - share) / 5)
            rows.append((customer, day, "events", float(round(value))))
    usage = pl.DataFrame(
        rows,
        schema=USAGE_SCHEMA,
        orient="row",
    )
    found = _trends(usage, END, END)
    changed = found.filter(pl.col("type") == "usage_pattern_change")["customer_id"].to_list()
    assert changed == ["STEADY"]


def test_one_more_seat_of_a_small_account_is_no_new_pattern_and_a_large_accounts_step_is() -> None:
    """Seats, a level that does not move from day to day: 20 accounts of 2 or 3 seats, 10 of
    which take one more seat three weeks before the end (+33-50%, many times their near-zero
    weekly variability), and 4 accounts of 100 seats of which 2 go to 150. A week's count varies
    at least by its counting noise: the large accounts' step is a new level, the one-seat
    steps are not."""
    weeks = 20
    days = [END - timedelta(days=7 * weeks - 1 - d) for d in range(7 * weeks)]
    # customer -> (seats before, seats in the last three weeks)
    accounts = {f"S{i:02d}": (2 + i % 2, 2 + i % 2 + (i < 10)) for i in range(20)}
    accounts |= {f"L{i}": (100, 150 if i < 2 else 100) for i in range(4)}
    rows = [
        (customer, day, "seats", float(after if d >= len(days) - 21 else before))
        for customer, (before, after) in accounts.items()
        for d, day in enumerate(days)
    ]
    usage = pl.DataFrame(rows, schema=USAGE_SCHEMA, orient="row")
    found = _trends(usage, END, END)
    changed = set(found.filter(pl.col("type") == "usage_pattern_change")["customer_id"])
    assert changed == {"L0", "L1"}


def test_grid_from_coded_keys_equals_the_group_by_grid_to_the_bit() -> None:
    """The integer-coded grid build (rows grouped by customer, or mostly: `rows_since`) gives the
    group-by's arrays: keys order, first days, churn cut, duplicate days summed in row order."""
    rng = np.random.default_rng(3)
    days = [date(2026, 3, 1) + timedelta(days=int(d)) for d in rng.integers(0, 60, 4000)]
    usage = pl.DataFrame(
        {
            "customer_id": [f"c{c}" for c in rng.integers(0, 40, 4000)],
            "date": days,
            "metric": rng.choice(["logins", "events", "dau", "é"], 4000).tolist(),
            "value": np.where(rng.random(4000) < 0.05, np.nan, rng.normal(5, 3, 4000)),
        }
    ).with_columns(
        pl.when(pl.col("value") > 9).then(None).otherwise(pl.col("value")).alias("value")
    )
    grouped = usage.sort("customer_id", descending=True, maintain_order=True)
    churned = pl.DataFrame({"customer_id": ["c3", "c7"], "churned_on": [date(2026, 4, 1)] * 2})
    for rows in [grouped, rows_since(grouped.lazy(), date(2026, 4, 10))]:
        assert _series_codes(rows) is not None  # (the coded path is taken)
        for churn in [None, churned]:
            coded = _DenseGrid.build(rows, date(2026, 4, 30), churn)
            hashed = _DenseGrid._build_by_group_by(rows, date(2026, 4, 30), churn)
            assert coded.keys.equals(hashed.keys)
            for name in ["series", "position", "day", "observed"]:
                assert np.array_equal(getattr(coded, name), getattr(hashed, name)), name
            assert np.array_equal(coded.value.view(np.int64), hashed.value.view(np.int64))


@pytest.mark.parametrize("kind", ["few", "rare", "many"])
def test_sorted_codes_are_the_indices_into_the_sorted_distinct_values(kind: str) -> None:
    """Few values are coded by comparisons with a strided sample's values; a value the sample
    misses (`rare`) and more than `FEW_VALUES` values (`many`) take the column's own distinct
    values: every way gives the sorted distinct values and each row's index into them."""
    rng = np.random.default_rng(11)
    names = [f"m{i}" for i in range(20 if kind == "many" else 4)]
    column = pl.Series("metric", rng.choice(names, 50_000).tolist())
    if kind == "rare":
        column[12_345] = "a rare one"  # (the sample takes every 12th row)
    values, code = _sorted_codes(column)
    expected = column.unique().sort()
    assert values.equals(expected)
    assert np.array_equal(code, column.cast(pl.Enum(expected)).to_physical().to_numpy())


def test_positions_count_within_runs_and_skip_empty_runs() -> None:
    length = np.array([0, 3, 0, 0, 1, 2, 0], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(length[:-1])])
    assert run_positions(offset, length).tolist() == [0, 1, 2, 0, 0, 1]
    assert run_positions(np.zeros(2, np.int64), np.zeros(2, np.int64)).size == 0


def test_seen_between_marks_the_rows_with_a_day_on_record_in_their_window() -> None:
    """`seen_between`'s mask, in the frame's order (shuffled here), is the direct rule: the row's
    series has a day in `seen` from `far` to `near` days before the row's day; a day repeated in
    `seen` or another series' day changes nothing."""
    rng = np.random.default_rng(5)
    day0 = date(2026, 1, 1)
    frame = pl.DataFrame(
        {
            "customer_id": [f"C{i}" for i in rng.integers(0, 6, 400)],
            "metric": [f"m{i}" for i in rng.integers(0, 2, 400)],
            "partition_date": [day0 + timedelta(days=int(d)) for d in rng.integers(0, 60, 400)],
        }
    ).unique(maintain_order=True)
    seen = pl.DataFrame(
        {
            "customer_id": [f"C{i}" for i in rng.integers(0, 7, 300)],
            "metric": [f"m{i}" for i in rng.integers(0, 2, 300)],
            "_seen": [day0 + timedelta(days=int(d)) for d in rng.integers(-20, 60, 300)],
        }
    )
    seen = pl.concat([seen, seen.head(50)])  # repeated days
    near, far = 5, 12
    got = seen_between(frame, seen, KEYS, near, far)
    days = {key: set(group["_seen"]) for key, group in seen.group_by(KEYS)}
    expected = [
        any(d - timedelta(days=far) <= s <= d - timedelta(days=near) for s in days.get((c, m), ()))
        for c, m, d in frame.iter_rows()
    ]
    assert got.dtype == pl.Boolean and 0 < got.sum() < frame.height
    assert got.to_list() == expected


def _young_book(
    seed: int,
    stalls: dict[int, int],
    ages: dict[int, int] | None = None,
    noise: float = 11.0,
    level: float = 60.0,
    accounts: int = 120,
) -> tuple[pl.DataFrame, dict[int, int]]:
    """`accounts` accounts that began 25-90 days before END (`ages[i]` days for account i),
    ramping up from 20% over 1-7 weeks, with day-to-day noise beyond Poisson's (gamma of shape
    `noise`: 30% by default); `stalls[i]` = days after its start on which account i fell to 15%
    for good. Returns the usage and each account's first day index."""
    rng = np.random.default_rng(seed)
    starts: dict[int, int] = {}
    multipliers: dict[int, np.ndarray] = {}
    for i in range(accounts):
        # (a stalled account is old enough for its stall and the week after it)
        starts[i] = DAYS - int(rng.integers(stalls[i] + 10 if i in stalls else 25, 90))
        if ages and i in ages:
            starts[i] = DAYS - ages[i]
        since = np.arange(DAYS) - starts[i]
        ramp_days = int(rng.integers(7, 50))
        mult = np.clip(0.2 + 0.8 * since / ramp_days, 0.2, 1.0) * rng.gamma(noise, 1 / noise, DAYS)
        if i in stalls:
            mult[starts[i] + stalls[i] :] *= 0.15
        multipliers[i] = mult
    usage = usage_series(accounts, DAYS, END, level=level, multipliers=multipliers, seed=seed)
    first_day = pl.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in starts],
            "_first": [day_of(d) for d in starts.values()],
        }
    )
    usage = (
        usage.join(first_day, on="customer_id")
        .filter(pl.col("date") >= pl.col("_first"))
        .drop("_first")
    )
    return usage, starts


def test_a_young_accounts_stalled_onboarding_is_a_drop_and_clean_ramp_ups_stay_quiet() -> None:
    """A series under `min_history_days` has no daily baseline yet; its last week far below its
    best week so far is its drop (`_young_drops_of_grid`): the planted stalls (to 15%, 22-34
    days in) are found within a week and not before, the 112 ramping, noisy young accounts
    raise nothing, and the narrative says how the drop was judged."""
    stalls = {3: 22, 17: 26, 40: 30, 77: 34, 91: 24, 105: 28, 110: 31, 118: 23}
    usage, starts = _young_book(7, stalls)
    found = usage_trends(usage, day_of(DAYS - 95), END, S, lookback_days=112).filter(
        pl.col("type") == "usage_drop"
    )
    first = found.group_by("customer_id").agg(pl.col("partition_date").min()).sort("customer_id")
    assert first["customer_id"].to_list() == [f"C{i:04d}" for i in sorted(stalls)]
    for customer_id, raised in first.iter_rows():
        i = int(customer_id[1:])
        began = day_of(starts[i] + stalls[i])
        assert 0 <= (raised - began).days <= 7, customer_id
    # judged past day 42, until the daily scale stands on days the daily rule judged
    # (`young_days`): a stall is among the first daily scale's residuals, where it reads as
    # noise (trial 8) - so a stalled account still has its drop two weeks after the hand-off,
    # and none is judged by its weeks after day 70
    days_on_record = pl.col("facts").str.json_path_match("$.days_on_record").cast(pl.Int64)
    oldest = found.group_by("customer_id").agg(days_on_record.max().alias("days"))
    assert oldest["days"].max() <= young_days(S)
    for customer_id, days in oldest.iter_rows():
        age = DAYS - starts[int(customer_id[1:])]
        assert days >= min(age, S.min_history_days + 14), customer_id
    row = found.sort("partition_date").row(0, named=True)
    facts = json.loads(row["facts"])
    assert facts["young_series"] is True and facts["change_pct"] <= -50
    assert row["evidence"][0]["comparison"].startswith("best week so far: ")
    context = narrative_context(
        {"type": "usage_drop", "category": "usage", "customer_id": row["customer_id"]}
        | {"facts": row["facts"]}
    )
    narrated = TemplateNarrator().narrate([context])[0]
    assert "below its best week so far" in narrated["summary"]
    assert "judged week against week" in narrated["summary"]
    assert "onboarding" in narrated["action"]


def test_a_young_series_drops_are_a_ranges_and_its_days_alike_and_can_be_turned_off() -> None:
    usage, _ = _young_book(10, {5: 24, 60: 29})
    first, last = day_of(DAYS - 95), END
    key = ["customer_id", "partition_date", "type"]
    ranged = usage_trends(usage, first, last, S, lookback_days=112)
    drops = ranged.filter(pl.col("type") == "usage_drop").sort(key)
    assert set(drops["customer_id"]) == {"C0005", "C0060"}
    days = pl.concat(
        [
            usage_trends(usage, day, day, S, lookback_days=112)
            for day in (first + timedelta(days=i) for i in range((last - first).days + 1))
        ]
    )
    assert drops.equals(days.filter(pl.col("type") == "usage_drop").sort(key))
    off = usage_trends(usage, first, last, replace(S, young_drop=0.0), lookback_days=112)
    assert off.filter(pl.col("type") == "usage_drop").height == 0
    with pytest.raises(ValueError, match=r"usage\.young_drop=1\.0"):
        replace(S, young_drop=1.0)


def test_a_holiday_in_a_young_series_last_week_is_no_stall_and_quarantined_days_none() -> None:
    """Every account at a fifth of its usual for a week (a holiday, measured on the 80 older
    accounts) makes no young series' week a stall, where judged alone dozens are; a young
    series' own stall after the holiday is found. A drop whose week holds a quarantined day is
    left out."""
    old = usage_series(80, DAYS, END, seed=12)
    young, starts = _young_book(9, {7: 24}, ages={7: 40})
    holiday = list(range(DAYS - 30, DAYS - 23))
    usage = pl.concat(
        [old.with_columns(pl.format("O{}", "customer_id").alias("customer_id")), young]
    ).with_columns(
        pl.when(pl.col("date").is_in([day_of(d) for d in holiday]))
        .then((pl.col("value") / 5).round(0))
        .otherwise("value")
        .alias("value")
    )
    first = day_of(DAYS - 30)
    naive = usage_trends(usage, first, END, S).filter(pl.col("type") == "usage_drop")
    population = population_shifts(usage, first, END, S)
    assert {day_of(d) for d in holiday} <= set(population["date"])
    found = usage_trends(usage, first, END, S, population=population).filter(
        pl.col("type") == "usage_drop"
    )
    assert len(set(naive["customer_id"]) - {"C0007"}) >= 10  # judged alone: the holiday's
    assert set(found["customer_id"]) == {"C0007"}
    stall = day_of(starts[7] + 24)
    assert 0 <= (found["partition_date"].min() - stall).days <= 7
    # a quarantined day in a drop's week: unknown, not 0 - that day's drop is left out
    day = found["partition_date"].min()
    unknown = pl.DataFrame(
        {"customer_id": ["C0007"], "metric": ["dau"], "date": [day - timedelta(days=6)]}
    )
    kept = without_unknown_weeks(found, unknown)
    assert found.height >= 2
    assert kept.equals(found.filter(pl.col("partition_date") > day))


def test_a_young_series_back_from_a_few_bad_days_is_no_longer_a_drop() -> None:
    """A young series' week is read with its last 3 days against the same weekdays of its best
    week: six days at 5% (an outage on their side) are a drop while they last, and not on the
    days after usage came back, though the week's sum still holds the bad days."""
    usage, starts = _young_book(11, {}, ages={9: 40}, level=300.0)
    outage = range(starts[9] + 27, starts[9] + 33)
    usage = usage.with_columns(
        pl.when(
            (pl.col("customer_id") == "C0009") & pl.col("date").is_in([day_of(d) for d in outage])
        )
        .then((pl.col("value") * 0.05).round(0))
        .otherwise("value")
        .alias("value")
    )
    found = usage_trends(usage, day_of(DAYS - 30), END, S).filter(pl.col("type") == "usage_drop")
    raised = found.filter(pl.col("customer_id") == "C0009")["partition_date"].to_list()
    assert set(found["customer_id"]) == {"C0009"}
    assert raised and max(raised) == day_of(outage[-1])
    # its week still far below its best on the day after the outage
    after = day_of(outage[-1] + 1)
    week = usage.filter(
        (pl.col("customer_id") == "C0009")
        & pl.col("date").is_between(after - timedelta(days=6), after)
    )["value"].sum()
    best = max(
        usage.filter(
            (pl.col("customer_id") == "C0009") & pl.col("date").is_between(day_of(d - 6), day_of(d))
        )["value"].sum()
        for d in range(starts[9] + 6, outage[0])
    )
    assert week <= 0.5 * best


def test_a_very_noisy_young_book_keeps_its_stalls_and_few_false_drops() -> None:
    """At 50% day-to-day noise (gamma of shape 4), a young week's noise is the series' own
    (`_young_weekly_scale`), not counting noise alone (which raises 10 of these 180 clean
    accounts): at most 5 clean accounts raise a drop over their whole youth, and 19 of the 20
    stalls are still found."""
    stalls = {i: 22 + i % 12 for i in range(0, 200, 10)}
    usage, _ = _young_book(22, stalls, noise=4.0, accounts=200)
    found = usage_trends(usage, day_of(DAYS - 95), END, S, lookback_days=112).filter(
        pl.col("type") == "usage_drop"
    )
    raised = {int(c[1:]) for c in found["customer_id"]}
    assert len(raised & set(stalls)) >= 19
    assert len(raised - set(stalls)) <= 5


def test_the_best_of_several_weeks_needs_a_deeper_fall_bonferroni() -> None:
    """Picking the best of k earlier weeks gives noise k chances: the bar is the z whose tail is
    1/k of `trend_z`'s (k = 1: `trend_z` itself)."""
    bars = _best_of_weeks_z(3.0, np.array([1, 2, 5, 2]))
    assert bars[0] == pytest.approx(-3.0)
    assert bars[1] == bars[3] and -3.3 < bars[1] < -3.1  # tail 0.00135 / 2
    assert bars[2] == pytest.approx(-3.4601, abs=1e-3)  # tail 0.00135 / 5


def _hours_book(multipliers: dict[int, np.ndarray], seed: int = 1) -> pl.DataFrame:
    """120 accounts' hours of use a day (~1.2 on a weekday, a third of it on weekends, to the
    hundredth; 22% day-to-day noise): a measured quantity, not a count."""
    rng = np.random.default_rng(seed)
    days = [day_of(d) for d in range(DAYS)]
    shape = np.array([WEEKDAY_SHAPE[d.weekday()] for d in days])
    expected = 1.2 * rng.lognormal(0.0, 0.5, 120)[:, None] * shape[None, :]
    for i, mult in multipliers.items():
        expected[i] = expected[i] * mult
    values = np.round(expected * rng.gamma(20.0, 1 / 20.0, expected.shape), 2)
    return pl.DataFrame(
        {
            "customer_id": np.repeat([f"C{i:04d}" for i in range(120)], DAYS),
            "date": np.tile(np.array(days, dtype="datetime64[D]"), 120),
            "metric": "hours_used",
            "value": values.ravel(),
        }
    ).with_columns(pl.col("date").cast(pl.Date))


def test_hours_are_judged_as_their_minutes_are_and_shown_in_hours() -> None:
    """A measured quantity (values not whole numbers) is judged in thousandths of its unit
    (`_in_counting_units`): counting noise and the minimum volumes no longer leave ~1 hour a
    day unjudged (trial 7: a 60% drop at z = -0.5, weekends never judged), and the log scale is
    as multiplicative as a count's. The same hours in whole minutes are found alike; clean
    accounts stay quiet; the evidence and facts are in hours."""
    multipliers = {i: step(DAYS, 200, 0.4) for i in range(10)}
    for i in range(10, 20):
        multipliers[i] = np.ones(DAYS)
        multipliers[i][205:208] = 3.0
    hours = _hours_book(multipliers)
    minutes = hours.with_columns((pl.col("value") * 60).round(0))
    first = day_of(150)

    def found(usage: pl.DataFrame) -> dict[str, set[int]]:
        signals = pl.concat(
            [
                detect_usage_anomalies(usage_baselines(usage, first, END, S), S),
                usage_trends(usage, first, END, S),
            ]
        )
        return {
            kind: {int(c[1:]) for c in signals.filter(pl.col("type") == kind)["customer_id"]}
            for kind in set(signals["type"])
        }

    in_hours = found(hours)
    assert in_hours["usage_drop"] == set(range(10))
    assert len(in_hours["usage_spike"] & set(range(10, 20))) >= 9
    # (chance: over 6 such books, 2 clean accounts' spikes in 720 account-quarters; 1 in minutes)
    assert len(in_hours["usage_spike"] - set(range(10, 20))) <= 1
    assert in_hours["usage_pattern_change"] <= set(range(10))
    assert len(in_hours["usage_pattern_change"]) >= 8
    in_minutes = found(minutes)
    assert in_minutes["usage_drop"] == in_hours["usage_drop"]
    # shown in hours: the drop's day and band, the new level's weeks
    drop = detect_usage_anomalies(usage_baselines(hours, day_of(203), day_of(203), S), S)
    facts = json.loads(drop.filter(pl.col("customer_id") == "C0003")["facts"][0])
    assert 0 < facts["value"] < facts["lower"] < facts["expected"] < facts["upper"] < 10
    raw = hours.filter((pl.col("customer_id") == "C0003") & (pl.col("date") == day_of(203)))
    assert facts["value"] == pytest.approx(raw["value"][0])
    pattern = usage_trends(hours, day_of(225), day_of(225), S).filter(
        (pl.col("type") == "usage_pattern_change") & (pl.col("customer_id") == "C0003")
    )
    weekly = json.loads(pattern["facts"][0])
    assert 0 < weekly["recent_week"] < weekly["prior_week"] < 70  # hours a week
    assert weekly["recent_week"] != round(weekly["recent_week"])  # not rounded to 0 decimals


def test_measured_series_give_a_ranges_numbers_on_each_day_and_nan_is_no_unit() -> None:
    """The unit is the series': a range and each of its days alone give the same baselines
    and weekly signals to the bit; a NaN value (rejected at the source) makes no series a
    measured one; the grid as other detectors read it (`dense_usage`) keeps its own unit."""
    hours = _hours_book({3: step(DAYS, 215, 0.3), 7: ramp(DAYS, 170, -0.1, 8)}, seed=5)
    first = day_of(210)
    ranged = usage_baselines(hours, first, END, S, lookback_days=112)
    trends = usage_trends(hours, first, END, S, lookback_days=112)
    assert set(trends["type"]) >= {"usage_pattern_change"} and trends.height
    for offset in range(0, (END - first).days + 1, 4):
        day = first + timedelta(days=offset)
        alone = usage_baselines(hours, day, day, S, lookback_days=112)
        assert alone.equals(ranged.filter(pl.col("partition_date") == day)), day
        signals = usage_trends(hours, day, day, S, lookback_days=112)
        assert signals.equals(trends.filter(pl.col("partition_date") == day)), day
    assert np.allclose(
        ranged.filter(pl.col("customer_id") == "C0003").sort("partition_date")["value"],
        hours.filter((pl.col("customer_id") == "C0003") & (pl.col("date") >= first)).sort("date")[
            "value"
        ],
    )
    counts = usage_series(5, DAYS, END).with_columns(
        pl.when(pl.col("date") == day_of(100)).then(float("nan")).otherwise("value").alias("value")
    )
    assert _grid_until(counts, END, None).unit is None
    grid = _grid_until(hours, END, None)
    assert grid.unit is not None and (grid.unit == 1000.0).all()
    assert np.allclose(grid.frame()["value"], hours.sort("customer_id", "date")["value"])
    assert dense_usage(hours, END)["value"].equals(
        hours.sort("customer_id", "metric", "date")["value"]
    )


def test_a_holiday_of_measured_usage_is_the_populations_move_in_its_own_proportion() -> None:
    """The population's move is measured in the unit its accounts are judged in: three days
    at 40% of everyone's hours are population days moved by about 40%, and no other day is."""
    everyone = np.ones(DAYS)
    everyone[[200, 201, 202]] = 0.4
    hours = _hours_book(dict.fromkeys(range(120), everyone), seed=2)
    population = population_shifts(hours, day_of(195), day_of(206), S)
    assert set(population["date"]) == {day_of(d) for d in (200, 201, 202)}
    assert np.allclose(np.exp(population["population_shift"]), 0.4, atol=0.05)
    judged = detect_usage_anomalies(
        usage_baselines(hours, day_of(195), day_of(206), S, population=population), S
    )
    assert judged.height == 0


def test_a_level_held_is_shown_by_its_average_day_not_as_a_weeks_sum() -> None:
    """Seats held from day to day are a level: a week of 21 seats is not "147 seats a week"
    (trial 7: "weekly seats used rose from 144 to 189"). A level's weekly signals show its
    average day (`_level_rows`); an activity count with a weekly rhythm keeps its weekly sums,
    unless it counts distinct users a day (`dau`: a week of it is user-days, trial 10's "weekly
    daily active users rose from 24 to 186")."""
    rng = np.random.default_rng(3)
    seats = []
    for i in range(30):
        level = np.full(DAYS, float(rng.integers(20, 40)))
        if i < 5:  # a step down by a third, that stays
            level[200:] = np.round(level[200:] * 0.65)
        wobble = (rng.random(DAYS) < 0.05).astype(float)  # a seat more on a few days
        seats.append(
            pl.DataFrame(
                {
                    "customer_id": f"S{i:03d}",
                    "date": [day_of(d) for d in range(DAYS)],
                    "metric": "seats_used",
                    "value": level + wobble,
                }
            )
        )
    fell = {i: step(DAYS, 200, 0.6) for i in range(5)}
    sessions = usage_series(30, DAYS, END, multipliers=fell, metric="sessions")
    # the same counts as distinct users a day: user-days do not add up to users
    dau = usage_series(30, DAYS, END, multipliers=fell, metric="dau")
    signals = usage_trends(pl.concat([pl.concat(seats), sessions, dau]), day_of(215), END, S)
    changes = signals.filter(pl.col("type") == "usage_pattern_change").unique(
        ["customer_id", "subject"], keep="last", maintain_order=True
    )
    by_metric = {
        m: changes.filter(pl.col("subject") == m) for m in ("seats_used", "sessions", "dau")
    }
    assert set(by_metric["seats_used"]["customer_id"]) == {f"S{i:03d}" for i in range(5)}
    assert set(by_metric["sessions"]["customer_id"]) == {f"C{i:04d}" for i in range(5)}
    for row in by_metric["dau"].iter_rows(named=True):
        facts = json.loads(row["facts"])
        assert facts["per_day"] is True and facts["prior_week"] < 200
        assert row["evidence"][0]["metric"] == "dau on an average day, last 3 weeks"
    assert by_metric["dau"].height == by_metric["sessions"].height
    for row in by_metric["seats_used"].iter_rows(named=True):
        facts = json.loads(row["facts"])
        assert facts["per_day"] is True and 10 <= facts["recent_week"] < facts["prior_week"] < 41
        assert row["evidence"][0]["metric"] == "seats_used on an average day, last 3 weeks"
        context = narrative_context(
            {"type": "usage_pattern_change", "category": "usage", "customer_id": "S000"}
            | {"facts": row["facts"]}
        )
        summary = TemplateNarrator().narrate([context])[0]["summary"]
        assert f"averaged {round(facts['recent_week'])} a day against" in summary
    for row in by_metric["sessions"].iter_rows(named=True):
        facts = json.loads(row["facts"])
        assert facts["per_day"] is False and facts["prior_week"] > 200
        assert row["evidence"][0]["metric"] == "sessions per week, last 3 weeks"


def test_a_spikes_change_is_its_runs_average_only_when_the_run_is_sustained() -> None:
    """The facts say whose change change_pct is (`run_average`): a 2-day spike's is its latest
    day's (the template then gives the latest day's value with it), a sustained run's is the
    run's average (trial 7: a 2-day spike read "ran 185% above ... for 2 days")."""
    mult = np.ones(DAYS)
    mult[[200, 201]] = [4.0, 2.5]
    mult[[210, 211, 212, 213]] = 2.0
    usage = usage_series(10, DAYS, END, multipliers={4: mult}, seed=6, level=300.0)
    baselines = usage_baselines(usage, day_of(199), day_of(215), S)
    spikes = detect_usage_anomalies(baselines, S).filter(pl.col("customer_id") == "C0004")
    facts = {
        row["partition_date"]: json.loads(row["facts"]) for row in spikes.iter_rows(named=True)
    }
    second = facts[day_of(201)]
    assert second["days"] == 2 and second["run_average"] is False
    day = baselines.filter(
        (pl.col("customer_id") == "C0004") & (pl.col("partition_date") == day_of(201))
    )
    assert second["change_pct"] == round(day["rel_change"][0] * 100)
    sustained = facts[day_of(212)]
    assert sustained["days"] == 3 and sustained["run_average"] is True


def test_a_source_younger_than_the_look_back_moves_no_population_on_its_first_weeks() -> None:
    """A run's look-back may begin before the source's first day: the population is measured
    from that first day, not from zeros padded before it (trial 7: a "+18%" day of everyone's
    hours, a few weeks after the data began, that never happened)."""
    usage = _hours_book({}, seed=3).filter(pl.col("date") >= day_of(148))
    first = day_of(197)

    def measured(usage: pl.DataFrame, data_from: date | None) -> pl.DataFrame:
        window_start = first - timedelta(days=112)
        return population_shifts(
            usage, first, first + timedelta(days=30), S, None, window_start, data_from
        )

    assert measured(usage, None).height > 0  # from zeros padded before the source began
    assert measured(usage, day_of(148)).height == 0
    # a holiday of everyone's in the same weeks still is one
    holiday = pl.col("date").is_between(day_of(205), day_of(206))
    moved = usage.with_columns(
        pl.when(holiday).then((pl.col("value") * 0.4).round(2)).otherwise("value").alias("value")
    )
    assert set(measured(moved, day_of(148))["date"]) == {day_of(205), day_of(206)}


def test_evidence_numbers_keep_what_a_small_unit_needs() -> None:
    """Evidence shows whole numbers from 100, one decimal from 1 and two significant figures
    below (trial 7: a band of 0.78-1.5 hours read "0.8-1.5"); weekly totals of a measured
    quantity keep 3 significant figures below 100 and are whole above (not 1,127 as 1,130)."""
    values = pl.DataFrame({"v": [1234.56, 12.345, 0.7834, 0.001234]})
    assert values.select(_readable(pl.col("v")))["v"].to_list() == [1235.0, 12.3, 0.78, 0.0012]
    weeks = pl.DataFrame(
        {
            "w": [1127.4, 14.27, 147.0, 1127.0, 147.0],
            "_unit": [1.0, 1.0, 1.0, 1000.0, 1.0],
            "_level": [False, False, True, False, False],
            "metric": ["sessions", "sessions", "seats_used", "hours", "active_users"],
        }
    ).with_columns(pl.col("w") * pl.col("_unit"))
    shown = weeks.select(_shown(pl.col("w")))["w"].to_list()
    assert shown == [1127.0, 14.0, 21.0, 1127.0, 21.0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_young_rows_are_the_rows_a_mask_of_every_row_finds(seed: int) -> None:
    """`_young_rows` takes the young series' rows from their first rows: the same rows as the
    plain test of every row's day and position, on series of any start and length."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(60):
        first = int(rng.integers(0, DAYS - 1))
        last = int(rng.integers(first, DAYS))
        days = [day_of(d) for d in range(first, last + 1)]
        frames.append(
            pl.DataFrame(
                {"customer_id": f"C{i:03d}", "date": days, "metric": "dau", "value": 1.0},
                schema=USAGE_SCHEMA,
            )
        )
    grid = _grid_until(pl.concat(frames), END, None)
    for start, end in ((day_of(200), END), (day_of(150), day_of(150)), (day_of(0), END)):
        plain = plain_young(grid, start, end, S.min_history_days)
        assert np.array_equal(_young_rows(grid, start, end, S.min_history_days), plain)
        longer = plain_young(grid, start, end, young_days(S))
        assert np.array_equal(_young_rows(grid, start, end, young_days(S)), longer)


def test_a_measured_quantitys_one_day_spike_and_tiny_values_are_judged_and_shown() -> None:
    """A one-day spike of ~1 hour a day is judged in the units the day was judged in, not
    against `min_expected` in hours (review: 0 of 20 such spikes found, 19 in minutes); and a
    quantity of a few hundredths keeps its figures in the facts (0.004 GB is not 0)."""
    spike = np.ones(DAYS)
    spike[210] = 6.0
    hours = _hours_book(dict.fromkeys(range(20), spike), seed=4)
    found = detect_usage_anomalies(usage_baselines(hours, day_of(210), day_of(210), S), S)
    spikes = set(found.filter(pl.col("type") == "usage_spike")["customer_id"])
    assert len(spikes & {f"C{i:04d}" for i in range(20)}) >= 18
    tiny = _hours_book({3: step(DAYS, 200, 0.3)}, seed=4).with_columns(pl.col("value") / 100)
    drops = detect_usage_anomalies(usage_baselines(tiny, day_of(203), day_of(203), S), S)
    facts = json.loads(drops.filter(pl.col("customer_id") == "C0003")["facts"][0])
    assert 0 < facts["value"] < facts["lower"] < facts["expected"] < 0.05


def test_a_count_with_a_stray_fraction_stays_a_count_in_a_range_and_its_days() -> None:
    """The unit is decided by most of a series' days with usage: one 0.5 in a count (days
    after some of a range's days) changes nothing - the range gives its days' drops (review:
    any non-whole value made the whole series measured, 45 drops in a range against 5 in its
    days, and a value after a day changed how the range judged it)."""
    usage = usage_series(
        20, DAYS, END, level=3.0, multipliers={i: step(DAYS, 200, 0.3) for i in range(20)}
    )
    usage = usage.with_columns(
        pl.when((pl.col("customer_id") == "C0004") & (pl.col("date") == day_of(230)))
        .then(pl.col("value") + 0.5)
        .otherwise("value")
        .alias("value")
    )
    assert _grid_until(usage, END, None).unit is None  # no series is measured
    first = day_of(198)
    ranged = _anomalies_looked_back(usage, first, END)
    days = pl.concat(
        [_anomalies_looked_back(usage, d, d) for d in (first + timedelta(i) for i in range(42))]
    )
    key = ["customer_id", "partition_date", "type"]
    assert ranged.sort(key).equals(days.sort(key))


def _anomalies_looked_back(usage: pl.DataFrame, first: date, last: date) -> pl.DataFrame:
    """usage anomalies of [first, last], each day on its own 112-day look-back."""
    return detect_usage_anomalies(usage_baselines(usage, first, last, S, lookback_days=112), S)


def plain_young(grid: _DenseGrid, start: date, end: date, days: int) -> np.ndarray:
    """The young rows by a test of every row (what `_young_rows` must find)."""
    return np.flatnonzero(
        (grid.day >= _epoch_day(start))
        & (grid.day <= _epoch_day(end))
        & (grid.position >= 20)
        & (grid.position < days)
    )


def test_the_week_after_a_spike_is_no_fall_of_a_young_series() -> None:
    """A week at 3x in a young series is its best week; the ordinary weeks after it are half of
    it, but no lower than its typical earlier week: no drop (trial 8: 2 such false drops, the
    week after a spike read as a fall to half). A real stall after the spike still is one."""
    usage, starts = _young_book(13, {}, ages={2: 60, 6: 60}, level=200.0)
    spike = pl.col("date").is_between(day_of(starts[2] + 30), day_of(starts[2] + 36))
    stall = pl.col("date") >= day_of(starts[6] + 44)
    usage = usage.with_columns(
        pl.when(pl.col("customer_id").is_in(["C0002", "C0006"]) & spike)
        .then(pl.col("value") * 3)
        .when((pl.col("customer_id") == "C0006") & stall)
        .then((pl.col("value") * 0.15).round(0))
        .otherwise("value")
        .alias("value")
    )
    found = usage_trends(usage, day_of(DAYS - 95), END, S, lookback_days=112).filter(
        pl.col("type") == "usage_drop"
    )
    assert set(found["customer_id"]) == {"C0006"}
    assert found["partition_date"].min() >= day_of(starts[6] + 44)


def _seasonal_book() -> tuple[pl.DataFrame, pl.DataFrame]:
    """150 accounts (10% day-to-day noise); the first 50 ("education") work at 20% of their
    usual for five weeks from day DAYS - 60 and come back (a school's summer). Planted: C0100
    (software) drops to 30% during the season, C0003 (education) to 30% twelve days before
    it, C0005 (education) triples for three days two weeks after it. Returns the usage and
    the accounts (industry; region: half of each)."""
    rng = np.random.default_rng(21)
    season = slice(DAYS - 60, DAYS - 25)
    multipliers = {i: rng.lognormal(0.0, 0.1, DAYS) for i in range(150)}
    for i in range(50):
        multipliers[i][season] *= 0.2
    multipliers[100] = multipliers[100] * step(DAYS, DAYS - 45, 0.3)
    multipliers[3] = multipliers[3] * step(DAYS, DAYS - 72, 0.3)
    multipliers[5][DAYS - 10 : DAYS - 7] *= 3.0
    usage = usage_series(150, DAYS, END, multipliers=multipliers, seed=21)
    accounts = pl.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(150)],
            "industry": ["education" if i < 50 else "software" for i in range(150)],
            "region": ["NA" if i % 2 else "EMEA" for i in range(150)],
        }
    )
    return usage, accounts


def _baselines_of_a_day(usage: pl.DataFrame, accounts: pl.DataFrame, day: date) -> pl.DataFrame:
    """`usage_baselines` of a run of `day` alone, on its own population days and cohorts."""
    days = population_shifts(usage, day, day, S, cohorts=accounts)
    population = Population(days, cohort_members(accounts, days))
    return usage_baselines(usage, day, day, S, population=population)


def test_a_season_of_one_industry_is_that_industrys_not_each_of_its_accounts() -> None:
    """A third of the book, one industry, works at a fifth of its usual for five weeks and
    comes back: those are days of the industry's population (`cohorts`), not of the book's.
    Its accounts raise no drop while the season lasts and no spike when they return (judged
    against the whole book's days, 40+ of the 50 do), and an account's own drop still shows,
    inside the industry before the season and outside it during the season, and a spike of
    one of its accounts after the season. The regions,
    which did not move but for the industry's accounts in them, have no days; a run of a day
    alone gives the same rows."""
    usage, accounts = _seasonal_book()
    first, last = day_of(DAYS - 75), END
    days = population_shifts(usage, first, last, S, cohorts=accounts)
    education = days.filter(pl.col("cohort") == "industry=education")
    season_days = {day_of(d) for d in range(DAYS - 60, DAYS - 25)}
    assert len(set(education["date"]) & season_days) >= 25
    # the rest of the book did not move: its accounts' moves (the book's and their
    # industry's, which add up) stay under the population threshold every day
    rest = (
        days.filter(pl.col("cohort").is_null() | (pl.col("cohort") == "industry=software"))
        .group_by("date")
        .agg(pl.col("population_shift").sum())
    )
    assert (rest["population_shift"].abs() < math.log1p(S.population_shift)).all()
    assert not days["cohort"].str.starts_with("region=").any()
    population = Population(days, cohort_members(accounts, days))
    schools = population.members.filter(pl.col("cohort") == "industry=education")
    assert set(schools["customer_id"]) == {f"C{i:04d}" for i in range(50)}

    def found(population: Populations) -> dict[str, set[str]]:
        signals = detect_usage_anomalies(
            usage_baselines(usage, first, last, S, population=population), S
        )
        return {
            kind: set(signals.filter(pl.col("type") == kind)["customer_id"])
            for kind in ("usage_drop", "usage_spike")
        }

    judged = found(population)
    assert {"C0003", "C0100"} <= judged["usage_drop"]
    in_season = {f"C{i:04d}" for i in range(50)}
    assert judged["usage_drop"] & in_season == {"C0003"}
    # (judged after the season too, though most of its baseline's weeks were the season's)
    assert judged["usage_spike"] & in_season == {"C0005"}
    # the same days without knowing whose they are: the whole book's is no one's season
    unknown = found(days)
    assert len(unknown["usage_drop"] & in_season) > 40
    # and with no cohorts measured, the book's days do not cover the season either
    book_only = population_shifts(usage, first, last, replace(S, population_cohorts=()))
    assert len(found(book_only)["usage_drop"] & in_season) > 40
    # a run of each day alone (its own population days) gives the same rows
    baselines = usage_baselines(usage, first, last, S, population=population)
    for index in (DAYS - 58, DAYS - 40, DAYS - 25, DAYS - 24, DAYS - 9):
        day = day_of(index)
        alone = _baselines_of_a_day(usage, accounts, day)
        assert alone.equals(baselines.filter(pl.col("partition_date") == day)), day


def test_population_cohorts_name_customers_columns() -> None:
    with pytest.raises(ValueError, match=r"population_cohorts.*'country'"):
        UsageSettings(population_cohorts=("industry", "country"))


def test_a_season_of_one_industry_is_no_decline_new_level_or_adoption_of_its_accounts() -> None:
    """The same season seen by the weekly rules: its five weeks read as every school's decline
    over 8 weeks and as its new level (all 50 of them), days of the season or not. Judged net
    of their cohort's weekly change where it moved the same way (`population_trends`), at most
    a few schools keep a day's decline (the deeper end of the return), while the school whose
    own drop came before the season, and the software account whose usage fell in it, keep
    theirs. A run of a day alone gives the same signals."""
    usage, accounts = _seasonal_book()
    first, last = day_of(DAYS - 75), END
    days = population_shifts(usage, first, last, S, cohorts=accounts)
    moved = population_trends(usage, first, last, S, None, days, accounts)
    assert set(moved["cohort"].drop_nulls()) == {"industry=education"}
    schools = pl.col("customer_id").is_in([f"C{i:04d}" for i in range(50)])
    weekly = ["declining_usage", "usage_pattern_change", "adoption_trend"]

    def signals(population: Population, first: date = first, last: date = last) -> pl.DataFrame:
        found = usage_trends(usage, first, last, S, population=population)
        return found.filter(pl.col("type").is_in(weekly))

    days_only = signals(Population(days, cohort_members(accounts, days)))
    assert days_only.filter(schools)["customer_id"].n_unique() >= 40
    population = Population(days, cohort_members(accounts, days, moved), moved)
    netted = signals(population)
    kept = set(netted.filter(schools)["customer_id"])
    assert "C0003" in kept and len(kept - {"C0003"}) <= 3, kept
    by_type = {t: set(netted.filter(pl.col("type") == t)["customer_id"]) for t in weekly}
    assert {"C0003", "C0100"} <= by_type["declining_usage"] & by_type["usage_pattern_change"]
    # a run of each day alone, on its own population days and trends
    for index in (DAYS - 50, DAYS - 30, DAYS - 20, DAYS - 5):
        day = day_of(index)
        alone_days = population_shifts(usage, day, day, S, cohorts=accounts)
        alone_moved = population_trends(usage, day, day, S, None, alone_days, accounts)
        assert alone_moved.equals(moved.filter(pl.col("date") == day)), day
        alone = Population(
            alone_days, cohort_members(accounts, alone_days, alone_moved), alone_moved
        )
        assert signals(alone, day, day).equals(netted.filter(pl.col("partition_date") == day)), day


def test_a_regions_holiday_inside_an_industrys_peak_is_neither_ones_news() -> None:
    """Two columns of cohorts crossing: retailers (a quarter of the book, in every region) at
    180% for three weeks, and the American accounts (half of the book) at 30% for three days
    inside them (Thanksgiving in December's peak). Measured each net of the other
    (`_moved_together`), every account's day is the sum of its cohorts' moves: no retailer
    abroad spikes on the holiday, no American account drops, while a European software
    account's own drop that began on the holiday is found. Measured one column after the
    other (trial 11), the retailers' peak was no cohort's on the holiday (its American half
    fell), and the few Asian retailers, too few for their region's own measure, spiked. A run
    of a day alone gives the same rows."""
    n = 200
    rng = np.random.default_rng(31)
    region = np.where(np.arange(n) % 10 < 5, "NA", np.where(np.arange(n) % 10 < 9, "EMEA", "APAC"))
    retail = (np.arange(n) // 10) % 4 == 0
    american = region == "NA"
    multipliers = {i: rng.lognormal(0.0, 0.1, DAYS) for i in range(n)}
    for i in range(n):
        if retail[i]:
            multipliers[i][DAYS - 21 :] *= 1.8
        if american[i]:
            multipliers[i][DAYS - 10 : DAYS - 7] *= 0.3
    planted = "C0015"  # software, EMEA
    assert not retail[15] and region[15] == "EMEA"
    multipliers[15] = multipliers[15] * step(DAYS, DAYS - 10, 0.3)
    usage = usage_series(n, DAYS, END, multipliers=multipliers, seed=31)
    accounts = pl.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(n)],
            "industry": np.where(retail, "retail", "software"),
            "region": region,
        }
    )
    first, last = day_of(DAYS - 14), END
    days = population_shifts(usage, first, last, S, cohorts=accounts)
    holiday = {day_of(d) for d in range(DAYS - 10, DAYS - 7)}
    # (which columns carry which part of the moves is not unique - software at 55% and the
    # Europeans at 181% fit the four kinds of account as well as retail at 180% and the
    # Americans at 30% - but their sums are)
    on_holiday = days.filter(pl.col("date").is_in(list(holiday)))
    assert on_holiday["cohort"].drop_nulls().n_unique() >= 2
    population = Population(days, cohort_members(accounts, days))
    baselines = usage_baselines(usage, first, last, S, population=population)
    signals = detect_usage_anomalies(baselines, S)
    spikes = set(signals.filter(pl.col("type") == "usage_spike")["customer_id"])
    drops = set(signals.filter(pl.col("type") == "usage_drop")["customer_id"])
    assert spikes == set() and drops == {planted}, (spikes, drops)
    for index in (DAYS - 9, DAYS - 8):
        day = day_of(index)
        alone = _baselines_of_a_day(usage, accounts, day)
        assert alone.equals(baselines.filter(pl.col("partition_date") == day)), day

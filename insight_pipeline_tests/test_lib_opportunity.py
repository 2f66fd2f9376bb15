"""Entitlement limits: a rising account is projected to its limit, a flat one is not, and a
trend too flat to reach the limit in any sensible time gives no date instead of an error.
Feature discovery reads no further back than it needs, and its sort on one packed key orders
rows as the sort on the columns."""

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insight_pipeline.lib.detectors.common import sort_by_integers
from insight_pipeline.lib.detectors.features import HISTORY_DAYS, detect_feature_discovery
from insight_pipeline.lib.detectors.opportunity import detect_advocacy, detect_entitlement_limit
from insight_pipeline.lib.settings import OpportunitySettings
from insight_pipeline.sample import generate_sample
from insight_pipeline_tests.synthetic import customers

END = date(2026, 6, 30)
DAYS = 112


def series(customer: str, values: np.ndarray) -> pl.DataFrame:
    days = [END - timedelta(days=len(values) - 1 - i) for i in range(len(values))]
    return pl.DataFrame(
        {
            "customer_id": customer,
            "date": days,
            "metric": "api_calls",
            "value": values.astype(np.float64),
        }
    )


def test_projection_finds_the_riser_and_gives_no_date_for_an_almost_flat_trend() -> None:
    days = np.arange(DAYS)
    usage = pl.concat(
        [
            # at 90% of the limit and rising 2% a week: crosses it within weeks
            series("RISE", 900.0 * 1.02 ** ((days - DAYS + 1) / 7)),
            # flat at half the limit: nothing to say
            series("FLAT", np.full(DAYS, 500.0)),
            # at 93% of the limit, rising by a hair (fractional values): at the limit now, but
            # the projected crossing lies thousands of years away - past what a date can hold
            series("HAIR", 930.0 * (1 + 1e-11) ** days),
        ]
    )
    entitlements = pl.DataFrame(
        {
            "customer_id": ["RISE", "FLAT", "HAIR"],
            "metric": ["api_calls"] * 3,
            "entitled_value": [1000.0] * 3,
        }
    )
    accounts = customers(["RISE", "FLAT", "HAIR"])
    signals = detect_entitlement_limit(
        usage, entitlements, accounts, END, END, OpportunitySettings()
    )
    by_customer = {row["customer_id"]: row for row in signals.iter_rows(named=True)}
    assert set(by_customer) == {"RISE", "HAIR"}
    assert '"limit_date": null' in by_customer["HAIR"]["facts"].replace('":null', '": null')
    assert '"limit_date": null' not in by_customer["RISE"]["facts"].replace('":null', '": null')


def test_one_busy_week_projects_no_crossing_and_a_steady_climb_still_does() -> None:
    """Flat at 82% of the limit with the last week at 95% (a month-end close): a least-squares
    line through the 8 weekly means tilts up and projected a crossing within weeks; the median
    of the slopes between weeks (Theil-Sen) sees no trend. A climb of 2% a week from 82% is
    still projected."""
    days = np.arange(DAYS)
    busy = np.full(DAYS, 820.0)
    busy[-7:] = 950.0
    usage = pl.concat(
        [series("BUSY", busy), series("CLIMB", 820.0 * 1.02 ** ((days - DAYS + 1) / 7))]
    )
    entitlements = pl.DataFrame(
        {"customer_id": ["BUSY", "CLIMB"], "metric": ["api_calls"] * 2, "entitled_value": 1000.0}
    )
    accounts = customers(["BUSY", "CLIMB"])
    s = OpportunitySettings(entitlement_ratio=0.99)  # (the busy week is not at the limit)
    signals = detect_entitlement_limit(usage, entitlements, accounts, END, END, s)
    assert signals["customer_id"].to_list() == ["CLIMB"]
    facts = json.loads(signals["facts"][0])
    assert facts["limit_date"] is not None


def test_a_limit_is_reached_on_days_of_the_week_not_on_one_busy_day() -> None:
    """At the limit means reaching 90% of it on `limit_days` (3) of the last 7 days: a single
    busy day at the limit is not, a weekday-only account at it every working day is, and an
    account whose weekly average is already over the limit is said to be over, with no limit
    date (the projection would put the crossing in the past)."""
    days = np.arange(DAYS)
    weekday = np.array([(END - timedelta(days=DAYS - 1 - int(d))).weekday() < 5 for d in days])
    two_busy_days = np.full(DAYS, 500.0)
    two_busy_days[-3:-1] = 990.0
    usage = pl.concat(
        [
            series("SPIKE", two_busy_days),
            series("WORKDAYS", np.where(weekday, 950.0, 40.0)),
            series("OVER", 1200.0 * 1.01 ** (days / 7)),  # over, and still rising
        ]
    )
    ids = ["SPIKE", "WORKDAYS", "OVER"]
    entitlements = pl.DataFrame(
        {"customer_id": ids, "metric": ["api_calls"] * 3, "entitled_value": [1000.0] * 3}
    )
    accounts = customers(ids)
    signals = detect_entitlement_limit(
        usage, entitlements, accounts, END, END, OpportunitySettings()
    )
    facts = {r["customer_id"]: json.loads(r["facts"]) for r in signals.iter_rows(named=True)}
    assert set(facts) == {"WORKDAYS", "OVER"}
    assert facts["WORKDAYS"]["level"] == 950 and facts["WORKDAYS"]["at_limit"]
    assert not facts["WORKDAYS"]["average_over"]
    assert facts["OVER"]["average_over"] and facts["OVER"]["limit_date"] is None
    evidence = signals.filter(pl.col("customer_id") == "OVER")["evidence"].to_list()[0]
    assert "already at or over the limit" in str(evidence)
    # three busy days of the week are a limit reached
    three_busy_days = two_busy_days.copy()
    three_busy_days[-1] = 990.0
    again = detect_entitlement_limit(
        series("SPIKE", three_busy_days), entitlements, accounts, END, END, OpportunitySettings()
    )
    assert again["customer_id"].to_list() == ["SPIKE"]


def test_entitlement_rows_come_in_grid_order_with_their_own_entitlement() -> None:
    """The entitlements are matched to the grid's series, not its rows: every day of a range
    comes in (customer, metric, day) order, whatever the entitlements' order, once per
    entitlement of its series (a repeated one counts twice) and with that entitlement's value;
    a zero entitlement or a customer not in the accounts gives nothing."""
    days = np.arange(DAYS)
    usage = pl.concat(
        [
            series("A", np.full(DAYS, 950.0)),
            series("B", np.full(DAYS, 960.0)),
            series("B", np.full(DAYS, 97.0)).with_columns(pl.lit("seats").alias("metric")),
            series("C", np.full(DAYS, 990.0)),
            series("D", 500.0 + days),
        ]
    )
    entitlements = pl.DataFrame(
        {
            "customer_id": ["D", "B", "C", "A", "B", "B", "A"],
            "metric": ["api_calls", "seats", "api_calls", "api_calls", "api_calls"] + ["seats"] * 2,
            "entitled_value": [600.0, 100.0, 1000.0, 0.0, 1000.0, 99.0, 10.0],
        }
    )
    accounts = customers(["D", "B", "A"])
    first = END - timedelta(days=2)
    signals = detect_entitlement_limit(
        usage, entitlements, accounts, first, END, OpportunitySettings()
    )
    got = signals.select(
        "customer_id",
        "subject",
        "partition_date",
        pl.col("facts").str.json_path_match("$.entitled").cast(pl.Float64).alias("entitled"),
    ).rows()
    dates = [first + timedelta(days=i) for i in range(3)]
    expected = (
        [("B", "api_calls", d, 1000.0) for d in dates]
        + [("B", "seats", d, e) for d in dates for e in (100.0, 99.0)]
        + [("D", "api_calls", d, 600.0) for d in dates]
    )
    assert got == expected


def test_feature_discovery_needs_only_its_history_days(tmp_path: Path) -> None:
    """The source asset reads feature usage HISTORY_DAYS before the run, not the usage
    look-back: the planted discoveries of a month are found the same from that cut."""
    generate_sample(tmp_path, accounts=150, days=240, seed=11, end_date=END)
    features = pl.read_parquet(tmp_path / "feature_usage_daily.parquet")
    accounts = pl.read_parquet(tmp_path / "customers.parquet")
    first = END - timedelta(days=29)
    cut = features.filter(pl.col("date") >= first - timedelta(days=HISTORY_DAYS))
    assert cut.height < features.height
    full = detect_feature_discovery(features, accounts, first, END)
    key = ["customer_id", "subject", "partition_date"]
    assert full.height > 0
    assert detect_feature_discovery(cut, accounts, first, END).sort(key).equals(full.sort(key))


def test_feature_history_reaches_the_oldest_day_that_can_matter() -> None:
    """A feature used 56 days before a use on the first day a discovery can still be shown is no
    discovery (the gap must exceed 56 days). That earlier day lies HISTORY_DAYS - 1 days before
    the run: a read starting one day later would report a discovery that is not one."""
    start = END - timedelta(days=6)
    accounts = pl.DataFrame(
        {
            "customer_id": ["OLD"],
            "contract_start": [END - timedelta(days=400)],
            "churned_on": pl.Series([None], dtype=pl.Date),
            "renewal_date": [END + timedelta(days=200)],
        }
    )
    shown_from = start - timedelta(days=13)  # a discovery is shown for 14 days from its first use
    features = pl.DataFrame(
        {
            "customer_id": ["OLD", "OLD"],
            "date": [shown_from - timedelta(days=56), shown_from],
            "feature": ["exports", "exports"],
            "active_users": [4, 6],
        }
    )
    assert features["date"].min() >= start - timedelta(days=HISTORY_DAYS)
    assert detect_feature_discovery(features, accounts, start, END).height == 0
    too_short = features.filter(pl.col("date") > features["date"].min())
    found = detect_feature_discovery(too_short, accounts, start, END)
    assert found["partition_date"].to_list() == [start]


def test_feature_discovery_is_shown_only_while_the_account_is_a_customer() -> None:
    """A discovery is shown for 14 days from its first use, but not on or after the day its
    account churned; an account that stays keeps all 14."""
    first_use = END - timedelta(days=20)
    accounts = pl.DataFrame(
        {
            "customer_id": ["CHURNS", "STAYS"],
            "contract_start": [END - timedelta(days=400)] * 2,
            "churned_on": [first_use + timedelta(days=5), None],
            "renewal_date": [END + timedelta(days=200)] * 2,
        },
        schema_overrides={"churned_on": pl.Date},
    )
    features = pl.DataFrame(
        {
            "customer_id": ["CHURNS", "STAYS"],
            "date": [first_use] * 2,
            "feature": ["exports"] * 2,
            "active_users": [3, 3],
        }
    )
    found = detect_feature_discovery(features, accounts, END - timedelta(days=29), END)
    days = found.group_by("customer_id").agg(
        pl.col("partition_date").min().alias("first"), pl.col("partition_date").max().alias("last")
    )
    assert sorted(days.rows()) == [
        ("CHURNS", first_use, first_use + timedelta(days=4)),
        ("STAYS", first_use, first_use + timedelta(days=13)),
    ]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-(2**40), 2**40)),
            st.integers(0, 300),
            st.dates(date(1960, 1, 1), date(2100, 12, 31)),
        ),
        min_size=0,
        max_size=60,
    ),
    narrow=st.booleans(),
)
def test_sorting_on_one_packed_key_orders_rows_as_sorting_on_the_columns(
    rows: list[tuple[int | None, int, date]], narrow: bool
) -> None:
    """The packed key (feature discovery's sort) gives the columns' order: small and negative
    ranges packed, nulls and ranges too wide for 64 bits through the plain sort."""
    frame = pl.DataFrame(
        [((a % 1000) if narrow and a is not None else a, b, c) for a, b, c in rows],
        schema={"a": pl.Int64, "b": pl.UInt32, "date": pl.Date},
        orient="row",
    ).with_row_index("row")
    columns = ["a", "b", "date"]
    ordered = sort_by_integers(frame, columns)
    assert ordered.select(columns).equals(frame.sort(columns).select(columns))
    assert sorted(ordered["row"].to_list()) == list(range(frame.height))  # every row, once
    if not frame.select(columns).is_duplicated().any():  # then the order is the rows' own
        assert ordered.equals(frame.sort(columns))


def test_packed_sort_keeps_feature_discovery_exact_on_wide_codes() -> None:
    """Codes far apart (a long-lived process's categorical codes) still sort as the columns, and
    ranges too wide to pack take the plain sort."""
    frame = pl.DataFrame(
        {"_c": [2**31, 5, 2**31, 5], "_f": [1, 2**20, 0, 2**20], "date": [3, 2, 1, 0]},
        schema={"_c": pl.UInt32, "_f": pl.UInt32, "date": pl.Int32},
    )
    assert sort_by_integers(frame, ["_c", "_f", "date"]).rows() == [
        (5, 2**20, 0),
        (5, 2**20, 2),
        (2**31, 0, 1),
        (2**31, 1, 3),
    ]
    # 42 + 9 + 16 bits: too wide for one key, sorted on the columns
    wide = pl.DataFrame(
        {"_c": [2**40, -(2**40)], "_f": [0, 300], "date": [0, 60_000]},
        schema={"_c": pl.Int64, "_f": pl.UInt32, "date": pl.Int32},
    )
    assert sort_by_integers(wide, ["_c", "_f", "date"]).rows() == [
        (-(2**40), 300, 60_000),
        (2**40, 0, 0),
    ]
    # a range that overflows Int64 arithmetic, and UInt64 values past Int64: the plain sort
    for extreme in (
        pl.DataFrame({"a": [2**62, -(2**62), 0]}, schema={"a": pl.Int64}),
        pl.DataFrame({"a": [2**64 - 1, 0, 2**63]}, schema={"a": pl.UInt64}),
    ):
        assert sort_by_integers(extreme, ["a"]).equals(extreme.sort("a"))


def test_a_discovery_shows_the_active_users_of_its_latest_active_day() -> None:
    """Each day a discovery is shown, its evidence holds the active users of the latest active
    day up to that day within its window (the rows that follow the first use, gathered by
    position; none after the window), and each feature and account its own. A source whose
    rows repeat (not quarantined: twice as many rows in the window) gives the same signals."""
    start, end = END - timedelta(days=29), END
    first_use = start + timedelta(days=3)
    accounts = pl.DataFrame(
        {
            "customer_id": ["A", "B"],
            "contract_start": [END - timedelta(days=400)] * 2,
            "churned_on": pl.Series([None, None], dtype=pl.Date),
            "renewal_date": [END + timedelta(days=200)] * 2,
        }
    )
    # used every day of the window but the second, 10 + i users on day i; then 50 the day after
    days = [i for i in range(14) if i != 1]
    rows = [("A", first_use + timedelta(days=i), "exports", 10 + i) for i in days] + [
        ("A", first_use + timedelta(days=14), "exports", 50),  # after the window
        ("A", first_use - timedelta(days=100), "alerts", 1),  # an old use of another feature
        ("A", first_use + timedelta(days=1), "alerts", 70),  # and a new one, sorted next to it
        ("B", first_use + timedelta(days=1), "exports", 90),  # another account, same feature
    ]
    features = pl.DataFrame(
        rows, schema=["customer_id", "date", "feature", "active_users"], orient="row"
    )
    signals = detect_feature_discovery(features, accounts, start, end)

    def shown(customer: str, feature: str) -> list[float]:
        picked = signals.filter(
            (pl.col("customer_id") == customer) & (pl.col("subject") == feature)
        ).sort("partition_date")
        return [row["evidence"][0]["value"] for row in picked.iter_rows(named=True)]

    exports = signals.filter((pl.col("customer_id") == "A") & (pl.col("subject") == "exports"))
    assert exports["partition_date"].sort().to_list() == [
        first_use + timedelta(days=i) for i in range(14)
    ]
    assert shown("A", "exports") == [10, 10, *[10 + i for i in range(2, 14)]]
    assert set(shown("A", "alerts")) == {70} and set(shown("B", "exports")) == {90}
    key = ["customer_id", "subject", "partition_date"]
    repeated = detect_feature_discovery(pl.concat([features, features]), accounts, start, end)
    assert repeated.sort(key).equals(signals.sort(key))


def test_a_feature_table_just_connected_raises_no_discovery_until_its_record_covers_the_gap(
    tmp_path: Path,
) -> None:
    """On a source whose feature usage begins recently, every feature in use has no earlier
    day on record: none of those is a discovery until the record reaches MIN_PRIOR_DAYS back,
    and after that a feature first used is one (the planted discoveries of the full history)."""
    generate_sample(tmp_path, accounts=150, days=240, seed=11, end_date=END)
    features = pl.read_parquet(tmp_path / "feature_usage_daily.parquet")
    accounts = pl.read_parquet(tmp_path / "customers.parquet")
    since = END - timedelta(days=29)
    connected = features.filter(pl.col("date") >= since)
    # read as if every feature were new: a flood on the first days
    assert detect_feature_discovery(connected, accounts, since, END).height > 100
    assert detect_feature_discovery(connected, accounts, since, END, since).height == 0
    # a month later than the record's start + MIN_PRIOR_DAYS, the full history's discoveries
    # are found as before, the record's start given or not
    first = END - timedelta(days=29)
    early = features["date"].min()
    full = detect_feature_discovery(features, accounts, first, END)
    assert full.height > 0
    key = ["customer_id", "subject", "partition_date"]
    given = detect_feature_discovery(features, accounts, first, END, early)
    assert given.sort(key).equals(full.sort(key))


def test_a_promoter_is_a_referral_candidate_only_once_its_usage_is_seen_healthy() -> None:
    """A referral needs healthy usage on record: a promoter whose usage history is shorter than
    the growth comparison (growth_weeks) is not one yet; the same promoter with the history is."""
    s = OpportunitySettings()
    accounts = customers(["LONG", "SHORT"])
    long_history = np.full(7 * s.growth_weeks + 14, 500.0)
    usage = pl.concat([series("LONG", long_history), series("SHORT", np.full(30, 500.0))])
    nps = pl.DataFrame(
        {"customer_id": ["LONG", "SHORT"], "responded_on": [END, END], "score": [10, 10]},
        schema_overrides={"score": pl.Int64},
    )
    meetings = pl.DataFrame(
        schema={
            "customer_id": pl.String,
            "start_at": pl.Datetime("us", "UTC"),
            "sentiment": pl.Float64,
        }
    )
    health = pl.DataFrame(schema={"customer_id": pl.String, "date": pl.Date, "score": pl.Float64})
    signals = detect_advocacy(nps, usage, health, meetings, accounts, END, END, s)
    referrals = signals.filter(pl.col("type") == "referral_candidate")["customer_id"].to_list()
    assert referrals == ["LONG"]
    # no health score on record is no evidence: none named (trial 9: "health score: None")
    (evidence,) = signals.filter(pl.col("type") == "referral_candidate")["evidence"].to_list()
    assert [e["source"] for e in evidence] == ["nps_responses", "usage_daily"]
    scored = pl.DataFrame(
        {"customer_id": ["LONG"], "date": [END], "score": [82.0]},
        schema_overrides={"date": pl.Date},
    )
    with_health = detect_advocacy(nps, usage, scored, meetings, accounts, END, END, s)
    (evidence,) = with_health.filter(pl.col("type") == "referral_candidate")["evidence"].to_list()
    assert evidence[-1]["source"] == "health_scores" and evidence[-1]["value"] == 82.0


def test_a_limit_days_outside_a_week_is_refused_by_name() -> None:
    from insight_pipeline.lib.settings import Settings

    for days in (0, 8):
        with pytest.raises(ValueError, match=r"opportunity\.limit_days="):
            Settings.from_dict({"opportunity": {"limit_days": days}})


def test_usage_growth_is_the_median_of_the_metrics_not_the_largest_units() -> None:
    """An account's growth is the median of its metrics' own changes: API calls up 35% (the
    largest unit by far), hours up 3% and reports down 33% is no growing account, so no case
    study (trial 7: "usage grew +35%"); every metric up 12% is, and says +12%."""
    s = OpportunitySettings()
    days = 7 * s.growth_weeks + 14
    t = np.arange(days)

    def grown(customer: str, metric: str, level: float, change: float) -> pl.DataFrame:
        # flat, then the change over the last 4 weeks (the older 4 weeks stay flat)
        values = np.where(t >= days - 28, level * (1 + change), level)
        return series(customer, values).with_columns(pl.lit(metric).alias("metric"))

    usage = pl.concat(
        [
            grown("MIXED", "api_calls", 200_000.0, 0.35),
            grown("MIXED", "hours_used", 40.0, 0.03),
            grown("MIXED", "reports", 30.0, -0.33),
            grown("ALL", "api_calls", 200_000.0, 0.12),
            grown("ALL", "hours_used", 40.0, 0.12),
            grown("ALL", "reports", 30.0, 0.12),
        ]
    )
    nps = pl.DataFrame(
        {"customer_id": ["MIXED", "ALL"], "responded_on": [END, END], "score": [10, 10]},
        schema_overrides={"score": pl.Int64},
    )
    meetings = pl.DataFrame(
        schema={"customer_id": pl.String, "start_at": pl.Datetime("us", "UTC"), "sentiment": float}
    )
    health = pl.DataFrame(
        {"customer_id": ["MIXED", "ALL"], "date": [END, END], "score": [90.0, 90.0]}
    )
    accounts = customers(["MIXED", "ALL"])
    signals = detect_advocacy(nps, usage, health, meetings, accounts, END, END, s)
    studies = signals.filter(pl.col("type") == "case_study_candidate")
    assert studies["customer_id"].to_list() == ["ALL"]
    assert json.loads(studies["facts"][0])["growth_pct"] == 12
    mixed = signals.filter(pl.col("customer_id") == "MIXED")
    assert mixed["type"].to_list() == ["referral_candidate"]
    assert json.loads(mixed["facts"][0])["growth_pct"] == 3


def test_usage_that_stopped_is_a_finite_fall_in_the_median_not_a_nan() -> None:
    """A metric that stopped is a fall of 99.9%: with one other metric up 40% the median of
    the two is a fall, not NaN (review: NaN passed every growth bar, and showed as 'NaN%')."""
    s = OpportunitySettings()
    days = 7 * s.growth_weeks + 14
    t = np.arange(days)
    usage = pl.concat(
        [
            series("STOP", np.where(t >= days - 28, 1.4e5, 1e5)),
            series("STOP", np.where(t >= days - 28, 0.0, 30.0)).with_columns(
                pl.lit("reports").alias("metric")
            ),
        ]
    )
    nps = pl.DataFrame(
        {"customer_id": ["STOP"], "responded_on": [END], "score": [10]},
        schema_overrides={"score": pl.Int64},
    )
    meetings = pl.DataFrame(
        schema={"customer_id": pl.String, "start_at": pl.Datetime("us", "UTC"), "sentiment": float}
    )
    health = pl.DataFrame({"customer_id": ["STOP"], "date": [END], "score": [90.0]})
    signals = detect_advocacy(nps, usage, health, meetings, customers(["STOP"]), END, END, s)
    assert signals.height == 0  # neither a referral nor a case study

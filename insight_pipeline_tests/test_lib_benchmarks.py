"""Peer benchmarks read only the last weeks of the usage window, with the same result."""

import json
from datetime import date, timedelta

import numpy as np
import polars as pl

from insight_pipeline.lib.detectors.benchmarks import (
    benchmark_opened,
    benchmark_usage,
    benchmarked_series_last_before,
    detect_benchmarks,
    peer_percentiles,
)
from insight_pipeline.lib.detectors.usage import carry_last_before
from insight_pipeline.lib.insights.narrate import TemplateNarrator
from insight_pipeline.lib.settings import BenchmarkSettings
from insight_pipeline_tests.synthetic import USAGE_SCHEMA

END = date(2026, 6, 30)
DAYS = 112


def retail_accounts(ids: list[str], segments: list[str]) -> pl.DataFrame:
    """Customers of one industry in the given segments, renewing in 2027, none churned."""
    n = len(ids)
    return pl.DataFrame(
        {
            "customer_id": ids,
            "segment": segments,
            "industry": ["retail"] * n,
            "contract_start": [None] * n,
            "churned_on": [None] * n,
            "renewal_date": [date(2027, 1, 1)] * n,
        },
        schema_overrides={"contract_start": pl.Date, "churned_on": pl.Date},
    )


def usage_with_gaps(seed: int = 4) -> tuple[pl.DataFrame, pl.DataFrame]:
    """60 accounts in two cohorts: dau and seats with missing days (which count as 0), series
    that begin before and inside the last 28 days, seats that begin after dau and the reverse,
    one account with no seats at all, one whose only rows are weeks old."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(60):
        customer = f"C{i:03d}"
        begins = {"dau": int(rng.integers(0, DAYS)), "seats_used": int(rng.integers(0, DAYS))}
        if i == 7:
            begins.pop("seats_used")
        for metric, begin in begins.items():
            level = 5.0 + i if metric == "dau" else 2.0 + i % 9
            for d in range(begin, DAYS):
                if i == 11 and d > 40:  # gone quiet weeks ago: only zeros from then on
                    break
                if rng.random() < 0.2:  # a missing row: 0 that day
                    continue
                day = END - timedelta(days=DAYS - 1 - d)
                rows.append((customer, day, metric, float(rng.poisson(level))))
    usage = pl.DataFrame(
        rows,
        schema=USAGE_SCHEMA,
        orient="row",
    )
    accounts = retail_accounts(
        [f"C{i:03d}" for i in range(60)], ["smb" if i % 2 else "mid_market" for i in range(60)]
    )
    return usage, accounts


def test_benchmarks_from_the_last_weeks_equal_those_from_the_whole_window() -> None:
    usage, accounts = usage_with_gaps()
    entitlements = pl.DataFrame(
        {
            "customer_id": ["C003", "C004"],
            "metric": ["seats_used"] * 2,
            "entitled_value": [9.0, 0.0],
        }
    )
    s = BenchmarkSettings(min_cohort=5)
    for first, last in ((END, END), (END - timedelta(days=20), END)):
        whole = peer_percentiles(usage, entitlements, accounts, first, last, s)
        recent_rows = benchmark_usage(usage.lazy(), first, last, s)
        recent = peer_percentiles(recent_rows, entitlements, accounts, first, last, s)
        # the series' last days before the span learnt once for a run of several spans
        last_before = benchmarked_series_last_before(usage.lazy(), first, s)
        spanned = benchmark_usage(usage.lazy(), first, last, s, last_before)
        # (every column: a series' 0 added on the first day ties with a read row of 0 that day
        # on the other four, and an unstable sort of those flaked in CI)
        keys = ["customer_id", "metric", "date", "value", "last_before"]
        assert spanned.sort(keys).equals(recent_rows.sort(keys))
        assert recent_rows.height < 0.75 * usage.height
        # some series begin too late for a 28-day mean: those accounts are not benchmarked
        assert 20 <= whole["customer_id"].n_unique() < 60
        assert recent.equals(whole)
        assert detect_benchmarks(recent, s).equals(detect_benchmarks(whole, s))


def steady_usage(levels: dict[str, float], days: pl.Series) -> pl.DataFrame:
    """Each account's dau at its level every day, on 20 seats."""
    return pl.DataFrame(
        [
            (customer, day, metric, value)
            for customer, level in levels.items()
            for day in days
            for metric, value in (("dau", level), ("seats_used", 20.0))
        ],
        schema=USAGE_SCHEMA,
        orient="row",
    )


def test_a_cohort_of_similar_accounts_has_no_outliers_but_a_real_gap_is_one() -> None:
    """A decile always holds a tenth of a cohort; among 40 accounts within 6% of each other
    none is ahead or behind its peers, while one at twice the median and one at 0.6x are."""
    days = pl.date_range(END - timedelta(days=40), END, "1d", eager=True)
    levels = {f"C{i:03d}": 10.0 * (0.94 + 0.003 * i) for i in range(40)}
    levels |= {"AHEAD": 20.0, "BEHIND": 6.0}
    usage = steady_usage(levels, days)
    accounts = retail_accounts(list(levels), ["smb"] * len(levels))
    no_entitlements = pl.DataFrame(
        schema={"customer_id": pl.String, "metric": pl.String, "entitled_value": pl.Float64}
    )
    s = BenchmarkSettings()
    percentiles = peer_percentiles(usage, no_entitlements, accounts, END, END, s)
    signals = detect_benchmarks(percentiles, s)
    assert sorted(zip(signals["customer_id"], signals["type"], strict=True)) == [
        ("AHEAD", "outperforming"),
        ("BEHIND", "underperforming"),
    ]
    # by the deciles alone, the edges of the similar accounts would be flagged too
    deciles_only = detect_benchmarks(percentiles, BenchmarkSettings(min_effect=0.0))
    assert deciles_only.height > 4


def test_an_unknown_segment_or_industry_is_no_cohort() -> None:
    """Accounts whose industry is unknown are compared within their segment (named so in the
    evidence), not among themselves; accounts whose segment is unknown are compared with no one,
    however far from the others they are."""
    days = pl.date_range(END - timedelta(days=40), END, "1d", eager=True)
    levels = {f"C{i:03d}": 10.0 * (0.94 + 0.003 * i) for i in range(40)}
    no_industry = {f"NI{i:02d}": 10.0 for i in range(11)} | {"NI_AHEAD": 20.0}
    no_segment = {f"NS{i:02d}": 40.0 for i in range(11)} | {"NS_AHEAD": 80.0}
    everyone = levels | no_industry | no_segment
    usage = steady_usage(everyone, days)
    accounts = retail_accounts(list(everyone), ["smb"] * len(everyone)).with_columns(
        pl.when(pl.col("customer_id").str.starts_with("NI"))
        .then(None)
        .otherwise(pl.col("industry"))
        .alias("industry"),
        pl.when(pl.col("customer_id").str.starts_with("NS"))
        .then(None)
        .otherwise(pl.col("segment"))
        .alias("segment"),
    )
    no_entitlements = pl.DataFrame(
        schema={"customer_id": pl.String, "metric": pl.String, "entitled_value": pl.Float64}
    )
    s = BenchmarkSettings()
    percentiles = peer_percentiles(usage, no_entitlements, accounts, END, END, s)
    assert not percentiles["customer_id"].str.starts_with("NS").any()
    ahead = percentiles.filter(pl.col("customer_id") == "NI_AHEAD").row(0, named=True)
    assert (ahead["cohort_name"], ahead["peers"]) == ("smb", 52)
    signals = detect_benchmarks(percentiles, s)
    assert sorted(zip(signals["customer_id"], signals["type"], strict=True)) == [
        ("NI_AHEAD", "outperforming")
    ]
    assert "across 52 smb accounts" in str(signals["evidence"][0])


def test_an_account_still_onboarding_is_neither_benchmarked_nor_a_peer() -> None:
    """A customer of three weeks at a third of its peers' use is ramping up, not behind; so it
    is at 51 days, past its 45 days of onboarding, while its 28-day window still holds some of
    them (a long ramp read as underperforming: trial 6, 33 of 58 accounts at day 45); once its
    whole window is past onboarding, the same gap is one."""
    days = pl.date_range(END - timedelta(days=40), END, "1d", eager=True)
    levels = {f"C{i:03d}": 10.0 * (0.94 + 0.003 * i) for i in range(40)} | {"NEW": 3.0}
    usage = steady_usage(levels, days)
    accounts = retail_accounts(list(levels), ["smb"] * len(levels)).with_columns(
        pl.when(pl.col("customer_id") == "NEW")
        .then(pl.lit(END - timedelta(days=21)))
        .otherwise(pl.col("contract_start"))
        .alias("contract_start")
    )
    no_entitlements = pl.DataFrame(
        schema={"customer_id": pl.String, "metric": pl.String, "entitled_value": pl.Float64}
    )
    s = BenchmarkSettings()
    percentiles = peer_percentiles(usage, no_entitlements, accounts, END, END, s)
    assert "NEW" not in percentiles["customer_id"].to_list()
    assert percentiles["peers"].max() == 40

    def judged_on(day: date) -> pl.DataFrame:
        usage_then = steady_usage(levels, pl.date_range(END - timedelta(days=40), day, eager=True))
        return peer_percentiles(usage_then, no_entitlements, accounts, day, day, s)

    assert "NEW" not in judged_on(END + timedelta(days=30))["customer_id"].to_list()
    past = END + timedelta(days=s.window_days + s.onboarding_days - 21 - 1)  # the first day
    assert detect_benchmarks(judged_on(past), s)["customer_id"].to_list() == ["NEW"]
    before = judged_on(past - timedelta(days=1))["customer_id"].to_list()
    assert "NEW" not in before


def test_an_account_whose_rows_stopped_long_ago_is_judged_alike_by_a_range_and_its_days() -> None:
    """One account stopped sending rows 140 days before the end, another had a 114-day hole.
    A day's run sees only its look-back (112 days): the first account is a peer at 0 while a
    row of it is on record in the look-back, then no longer one; the second is not benchmarked
    until 28 days after it came back. A range run, in one span or in several that carry what
    they learnt, counts them on the same days, so cohort sizes and medians agree."""
    days = pl.date_range(END - timedelta(days=299), END, "1d", eager=True)
    ids = [f"C{i:03d}" for i in range(24)]
    usage = steady_usage({c: 4.0 + i % 7 for i, c in enumerate(ids)}, days)
    stopped = (pl.col("customer_id") == "C000") & (pl.col("date") > END - timedelta(days=140))
    hole = (pl.col("customer_id") == "C001") & pl.col("date").is_between(
        END - timedelta(days=129), END - timedelta(days=16)
    )
    usage = usage.filter(~stopped & ~hole)
    accounts = retail_accounts(ids, ["mid_market"] * len(ids))
    # seats entitled: an account that sends no rows keeps its seats (a dau of 0 per seat)
    seats = pl.DataFrame(
        {
            "customer_id": ids,
            "metric": ["seats_used"] * len(ids),
            "entitled_value": [20.0] * len(ids),
        }
    )
    s = BenchmarkSettings(min_cohort=5)
    lookback = 112
    first = END - timedelta(days=59)

    def window(start: date, end: date) -> pl.LazyFrame:
        return usage.filter(pl.col("date").is_between(start - timedelta(days=lookback), end)).lazy()

    def spans_run(spans: list[tuple[date, date]]) -> pl.DataFrame:
        read = window(spans[0][0], spans[-1][1])
        last_before = benchmarked_series_last_before(read, spans[0][0], s)
        out = []
        for index, (start, end) in enumerate(spans):
            rows = benchmark_usage(read, start, end, s, last_before)
            out.append(peer_percentiles(rows, seats, accounts, start, end, s, lookback))
            if index + 1 < len(spans):
                last_before = carry_last_before(rows, benchmark_opened(spans[index + 1][0], s))
        return pl.concat(out)

    key = ["customer_id", "partition_date"]
    one_span = peer_percentiles(
        benchmark_usage(window(first, END), first, END, s), seats, accounts, first, END, s, lookback
    ).sort(key)
    several = spans_run(
        [
            (first + timedelta(days=d), first + timedelta(days=min(d + 9, 59)))
            for d in range(0, 60, 10)
        ]
    ).sort(key)
    daily = pl.concat(
        [
            peer_percentiles(
                benchmark_usage(window(day, day), day, day, s),
                seats,
                accounts,
                day,
                day,
                s,
                lookback,
            )
            for day in pl.date_range(first, END, "1d", eager=True)
        ]
    ).sort(key)
    assert one_span.equals(daily)
    assert several.equals(daily)

    def judged(customer: str) -> list[date]:
        return daily.filter(pl.col("customer_id") == customer)["partition_date"].to_list()

    # a peer at 0 while its last row (140 days back) is within the look-back of the day
    assert judged("C000") == [d for d in days if first <= d <= END - timedelta(days=28)]
    assert daily.filter(pl.col("customer_id") == "C000")["dau"].max() == 0
    assert judged("C001") == [d for d in days if first <= d <= END - timedelta(days=18)]
    assert len(judged("C002")) == 60


def test_fractional_usage_gives_a_range_its_days_peer_means_to_the_bit() -> None:
    """Usage in hours is no whole number: each account's 28-day mean is added in a fixed order,
    so a range and each of its days alone compute the same floats (a running rolling sum's
    rounding depends on where the grid starts), hence the same percentiles and medians."""
    rng = np.random.default_rng(5)
    days = pl.date_range(END - timedelta(days=200), END, "1d", eager=True)
    ids = [f"C{i:03d}" for i in range(30)]
    usage = steady_usage({c: 5.0 for c in ids}, days).with_columns(
        pl.when(pl.col("metric") == "dau")
        .then(pl.Series(rng.gamma(4.0, 1.7, size=len(ids) * days.len() * 2)) * 0.37 + 0.013)
        .otherwise(pl.col("value"))
        .alias("value")
    )
    accounts = retail_accounts(ids, ["mid_market"] * len(ids))
    seats = pl.DataFrame(
        schema={"customer_id": pl.String, "metric": pl.String, "entitled_value": pl.Float64}
    )
    s = BenchmarkSettings(min_cohort=5)
    first = END - timedelta(days=20)

    def window(start: date, end: date) -> pl.LazyFrame:
        return usage.filter(pl.col("date").is_between(start - timedelta(days=112), end)).lazy()

    def percentiles(start: date, end: date) -> pl.DataFrame:
        rows = benchmark_usage(window(start, end), start, end, s)
        return peer_percentiles(rows, seats, accounts, start, end, s, 112)

    key = ["customer_id", "partition_date"]
    ranged = percentiles(first, END).sort(key)
    daily = pl.concat(
        [percentiles(day, day) for day in pl.date_range(first, END, "1d", eager=True)]
    ).sort(key)
    assert ranged.height == 21 * 30
    assert ranged.equals(daily)


def test_a_place_among_few_peers_is_a_rank_among_many_a_share() -> None:
    """Among 38 peers the lowest reads "the lowest of 38", not "bottom 1%" (1% of 38 is no
    one); among 150 the lowest (tied with two others: each the lowest, not "2nd") reads
    "bottom 1%", never "bottom 0%". The
    seats are the entitled ones where the entitlements give them, and only then do the
    evidence and the text name the entitlements."""
    days = pl.date_range(END - timedelta(days=40), END, "1d", eager=True)
    s = BenchmarkSettings()
    narrator = TemplateNarrator()
    for size in (36, 148):
        levels = {f"C{i:03d}": 10.0 * (0.94 + 0.12 * i / size) for i in range(size)}
        tied = {"LOW": 3.0, "LOW_TOO": 3.0, "LOW_THREE": 3.0, "HIGH": 30.0}
        levels |= tied if size > 100 else {"LOW": 3.0}
        levels |= {"SECOND": 4.0}
        usage = steady_usage(levels, days)
        accounts = retail_accounts(list(levels), ["smb"] * len(levels))
        entitled = pl.DataFrame(
            {"customer_id": ["LOW"], "metric": ["seats_used"], "entitled_value": [20.0]}
        )
        signals = detect_benchmarks(
            peer_percentiles(usage, entitled, accounts, END, END, s), s
        ).sort("customer_id")
        rows = {r["customer_id"]: r for r in signals.iter_rows(named=True)}
        facts = {c: json.loads(r["facts"]) for c, r in rows.items()}
        sources = {c: r["evidence"][0]["source"] for c, r in rows.items()}
        assert facts["LOW"]["rank"] == 1 and facts["LOW"]["entitled_seats"] is True
        assert sources["LOW"] == "usage_daily, entitlements"
        assert facts["SECOND"]["entitled_seats"] is False and sources["SECOND"] == "usage_daily"
        texts = {
            c: narrator.narrate(
                [{"type": r["type"], "customer_name": c, "f": facts[c], "base_rate": None}]
            )[0]
            for c, r in rows.items()
        }
        if size < 100:
            assert facts["SECOND"]["rank"] == 2
            assert (
                texts["LOW"]["title"]
                == "LOW has the lowest daily active users per seat of 38 peer accounts"
            )
            assert texts["SECOND"]["title"].startswith("SECOND has the 2nd lowest daily")
            assert "per entitled seat" in texts["LOW"]["summary"]
            assert "per seat in use" in texts["SECOND"]["summary"]
        else:
            # three tied for the lowest: each the lowest; the next after them is fourth
            assert facts["LOW_TOO"]["rank"] == facts["LOW_THREE"]["rank"] == 1
            assert facts["SECOND"]["rank"] == 4
            assert facts["HIGH"]["rank"] == 1 and set(facts) >= {"HIGH", "LOW", "LOW_TOO"}
            assert (
                texts["LOW"]["title"]
                == "LOW is in the bottom 1% of its peers on daily active users"
            )
            assert texts["SECOND"]["title"].endswith("bottom 3% of its peers on daily active users")
            assert (
                texts["HIGH"]["title"] == "HIGH is in the top 1% of its peers on daily active users"
            )
            assert "(percentile 1)" in texts["LOW"]["summary"]

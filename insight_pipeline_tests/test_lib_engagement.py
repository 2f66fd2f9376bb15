"""going_dark on contact that arrives at random (a Poisson process, as many accounts' emails and
meetings do): an account that stopped is found, and the chance silences of the others are not
taken for going dark."""

from __future__ import annotations

import re
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from insight_pipeline.lib.detectors.engagement import (
    contact_population,
    detect_going_dark,
    detect_increased_activity,
)
from insight_pipeline.lib.settings import EngagementSettings
from insight_pipeline_tests.synthetic import accounts_by_group, customers

END = date(2026, 6, 30)
DAYS = 400
S = EngagementSettings()


def poisson_contact(
    rates_per_month: np.ndarray,
    stop_day: np.ndarray,
    seed: int,
    season: np.ndarray | None = None,
) -> pl.DataFrame:
    """(customer_id, date, kind) of two-way contact days: account i in touch at its own monthly
    rate (times `season`'s factor of the day, the same for everyone) until its `stop_day`
    (index into the DAYS days ending on END)."""
    rng = np.random.default_rng(seed)
    factor = np.ones(DAYS) if season is None else season
    rates = rates_per_month[:, None] / 30.44 * factor[None, :]
    counts = rng.poisson(rates, size=(rates_per_month.size, DAYS))
    counts[np.arange(DAYS)[None, :] >= stop_day[:, None]] = 0
    account, day = np.nonzero(counts)
    first = END - timedelta(days=DAYS - 1)
    return pl.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in account],
            "date": [first + timedelta(days=int(d)) for d in day],
            "kind": "inbound",
        }
    )


def test_chance_silences_of_random_contact_are_not_going_dark() -> None:
    """300 accounts in touch 2-8 times a month at random, 20 of which stop 70 days before the
    end: over the last quarter the stopped ones are found (an account in touch twice a month
    goes silent for 5 weeks by chance; it takes longer to tell), and fewer than 1 in 14 of the
    others is ever called dark (the 95th percentile of a dozen gaps alone called 44 of 280)."""
    n, dark = 300, 20
    rng = np.random.default_rng(3)
    rates = rng.uniform(2, 8, n)
    stop = np.where(np.arange(n) < dark, DAYS - 70, DAYS)
    events = poisson_contact(rates, stop, seed=4)
    accounts = customers([f"C{i:04d}" for i in range(n)])
    start = END - timedelta(days=89)
    found = detect_going_dark(events, accounts, start, END, S)
    first_alarm = found.group_by("customer_id").agg(pl.col("partition_date").min())
    stopped = pl.col("customer_id").is_in([f"C{i:04d}" for i in range(dark)])
    last_contact = events.filter(stopped).group_by("customer_id").agg(pl.col("date").max())
    delays = first_alarm.join(last_contact, on="customer_id").select(
        (pl.col("partition_date") - pl.col("date")).dt.total_days()
    )["partition_date"]
    assert delays.len() >= dark - 1
    assert 21 < delays.min() and delays.median() <= 40
    false_alarms = first_alarm.filter(~stopped).height
    assert false_alarms < (n - dark) / 14, f"{false_alarms} of {n - dark} in touch called dark"


def first_alarms(found: pl.DataFrame) -> pl.DataFrame:
    return found.group_by("customer_id").agg(pl.col("partition_date").min())


def test_a_quiet_season_for_everyone_is_not_going_dark_and_the_stopped_are_still_found() -> None:
    """Everyone's contact falls to 15% for four weeks (a holiday season), and 20 of 300 accounts
    stop 12 days after it: measured on everyone's contact (`contact_population`), the season
    calls fewer than 1 in 14 of the others dark, while without it more than 1 in 5; every
    stopped account is still found, at most a week later (a silence that began in the season
    counts its season days for less)."""
    n, dark = 300, 20
    rng = np.random.default_rng(5)
    rates = rng.uniform(2, 8, n)
    season = np.ones(DAYS)
    season[DAYS - 100 : DAYS - 72] = 0.15
    stop = np.where(np.arange(n) < dark, DAYS - 60, DAYS)
    events = poisson_contact(rates, stop, seed=6, season=season)
    accounts = customers([f"C{i:04d}" for i in range(n)])
    start = END - timedelta(days=99)
    population = contact_population(events, accounts, END - timedelta(days=365), END, S)
    pace = population.select(
        pl.col("date"), (pl.col("contacts") / pl.col("expected")).alias("pace")
    ).filter(pl.col("date") >= start)
    in_season = pl.col("date").is_between(END - timedelta(days=99), END - timedelta(days=72))
    assert pace.filter(in_season)["pace"].mean() < 0.3
    assert 0.85 < pace.filter(pl.col("date") > END - timedelta(days=60))["pace"].mean() < 1.15

    stopped = pl.col("customer_id").is_in([f"C{i:04d}" for i in range(dark)])
    last_contact = events.filter(stopped).group_by("customer_id").agg(pl.col("date").max())

    def judged(population: pl.DataFrame | None) -> tuple[int, dict[str, int]]:
        """(clean accounts called dark, stopped account -> days from its last contact to the
        first alarm after it)."""
        found = detect_going_dark(events, accounts, start, END, S, population)
        after = (
            found.filter(stopped)
            .join(last_contact, on="customer_id")
            .filter(pl.col("partition_date") > pl.col("date"))
            .group_by("customer_id")
            .agg((pl.col("partition_date") - pl.col("date")).dt.total_days().min())
        )
        return first_alarms(found).filter(~stopped).height, dict(after.iter_rows())

    found = detect_going_dark(events, accounts, start, END, S, population)
    facts = found["facts"].str.json_decode().struct.unnest()
    assert (facts["mean_gap"] > 0).all()
    assert all(
        f"a contact every {gap} days" in evidence[2]["comparison"]
        for gap, evidence in zip(facts["mean_gap"], found["evidence"], strict=True)
    )
    # a discounted silence says what it counted as, above the longest silence explained
    counted = [
        (float(re.search(r"counted as ([\d.]+) days", e[0]["comparison"])[1]), e[2]["value"])
        for e in found["evidence"]
        if "counted as" in e[0]["comparison"]
    ]
    assert counted and all(days > longest for days, longest in counted)
    false_adjusted, delays = judged(population)
    false_raw, raw_delays = judged(None)
    assert false_raw > (n - dark) / 5
    assert false_adjusted < (n - dark) / 14
    assert set(delays) == set(raw_delays) and len(delays) >= dark - 1
    assert np.median(list(delays.values())) <= np.median(list(raw_delays.values())) + 7


def threads(rates_per_month: np.ndarray, seed: int) -> pl.DataFrame:
    """(customer_id, date, kind) of inbound messages in threads: thread starts at random at the
    account's monthly rate, each thread 2-5 consecutive days of 1-3 messages."""
    rng = np.random.default_rng(seed)
    starts = rng.poisson(rates_per_month[:, None] / 30.44, size=(rates_per_month.size, DAYS))
    account, day = np.nonzero(starts)
    length = rng.integers(2, 6, account.size)
    account, day = np.repeat(account, length), np.repeat(day, length)
    day = day + np.concatenate([np.arange(n) for n in length])
    messages = rng.integers(1, 4, account.size)
    account, day = np.repeat(account, messages), np.repeat(day, messages)
    first = END - timedelta(days=DAYS - 1)
    inside = day < DAYS
    return pl.DataFrame(
        {
            "customer_id": [f"B{i:04d}" for i in account[inside]],
            "date": [first + timedelta(days=int(d)) for d in day[inside]],
            "kind": "inbound",
        }
    )


def test_contact_in_threads_is_no_increased_activity_and_a_real_rise_is() -> None:
    """200 accounts whose inbound messages come in threads (a few days of messages, then
    weeks of nothing) and 200 in touch at random, 10 of which quintuple their pace for the last
    two weeks. Judged against its own bursty past, a cluster of threads is seldom a rise: fewer
    than 1 in 8 threaded accounts raised in a quarter, where the Poisson test alone raises more
    than 1 in 3 (111 of 200 here, 23 with the dispersion); the planted ones are all found, as by
    the Poisson test alone, and the random ones stay as quiet."""
    rng = np.random.default_rng(8)
    bursty = threads(rng.uniform(1, 3, 200), seed=9)
    rates = rng.uniform(4, 10, 200)
    steady = poisson_contact(rates, np.full(200, DAYS), seed=10)
    season = np.ones(DAYS)
    season[DAYS - 14 :] = 5.0
    risen = poisson_contact(rates[:10], np.full(10, DAYS), seed=11, season=season)
    planted = pl.col("customer_id").is_in([f"C{i:04d}" for i in range(10)])
    events = pl.concat([bursty, steady.filter(~planted), risen])
    ids = [f"B{i:04d}" for i in range(200)] + [f"C{i:04d}" for i in range(200)]
    accounts = customers(ids)
    start = END - timedelta(days=89)

    def raised(settings: EngagementSettings) -> dict[str, int]:
        found = detect_increased_activity(events, accounts, start, END, settings)
        return accounts_by_group(found, planted)

    judged = raised(S)
    assert judged.get("planted", 0) >= 9
    assert judged.get("B", 0) < 200 / 8 and judged.get("C", 0) <= 2
    # the same test without the dispersion (every account taken for a Poisson one) is fooled
    from unittest import mock

    with mock.patch(
        "insight_pipeline.lib.detectors.engagement.excess_dispersion",
        lambda counts, cells, *_: np.ones(cells.size),
    ):
        poisson_only = raised(S)
    assert poisson_only.get("B", 0) > 200 / 3
    assert poisson_only.get("planted", 0) == judged["planted"]
    assert poisson_only.get("C", 0) == judged.get("C", 0)


def test_contact_in_threads_is_judged_by_its_waits_between_conversations() -> None:
    """200 accounts in touch in threads (1-3 a month, each a few consecutive days), 20 of which
    stop 70 days before the end. Judged by the day-to-day gaps (thread_gap_days=0: the Poisson
    term on the mean gap), a thread's usual wait looks like a long silence and more than 1 in 3
    of the others is called dark in a quarter; judged by the waits between conversations fewer
    than 1 in 6 are, and three quarters of the stopped ones are still found (later: a silence of
    a month is common for them)."""
    from dataclasses import replace

    rng = np.random.default_rng(21)
    n, dark = 200, 20
    stopped_ids = [f"B{i:04d}" for i in range(dark)]
    stopped = pl.col("customer_id").is_in(stopped_ids)
    events = threads(rng.uniform(1, 3, n), seed=22).filter(
        ~(stopped & (pl.col("date") > END - timedelta(days=70)))
    )
    accounts = customers([f"B{i:04d}" for i in range(n)])
    start = END - timedelta(days=89)

    def judged(settings: EngagementSettings) -> tuple[int, int]:
        """(others called dark, stopped ones found after their last contact)"""
        found = detect_going_dark(events, accounts, start, END, settings)
        last = events.filter(stopped).group_by("customer_id").agg(pl.col("date").max())
        after = found.filter(stopped).join(last, on="customer_id")
        after = after.filter(pl.col("partition_date") > pl.col("date"))
        return first_alarms(found).filter(~stopped).height, after["customer_id"].n_unique()

    false_alarms, found = judged(S)
    day_gaps_false_alarms, _ = judged(replace(S, thread_gap_days=0))
    assert false_alarms < (n - dark) / 6 < (n - dark) / 3 < day_gaps_false_alarms
    assert found >= 0.75 * dark


def test_a_going_dark_significance_outside_0_1_is_refused_by_name() -> None:
    from insight_pipeline.lib.settings import Settings

    for alpha in (0, 1.5):
        with pytest.raises(ValueError, match=r"engagement\.dark_alpha="):
            Settings.from_dict({"engagement": {"dark_alpha": alpha}})


def test_a_silence_counted_just_over_the_longest_explained_says_so_in_its_evidence() -> None:
    """An account in touch every 3 days (longest silence explained: the 21-day minimum) stops,
    while everyone's contact runs at 78% of its usual: on the first day raised its silence
    counts as 21.3 days, and the evidence says "21.3", not a "21" beside the 21 explained."""
    last = END - timedelta(days=26)
    days = [last - timedelta(days=3 * i) for i in range(120)]
    events = pl.DataFrame({"customer_id": "C0000", "date": days, "kind": "inbound"})
    calendar = pl.date_range(END - timedelta(days=400), END, eager=True)
    population = pl.DataFrame(
        {
            "date": calendar,
            "contacts": [78.0 if d > last else 100.0 for d in calendar],
            "expected": 100.0,
        }
    )
    found = detect_going_dark(events, customers(["C0000"]), END, END, S, population)
    [evidence] = found["evidence"].to_list()
    assert evidence[2]["value"] == 21
    assert "so counted as 21.3 days of silence" in evidence[0]["comparison"]


def test_a_quiet_season_of_one_industry_is_not_going_dark_of_its_accounts() -> None:
    """A third of the book ("education") falls to 15% of its contact for four weeks while the
    rest does not; 20 accounts (half of them schools) stop 12 days after it. The whole book's
    contact moved too little to explain a school's silence (more than 1 school in 8 called
    dark); measured per industry too (`contact_population`'s cohorts), fewer than 1 in 14,
    said as the schools' quiet in the evidence; every stopped account is still found, and
    the rest of the book, judged against its own industry's contact, stays as quiet."""
    n, dark = 300, 20
    rng = np.random.default_rng(7)
    rates = rng.uniform(2, 8, n)
    stop = np.where((np.arange(n) % 15) == 0, DAYS - 60, DAYS)  # 10 schools, 10 others
    schools = np.arange(n) < n // 3
    season = np.ones(DAYS)
    season[DAYS - 100 : DAYS - 72] = 0.15
    # the schools' contact (the others' rates at 0), then the others' (the schools' at 0)
    events = pl.concat(
        [
            poisson_contact(rates * schools, stop, seed=8, season=season),
            poisson_contact(rates * ~schools, stop, seed=9),
        ]
    )
    accounts = customers([f"C{i:04d}" for i in range(n)]).with_columns(
        pl.Series("industry", np.where(schools, "education", "software"))
    )
    start = END - timedelta(days=99)
    window = END - timedelta(days=365)
    stopped = pl.col("customer_id").is_in([f"C{i:04d}" for i in range(n) if stop[i] < DAYS])
    school = pl.col("customer_id").is_in([f"C{i:04d}" for i in range(n // 3)])

    def judged(cohorts: tuple[str, ...]) -> tuple[pl.DataFrame, pl.DataFrame]:
        population = contact_population(events, accounts, window, END, S, cohorts)
        found = detect_going_dark(events, accounts, start, END, S, population)
        return found, first_alarms(found)

    _, book_only = judged(())
    found, by_cohort = judged(("industry",))
    n_schools = n // 3 - 10
    assert book_only.filter(school & ~stopped).height > n_schools / 8
    assert by_cohort.filter(school & ~stopped).height < n_schools / 14
    assert by_cohort.filter(stopped).height >= dark - 1
    assert by_cohort.filter(~school & ~stopped).height < (n - n // 3 - 10) / 14
    assert any("contact across education accounts" in e[0]["comparison"] for e in found["evidence"])


def test_a_small_cohort_in_everyones_quiet_season_counts_the_books_quiet() -> None:
    """Everyone's contact at 15% for four weeks, and two industries of 12 accounts each: a
    cohort that small has a wide bound on its quiet, which explains less of a silence than
    the whole book's, so where the account's cohort was quiet too the book's quiet counts
    (review: with its cohort's alone, its 24 accounts were called dark 17 times over six
    books, against 5 judged against the book)."""
    alarms = {(): 0, ("industry",): 0}
    for seed in range(3):
        n = 300
        rates = np.random.default_rng(seed).uniform(2, 8, n)
        season = np.ones(DAYS)
        season[DAYS - 100 : DAYS - 72] = 0.15
        events = poisson_contact(rates, np.full(n, DAYS), seed=seed + 50, season=season)
        industry = np.where(np.arange(n) < 12, "legal", np.where(np.arange(n) < 24, "media", "x"))
        accounts = customers([f"C{i:04d}" for i in range(n)]).with_columns(
            pl.Series("industry", industry)
        )
        small = pl.col("customer_id").is_in([f"C{i:04d}" for i in range(24)])
        for cohorts in alarms:
            window = END - timedelta(days=365)
            population = contact_population(events, accounts, window, END, S, cohorts)
            start = END - timedelta(days=99)
            found = detect_going_dark(events, accounts, start, END, S, population)
            alarms[cohorts] += first_alarms(found).filter(small).height
    assert alarms[("industry",)] <= alarms[()] + 1, alarms

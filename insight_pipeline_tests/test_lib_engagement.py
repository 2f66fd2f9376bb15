"""going_dark on contact that arrives at random (a Poisson process, as many accounts' emails and
meetings do): an account that stopped is found, and the chance silences of the others are not
taken for going dark."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from insight_pipeline.lib.detectors.engagement import detect_going_dark
from insight_pipeline.lib.settings import EngagementSettings
from insight_pipeline_tests.synthetic import customers

END = date(2026, 6, 30)
DAYS = 400
S = EngagementSettings()


def poisson_contact(rates_per_month: np.ndarray, stop_day: np.ndarray, seed: int) -> pl.DataFrame:
    """(customer_id, date, kind) of two-way contact days: account i in touch at its own monthly
    rate until its `stop_day` (index into the DAYS days ending on END)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rates_per_month[:, None] / 30.44, size=(rates_per_month.size, DAYS))
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


def test_a_going_dark_significance_outside_0_1_is_refused_by_name() -> None:
    from insight_pipeline.lib.settings import Settings

    for alpha in (0, 1.5):
        with pytest.raises(ValueError, match=r"engagement\.dark_alpha="):
            Settings.from_dict({"engagement": {"dark_alpha": alpha}})

"""The "so what" base rates compare whole months: a customer's first month of usage that began
after the 1st (a source exported from the 24th, an account onboarded mid-month) is no month to
'rise' from, and the history read starts on a month's first day."""

import json
from datetime import date, timedelta

import polars as pl

from insight_pipeline.defs.insights.assets import with_base_rates
from insight_pipeline.defs.insights.outcomes import history_window
from insight_pipeline.lib.insights.outcomes import (
    FAMILIES,
    base_rate_json,
    comparable_events,
    outcome_rates,
)
from insight_pipeline.lib.settings import OutcomeSettings


def test_a_partial_first_month_is_no_month_to_rise_from() -> None:
    """PARTIAL was onboarded on 20 January: a week of use is no month to rise from. SPARSE, a
    customer for years, has no row on the 1st (a sparse export) but its January is whole; it
    and WHOLE really grew 40%. When the source itself begins on the 24th, no January is whole."""
    jan, feb, mar = date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)
    monthly = pl.DataFrame(
        {
            "customer_id": ["PARTIAL"] * 3 + ["WHOLE"] * 2 + ["SPARSE"] * 2,
            "month": [jan, feb, mar, jan, feb, jan, feb],
            "value": [100.0, 400.0, 410.0, 300.0, 420.0, 300.0, 420.0],
            "first_day": [date(2026, 1, 24), feb, mar, jan, feb, date(2026, 1, 3), feb],
        }
    )
    starts = pl.DataFrame(
        {
            "customer_id": ["PARTIAL", "WHOLE", "SPARSE"],
            "contract_start": [date(2026, 1, 20), date(2024, 5, 1), date(2023, 2, 1)],
        }
    )
    empty = pl.DataFrame()

    def rises(usage: pl.DataFrame, contract_starts: pl.DataFrame | None) -> list[str]:
        events = comparable_events(
            usage, empty, empty, empty, empty, empty, empty, date(2025, 12, 1), date(2026, 3, 31),
            contract_starts,
        )  # fmt: skip
        return sorted(events.filter(pl.col("family") == "usage_rise")["customer_id"])

    assert rises(monthly, starts) == ["SPARSE", "WHOLE"]
    assert rises(monthly, None) == ["WHOLE"]  # without contract starts: first rows only
    late_source = monthly.with_columns(
        pl.when(pl.col("month") == jan)
        .then(pl.max_horizontal(pl.col("first_day"), pl.lit(date(2026, 1, 24))))
        .otherwise(pl.col("first_day"))
        .alias("first_day")
    )
    assert rises(late_source, starts) == []


def test_the_history_read_begins_with_a_whole_month() -> None:
    """31 days before a month start reaches into the month before a short month: the window
    begins on the 1st of the whole month before the history, whatever the months' lengths."""
    s = OutcomeSettings()
    for month in range(1, 13):
        first, last = history_window(date(2026, month, 1), s)
        assert first.day == 1
        assert last == date(2026, month, 1) - timedelta(days=1)


def test_months_before_the_usage_on_record_are_not_counted_as_accounts_that_stayed() -> None:
    """A source whose usage begins on 10 February 2026, as of 1 November: the baseline churn
    rate and the label count the months from March on (8), not 18 months of which 10 precede
    any data (and whose churned customers an export seldom lists), which diluted the rate."""
    s = OutcomeSettings()
    as_of = date(2026, 11, 1)
    n = 100
    churned = [date(2026, 4, 15), date(2026, 5, 20), date(2026, 6, 2), date(2026, 7, 9)]
    customers = pl.DataFrame(
        {
            "customer_id": [f"C{i:03d}" for i in range(n)],
            "contract_start": [date(2023, 1, 1)] * n,
            "churned_on": churned + [None] * (n - len(churned)),
        },
        schema_overrides={"churned_on": pl.Date},
    )
    events = pl.DataFrame(
        schema={"customer_id": pl.String, "event_date": pl.Date, "family": pl.String}
    )
    whole = outcome_rates(events, customers, as_of, s).row(0, named=True)
    on_record = outcome_rates(events, customers, as_of, s, date(2026, 2, 10)).row(0, named=True)
    assert whole["months"] == s.history_months and on_record["months"] == 8
    # months whose 90 days ahead are known: May 2025.. (16) against March.. (6) of 2026
    assert on_record["baseline_pct"] > 2 * whole["baseline_pct"] > 0
    # a source older than the window changes nothing
    older = outcome_rates(events, customers, as_of, s, date(2024, 1, 1)).row(0, named=True)
    assert older == whole


def _twenty_customers_three_churned() -> pl.DataFrame:
    """20 customers since 2023, the first 3 churned on 2026-06-01."""
    return pl.DataFrame(
        {
            "customer_id": [f"C{i:03d}" for i in range(20)],
            "contract_start": [date(2023, 1, 1)] * 20,
            "churned_on": [date(2026, 6, 1)] * 3 + [None] * 17,
        },
        schema_overrides={"churned_on": pl.Date},
    )


def test_a_pattern_change_to_a_lower_level_is_compared_with_usage_that_fell() -> None:
    """usage_pattern_change covers new levels both ways: one whose level fell gets the base rate
    of falling usage, one whose level rose that of rising usage (it quoted the rise's for both);
    other types keep their own."""
    s = OutcomeSettings()
    as_of = date(2026, 11, 1)
    customers = _twenty_customers_three_churned()
    events = pl.DataFrame(
        {
            "customer_id": [f"C{i:03d}" for i in range(12)],
            "event_date": [date(2026, 5, 1)] * 12,
            "family": ["usage_fall"] * 6 + ["usage_rise"] * 6,
        }
    )
    rates = base_rate_json(outcome_rates(events, customers, as_of, s))
    new = pl.DataFrame(
        {
            "type": ["usage_pattern_change", "usage_pattern_change", "usage_drop"],
            "partition_date": [date(2026, 11, 5)] * 3,
            "facts": ['{"change_pct": -40.0}', '{"change_pct": 35.0}', '{"metric": "dau"}'],
        }
    )
    labels = [json.loads(r)["label"] for r in with_base_rates(new, rates)["base_rate"].to_list()]
    fall = FAMILIES["usage_fall"].label
    assert labels == [fall, FAMILIES["usage_rise"].label, fall]


def test_an_insight_with_no_comparable_event_quotes_none() -> None:
    """An outreach window a promoter opened gets the promoters' base rate; one opened by the
    renewal's nearness, and a peer benchmark (no move of the account's own usage), get none
    (trials 9 and 10: "Of 27 accounts with a promoter NPS response" under a pre-renewal
    outreach, a usage drop's rate under "bottom of its peers")."""
    s = OutcomeSettings()
    as_of = date(2026, 11, 1)
    customers = _twenty_customers_three_churned()
    events = pl.DataFrame(
        {
            "customer_id": [f"C{i:03d}" for i in range(18)],
            "event_date": [date(2026, 5, 1)] * 18,
            "family": ["usage_fall"] * 6 + ["usage_rise"] * 6 + ["promoter"] * 6,
        }
    )
    rates = base_rate_json(outcome_rates(events, customers, as_of, s))
    new = pl.DataFrame(
        {
            "type": ["outreach_window", "outreach_window", "underperforming", "outperforming"],
            "partition_date": [date(2026, 11, 5)] * 4,
            "facts": [
                '{"reason": "promoter", "nps": 9}',
                '{"reason": "pre_renewal", "nps": null}',
                '{"metric": "dau", "percentile": 3.0}',
                '{"metric": "dau", "percentile": 97.0}',
            ],
        }
    )
    quoted = with_base_rates(new, rates)["base_rate"].to_list()
    assert json.loads(quoted[0])["label"] == FAMILIES["promoter"].label
    assert quoted[1:] == [None, None, None]

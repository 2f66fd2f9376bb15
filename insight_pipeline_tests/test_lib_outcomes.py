"""The "so what" base rates compare whole months: a customer's first month of usage that began
after the 1st (a source exported from the 24th, an account onboarded mid-month) is no month to
'rise' from, and the history read starts on a month's first day."""

from datetime import date, timedelta

import polars as pl

from insight_pipeline.defs.insights.outcomes import history_window
from insight_pipeline.lib.insights.outcomes import comparable_events
from insight_pipeline.lib.settings import OutcomeSettings


def test_a_partial_first_month_is_no_month_to_rise_from() -> None:
    jan, feb, mar = date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)
    monthly = pl.DataFrame(
        {
            "customer_id": ["PARTIAL"] * 3 + ["WHOLE"] * 2,
            "month": [jan, feb, mar, jan, feb],
            # a week of January, then whole months; WHOLE really grew 40%
            "value": [100.0, 400.0, 410.0, 300.0, 420.0],
            "first_day": [date(2026, 1, 24), feb, mar, jan, feb],
        }
    )
    empty = pl.DataFrame()
    events = comparable_events(
        monthly, empty, empty, empty, empty, empty, empty, date(2025, 12, 1), date(2026, 3, 31)
    )
    rises = events.filter(pl.col("family") == "usage_rise")
    assert rises["customer_id"].to_list() == ["WHOLE"]


def test_the_history_read_begins_with_a_whole_month() -> None:
    """31 days before a month start reaches into the month before a short month: the window
    begins on the 1st of the whole month before the history, whatever the months' lengths."""
    s = OutcomeSettings()
    for month in range(1, 13):
        first, last = history_window(date(2026, month, 1), s)
        assert first.day == 1
        assert last == date(2026, month, 1) - timedelta(days=1)

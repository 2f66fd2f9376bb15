"""qbr_due says "no QBR in the last 90 days" only where the meetings on record reach back 90
days: a source that began exporting six weeks ago cannot tell."""

from datetime import UTC, date, datetime, timedelta

import polars as pl

from insight_pipeline.defs.sources.activity import empty_table
from insight_pipeline.lib.detectors.timing import detect_outreach_window, detect_qbr_due
from insight_pipeline.lib.settings import TimingSettings
from insight_pipeline_tests.synthetic import customers

END = date(2026, 6, 30)


def test_no_qbr_on_record_is_due_only_when_the_record_covers_the_lookback() -> None:
    accounts = customers(["RENEWING"]).with_columns(
        pl.lit(END + timedelta(days=60)).alias("renewal_date")
    )
    check_in = datetime(2026, 6, 1, 10, tzinfo=UTC)
    meetings = pl.DataFrame(
        [("m1", "RENEWING", check_in, "check_in", 0.1)],
        schema=empty_table("meetings").schema,
        orient="row",
    )
    s = TimingSettings()
    short = detect_qbr_due(meetings, accounts, END, END, s, END - timedelta(days=45))
    assert short.height == 0
    long = detect_qbr_due(meetings, accounts, END, END, s, END - timedelta(days=200))
    assert long["customer_id"].to_list() == ["RENEWING"]
    # the first day the record covers the look-back is judged
    edge = detect_qbr_due(
        meetings, accounts, END, END, s, END - timedelta(days=s.qbr_lookback_days)
    )
    assert edge.height == 1


def test_qbr_due_over_a_range_starts_where_the_record_covers_the_lookback() -> None:
    """A range's days are judged from the first whose look-back the meetings cover, for the
    accounts renewing within qbr_renewal_days of a run day: renewals on the range's first
    judged day and qbr_renewal_days after its last are due, one day outside them is not."""
    s = TimingSettings()
    first, since = END - timedelta(days=59), END - timedelta(days=119)
    covered = since + timedelta(days=s.qbr_lookback_days)  # 30 days into the range
    renewals = {
        "BEFORE": covered - timedelta(days=1),
        "ON_FIRST": covered,
        "LAST": END + timedelta(days=s.qbr_renewal_days),
        "AFTER": END + timedelta(days=s.qbr_renewal_days + 1),
    }
    accounts = pl.concat(
        [customers([c]).with_columns(pl.lit(d).alias("renewal_date")) for c, d in renewals.items()]
    )
    meetings = empty_table("meetings")
    due = detect_qbr_due(meetings, accounts, first, END, s, since)
    got = (
        due.group_by("customer_id")
        .agg(pl.col("partition_date").min(), pl.len())
        .sort("customer_id")
    )
    assert got.rows() == [("LAST", END, 1), ("ON_FIRST", covered, 1)]


def test_an_outreach_window_names_the_tables_it_read() -> None:
    """Before a renewal, the window reads the renewal date alone (trial 9: evidence named the
    NPS responses of an account that had none); a promoter's window, its response too."""
    accounts = customers(["RENEWING", "PROMOTER"]).with_columns(
        pl.Series("renewal_date", [END + timedelta(days=130), date(2027, 6, 1)])
    )
    nps = pl.DataFrame(
        {"customer_id": ["PROMOTER"], "responded_on": [END], "score": [10]},
        schema_overrides={"score": pl.Int64},
    )
    found = detect_outreach_window(nps, accounts, END, END, TimingSettings())
    sources = {
        row["customer_id"]: row["evidence"][0]["source"] for row in found.iter_rows(named=True)
    }
    assert sources == {"RENEWING": "customers", "PROMOTER": "nps_responses, customers"}

"""Timing detectors: qbr_due and outreach_window."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from insight_pipeline.lib.detectors.common import customer_days
from insight_pipeline.lib.detectors.usage import evidence_list
from insight_pipeline.lib.settings import TimingSettings
from insight_pipeline.lib.signals import conform, empty_signals, evidence_item


def detect_qbr_due(
    meetings: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: TimingSettings,
    meetings_since: date | None = None,
) -> pl.DataFrame:
    """Renewal within qbr_renewal_days and no QBR held in the last qbr_lookback_days. Needs the
    meetings table (without it nobody can tell whether a QBR happened), and that table reaching
    back that far: `meetings_since`, the first meeting day of the source, later than
    qbr_lookback_days before a day means a QBR before it may simply not be on record."""
    # Only the days whose look-back is on record, and the accounts renewing within
    # qbr_renewal_days of one of them: the same rows, in the same order, as filtering the
    # customer x day frame of the whole run (a year of 10k accounts: 3.5M rows).
    if meetings_since is not None:
        start = max(start, meetings_since + timedelta(days=s.qbr_lookback_days))
    renewing = pl.col("renewal_date").is_between(start, end + timedelta(days=s.qbr_renewal_days))
    days = customer_days(accounts.filter(renewing), start, end).with_columns(
        (pl.col("renewal_date") - pl.col("partition_date")).dt.total_days().alias("days_to_renewal")
    )
    due = days.filter(pl.col("days_to_renewal").is_between(0, s.qbr_renewal_days))
    if due.height == 0:
        return empty_signals()
    qbrs = (
        meetings.filter(pl.col("meeting_type") == "qbr")
        .select("customer_id", pl.col("start_at").dt.date().alias("qbr_on"))
        .unique()
        .sort("qbr_on")
    )
    due = due.sort("partition_date").join_asof(
        qbrs, left_on="partition_date", right_on="qbr_on", by="customer_id", strategy="backward"
    )
    since = (pl.col("partition_date") - pl.col("qbr_on")).dt.total_days()
    hits = due.filter(pl.col("qbr_on").is_null() | (since > s.qbr_lookback_days))
    if hits.height == 0:
        return empty_signals()
    return conform(
        hits.with_columns(
            pl.lit("qbr_due").alias("type"),
            pl.col("renewal_date").cast(pl.String).alias("subject"),
            (0.4 + 0.5 * (1.0 - pl.col("days_to_renewal") / s.qbr_renewal_days))
            .clip(0.3, 0.9)
            .alias("severity"),
            pl.lit(0.9).alias("confidence"),
            evidence_list(
                evidence_item(
                    pl.lit("days to renewal"),
                    pl.col("days_to_renewal"),
                    pl.format("renews on {}", pl.col("renewal_date")),
                    "customers",
                ),
                evidence_item(
                    pl.lit("days since last QBR"),
                    since,
                    pl.format(
                        "last QBR: {}", pl.col("qbr_on").cast(pl.String).fill_null("none on record")
                    ),
                    "meetings",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("days_to_renewal"),
                pl.col("renewal_date").cast(pl.String),
                pl.col("qbr_on").cast(pl.String).alias("last_qbr"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def detect_outreach_window(
    nps: pl.DataFrame, accounts: pl.DataFrame, start: date, end: date, s: TimingSettings
) -> pl.DataFrame:
    """A favourable moment: right after a promoter response (subject 'promoter'), or just before
    the renewal window opens (subject 'pre_renewal')."""
    days = customer_days(accounts, start, end).with_columns(
        (pl.col("renewal_date") - pl.col("partition_date")).dt.total_days().alias("days_to_renewal")
    )
    parts = []
    pre = days.filter(
        pl.col("days_to_renewal").is_between(s.pre_renewal_from_days + 1, s.pre_renewal_to_days)
    ).with_columns(
        pl.lit("pre_renewal").alias("subject"),
        pl.lit(None, pl.Float64).alias("nps"),
        pl.lit(None, pl.Date).alias("responded_on"),
    )
    parts.append(pre)
    if nps.height:
        promoters = (
            nps.filter(pl.col("score") >= 9)
            .with_columns(
                pl.date_ranges(
                    "responded_on",
                    pl.col("responded_on") + pl.duration(days=s.promoter_window_days - 1),
                ).alias("partition_date")
            )
            .explode("partition_date")
            .group_by("customer_id", "partition_date")
            .agg(pl.col("score").max().alias("nps"), pl.col("responded_on").max())
        )
        parts.append(
            days.join(promoters, on=["customer_id", "partition_date"], how="inner").with_columns(
                pl.lit("promoter").alias("subject")
            )
        )
    hits = pl.concat(parts, how="diagonal_relaxed")
    if hits.height == 0:
        return empty_signals()
    promoter = pl.col("subject") == "promoter"
    return conform(
        hits.with_columns(
            pl.lit("outreach_window").alias("type"),
            pl.when(promoter).then(0.45).otherwise(0.35).alias("severity"),
            pl.lit(0.8).alias("confidence"),
            pl.concat_list(
                evidence_item(
                    pl.when(promoter).then(pl.lit("NPS")).otherwise(pl.lit("days to renewal")),
                    pl.when(promoter).then(pl.col("nps")).otherwise(pl.col("days_to_renewal")),
                    pl.when(promoter)
                    .then(pl.format("promoter response on {}", pl.col("responded_on")))
                    .otherwise(pl.format("renews on {}", pl.col("renewal_date"))),
                    # (a pre-renewal window reads the renewal date alone)
                    pl.when(promoter)
                    .then(pl.lit("nps_responses, customers"))
                    .otherwise(pl.lit("customers")),
                )
            ).alias("evidence"),
            pl.struct(
                pl.col("subject").alias("reason"),
                pl.col("nps").cast(pl.Int64),
                pl.col("responded_on").cast(pl.String),
                pl.col("days_to_renewal"),
                pl.col("renewal_date").cast(pl.String),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )

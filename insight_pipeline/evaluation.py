"""Detection quality against a sample's ground truth: recall, precision, delay, false alarms.

Pure polars over the insights table and `ground_truth.csv`, so the quality report, the tests and
anyone tuning a threshold measure the same way.

- recall: a planted pattern counts as found when an insight of the same type (and subject, for
  per-metric and per-contact types) is raised for that customer between its start and
  start + `max_delay` days;
- delay: days from the planted start to that insight's first day (median per type);
- precision: share of insights explained by a planted pattern of a compatible type on the same
  customer, raised between its start and its end + `max_delay` (a declining metric also
  legitimately raises usage_drop, a silent account also drops usage...);
- false alarms: insights on clean customers (no planted pattern, no churn) per customer per
  quarter.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

MAX_DELAY_DAYS: dict[str, int] = {
    "usage_drop": 7,
    "usage_spike": 7,
    "adoption_trend": 42,
    "declining_usage": 42,
    "usage_pattern_change": 28,
    "feature_discovery": 7,
    "going_dark": 50,
    "increased_activity": 14,
    "stakeholder_shift": 7,
    "silent_account": 21,
    "champion_left": 3,
    "health_drop": 10,
    "support_surge": 7,
    "detractor_nps": 3,
    "entitlement_limit": 7,
    "case_study_candidate": 7,
    "referral_candidate": 7,
}
DEFAULT_DELAY = 30

COMPATIBLE: dict[str, list[str]] = {
    "usage_drop": ["usage_drop", "declining_usage", "silent_account", "churn"],
    "usage_spike": ["usage_spike", "adoption_trend", "usage_pattern_change", "entitlement_limit"],
    "adoption_trend": [
        "adoption_trend",
        "usage_pattern_change",
        "feature_discovery",
        "entitlement_limit",
        "case_study_candidate",
    ],
    "declining_usage": ["declining_usage", "usage_drop", "silent_account", "churn"],
    "usage_pattern_change": ["usage_pattern_change", "usage_spike", "adoption_trend", "usage_drop"],
    "referral_candidate": ["referral_candidate", "case_study_candidate"],
    "case_study_candidate": ["case_study_candidate", "referral_candidate"],
    "going_dark": ["going_dark", "silent_account", "churn"],
    "silent_account": ["silent_account", "churn"],
    "support_surge": ["support_surge", "champion_left", "churn"],
    "health_drop": ["health_drop", "silent_account", "declining_usage", "usage_drop", "churn"],
}
SUBJECT_TYPES = {
    "usage_drop",
    "usage_spike",
    "adoption_trend",
    "declining_usage",
    "usage_pattern_change",
    "champion_left",
    "detractor_nps",
    "stakeholder_shift",
    "feature_discovery",
}


def _delay(type_col: str) -> pl.Expr:
    return pl.col(type_col).replace_strict(
        MAX_DELAY_DAYS, default=DEFAULT_DELAY, return_dtype=pl.Int64
    )


def detection_quality(
    insights: pl.DataFrame,
    truth: pl.DataFrame,
    first: date,
    last: date,
    types: list[str] | None = None,
) -> pl.DataFrame:
    """Per type: planted, found, recall, median_delay_days, raised, precision."""
    truth = truth.with_columns(
        pl.col("start_date").cast(pl.Date),
        pl.col("end_date").cast(pl.Date),
        pl.col("subject").fill_null("").cast(pl.String),
    )
    raised = insights.filter(pl.col("partition_date").is_between(first, last)).select(
        "customer_id", "type", pl.col("subject").fill_null(""), "partition_date"
    )
    types = types or sorted(set(raised["type"].to_list()) | set(MAX_DELAY_DAYS))
    # Planted patterns whose detection window lies inside the evaluated range.
    planted = truth.filter(
        pl.col("type").is_in(types)
        & (pl.col("start_date") >= first)
        & (pl.col("start_date") + pl.duration(days=_delay("type")) <= last)
    ).with_row_index("planted_id")
    candidates = planted.join(raised, on=["customer_id", "type"], how="inner", suffix="_found")
    subject_ok = ~pl.col("type").is_in(list(SUBJECT_TYPES)) | (
        pl.col("subject") == pl.col("subject_found")
    )
    found = (
        candidates.filter(
            subject_ok
            & (pl.col("partition_date") >= pl.col("start_date"))
            & (pl.col("partition_date") <= pl.col("start_date") + pl.duration(days=_delay("type")))
        )
        .group_by("planted_id", "type")
        .agg(
            (pl.col("partition_date").min() - pl.col("start_date").first())
            .dt.total_days()
            .alias("delay")
        )
    )
    recall = (
        planted.group_by("type")
        .agg(pl.len().alias("planted"))
        .join(
            found.group_by("type").agg(
                pl.len().alias("found"), pl.col("delay").median().alias("median_delay_days")
            ),
            on="type",
            how="left",
        )
        .with_columns(pl.col("found").fill_null(0))
        .with_columns((pl.col("found") / pl.col("planted")).round(3).alias("recall"))
    )
    # Precision over every raised insight of the type.
    compat = pl.DataFrame(
        [(t, c) for t, cs in COMPATIBLE.items() for c in cs],
        schema=["type", "truth_type"],
        orient="row",
    )
    per_type = (
        raised.with_row_index("raised_id")
        .join(compat, on="type", how="left")
        .with_columns(pl.coalesce("truth_type", "type").alias("truth_type"))
        .join(
            truth.rename({"type": "truth_type", "subject": "truth_subject"}),
            on=["customer_id", "truth_type"],
            how="left",
        )
        .with_columns(
            (
                pl.col("start_date").is_not_null()
                & (pl.col("partition_date") >= pl.col("start_date"))
                & (
                    pl.col("partition_date")
                    <= pl.coalesce("end_date", pl.lit(last)) + pl.duration(days=_delay("type") + 14)
                )
            ).alias("ok")
        )
        .group_by("raised_id", "type")
        .agg(pl.col("ok").any())
        .group_by("type")
        .agg(pl.len().alias("raised"), pl.col("ok").sum().alias("explained"))
        .with_columns((pl.col("explained") / pl.col("raised")).round(3).alias("precision"))
    )
    return (
        pl.DataFrame({"type": types})
        .join(recall, on="type", how="left")
        .join(per_type, on="type", how="left")
        .with_columns(pl.col("planted", "found", "raised", "explained").fill_null(0))
        .sort("type")
    )


NOT_ANOMALIES = ("outperforming", "underperforming", "qbr_due", "outreach_window")
"""Standing facts about an account (a peer rank, a renewal date), not patterns to be planted."""


def false_alarm_rate(
    insights: pl.DataFrame, truth: pl.DataFrame, customers: pl.DataFrame, first: date, last: date
) -> tuple[float, int]:
    """Pattern insights (not benchmarks or timing) per clean customer per quarter (90 days), and
    the number of clean customers."""
    dirty = truth["customer_id"].unique()
    clean = customers.filter(
        ~pl.col("customer_id").is_in(dirty.implode()) & pl.col("churned_on").is_null()
    )
    n_clean = clean.height
    if n_clean == 0:
        return 0.0, 0
    alerts = insights.filter(
        pl.col("partition_date").is_between(first, last)
        & ~pl.col("type").is_in(list(NOT_ANOMALIES))
        & pl.col("customer_id").is_in(clean["customer_id"].implode())
    ).height
    quarters = ((last - first).days + 1) / 90.0
    return alerts / n_clean / quarters, n_clean


def churn_lead_times(
    insights: pl.DataFrame, customers: pl.DataFrame, first: date, last: date
) -> pl.DataFrame:
    """For each account that churned inside [first + 90 days, last]: days between its first risk
    insight (risk category, or usage_drop / going_dark) in the 180 days before churn and the churn
    date; null when no warning was raised."""
    churned = customers.filter(
        pl.col("churned_on").is_between(first + timedelta(days=90), last)
    ).select("customer_id", "churned_on")
    warnings_ = insights.filter(
        (pl.col("category") == "risk") | pl.col("type").is_in(["usage_drop", "going_dark"])
    ).select("customer_id", "partition_date")
    return (
        churned.join(warnings_, on="customer_id", how="left")
        .filter(
            pl.col("partition_date").is_null()
            | (
                (pl.col("partition_date") < pl.col("churned_on"))
                & (pl.col("partition_date") >= pl.col("churned_on") - pl.duration(days=180))
            )
        )
        .group_by("customer_id", "churned_on")
        .agg(pl.col("partition_date").min().alias("first_warning"))
        .with_columns(
            (pl.col("churned_on") - pl.col("first_warning")).dt.total_days().alias("lead_days")
        )
        .sort("customer_id")
    )

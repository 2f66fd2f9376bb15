"""The Signal seam: the one frame shape every detector returns.

A new detector is a function `(inputs, settings) -> signals frame` registered in
`lib/detectors/__init__.py`; nothing downstream changes. `evidence` is a list of
{metric, value, comparison, source} structs a CSM can check; `facts` is a JSON object of the
numbers a narrative may use (and the only numbers it may use).
"""

from __future__ import annotations

import polars as pl

EVIDENCE_TYPE = pl.List(
    pl.Struct(
        {"metric": pl.String, "value": pl.Float64, "comparison": pl.String, "source": pl.String}
    )
)

SIGNAL_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String,
    "type": pl.String,
    "subject": pl.String,
    "partition_date": pl.Date,
    "severity": pl.Float64,
    "confidence": pl.Float64,
    "evidence": EVIDENCE_TYPE,
    "facts": pl.String,
}

CATEGORY_OF_TYPE: dict[str, str] = {
    "usage_spike": "usage",
    "usage_drop": "usage",
    "usage_pattern_change": "usage",
    "adoption_trend": "usage",
    "feature_discovery": "usage",
    "power_users": "usage",
    "going_dark": "engagement",
    "increased_activity": "engagement",
    "stakeholder_shift": "engagement",
    "declining_usage": "risk",
    "silent_account": "risk",
    "champion_left": "risk",
    "health_drop": "risk",
    "support_surge": "risk",
    "detractor_nps": "risk",
    "entitlement_limit": "opportunity",
    "case_study_candidate": "opportunity",
    "referral_candidate": "opportunity",
    "outperforming": "benchmark",
    "underperforming": "benchmark",
    "qbr_due": "timing",
    "outreach_window": "timing",
    # Team-level (customer_id null, for a manager or leader): lib/team.py, not a detector.
    "cross_account_pattern": "team",
}

#: Types raised by lib/team.py about many accounts at once; never in a detector's Signals.
TEAM_TYPES: frozenset[str] = frozenset(t for t, c in CATEGORY_OF_TYPE.items() if c == "team")
#: The per-account types of the contract, the ones detectors raise.
ACCOUNT_TYPES: frozenset[str] = frozenset(CATEGORY_OF_TYPE) - TEAM_TYPES


def evidence_item(
    metric: pl.Expr, value: pl.Expr, comparison: pl.Expr, source: str | pl.Expr
) -> pl.Expr:
    """One evidence struct built from expressions (vectorised over all rows); `source` names
    the tables it was read from, per row where that depends on the row."""
    return pl.struct(
        metric.cast(pl.String).alias("metric"),
        value.cast(pl.Float64).alias("value"),
        comparison.cast(pl.String).alias("comparison"),
        (pl.lit(source) if isinstance(source, str) else source).cast(pl.String).alias("source"),
    )


def empty_signals() -> pl.DataFrame:
    return pl.DataFrame(schema=SIGNAL_SCHEMA)


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Select and cast to the Signal schema so every detector concatenates cleanly."""
    if frame.height == 0:
        return empty_signals()
    # Rounded so that a range run and day-by-day runs agree to the bit (float sums may differ
    # in the last place depending on how many rows a vectorised kernel saw).
    return frame.select(
        [pl.col(name).cast(dtype) for name, dtype in SIGNAL_SCHEMA.items()]
    ).with_columns(pl.col("severity", "confidence").round(6))

"""What must never reach the store: checks on the `insights` plan, blocking the sink.

The same checks guard the team plan (`cross_account_patterns`, defs/team/), with the team types
allowed instead: an account plan must never carry a team type nor a team plan an account one,
and only team insights may (and must) have no customer.
"""

from collections.abc import Collection

import dagster as dg
import polars as pl

from insight_pipeline.lib.signals import ACCOUNT_TYPES, CATEGORY_OF_TYPE, TEAM_TYPES

UNIQUE_IDS = "unique_insight_ids"
VALID_VALUES = "valid_category_type_priority"
EVIDENCE_PRESENT = "evidence_and_narrative_present"
SCORE_IN_RANGE = "score_between_0_and_1"

CHECK_NAMES = (UNIQUE_IDS, VALID_VALUES, EVIDENCE_PRESENT, SCORE_IN_RANGE)


def check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, blocking=True) for name in CHECK_NAMES]


def run_checks(
    plan: pl.DataFrame, types: Collection[str] = ACCOUNT_TYPES
) -> list[dg.AssetCheckResult]:
    """One result per check over the rows the sink would insert; `types` are the ones this
    plan may hold (the account types by default)."""
    new = plan.filter(pl.col("action") == "insert")
    results = []
    dup = new.height - new["id"].n_unique() if new.height else 0
    extend_ids = plan.filter(pl.col("action") == "extend")["id"]
    dup += extend_ids.len() - extend_ids.n_unique()
    results.append(
        dg.AssetCheckResult(check_name=UNIQUE_IDS, passed=dup == 0, metadata={"duplicates": dup})
    )
    team_row = pl.col("type").is_in(list(TEAM_TYPES))
    bad_values = new.filter(
        ~pl.col("type").is_in(list(types))
        | (pl.col("customer_id").is_null() != team_row)
        | (pl.col("category") != pl.col("type").replace_strict(CATEGORY_OF_TYPE, default=""))
        | ~pl.col("priority").is_in(["high", "medium", "low"])
    ).height
    results.append(
        dg.AssetCheckResult(
            check_name=VALID_VALUES, passed=bad_values == 0, metadata={"invalid_rows": bad_values}
        )
    )
    missing = new.filter(
        pl.col("evidence").is_null()
        | (pl.col("evidence") == "[]")
        | (pl.col("title").fill_null("").str.strip_chars() == "")
        | (pl.col("summary").fill_null("").str.strip_chars() == "")
        | pl.col("title").str.contains("None")
    ).height
    results.append(
        dg.AssetCheckResult(
            check_name=EVIDENCE_PRESENT, passed=missing == 0, metadata={"rows_missing": missing}
        )
    )
    out_of_range = new.filter(~pl.col("score").is_between(0.0, 1.0)).height
    results.append(
        dg.AssetCheckResult(
            check_name=SCORE_IN_RANGE,
            passed=out_of_range == 0,
            metadata={"rows_out_of_range": out_of_range},
        )
    )
    return results

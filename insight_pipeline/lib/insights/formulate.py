"""From signals to insights: account context, category, fingerprint, score, action, narrative.

`formulate` is vectorised over all signals of a range; `narrate_frame` renders the narrative of
each *new* episode only (a persisting pattern is narrated once, when it is first raised).
"""

from __future__ import annotations

import json

import polars as pl

from insight_pipeline.lib.insights.actions import ACTION_OF_TYPE, QUICK_ACTIONS
from insight_pipeline.lib.insights.narrate import Narrator, narrate_rows
from insight_pipeline.lib.ranking.preferences import attach_preferences
from insight_pipeline.lib.ranking.scoring import score_insights
from insight_pipeline.lib.settings import RankingSettings
from insight_pipeline.lib.signals import CATEGORY_OF_TYPE

ACCOUNT_COLUMNS = [
    "customer_id",
    "customer_name",
    "user_id",
    "arr",
    "arr_percentile",
    "segment",
    "industry",
    "renewal_date",
    "churned_on",
]


def account_context(customers: pl.DataFrame) -> pl.DataFrame:
    """The per-customer columns formulation needs, with the ARR percentile among all customers
    (as given by the `accounts` asset, which ranks all customers before keeping one shard)."""
    percentile = pl.col("arr").rank("average") / pl.col("arr").count()
    if "arr_percentile" in customers.columns:
        percentile = pl.col("arr_percentile")
    return customers.select(
        "customer_id",
        pl.col("name").alias("customer_name"),
        pl.col("csm_user_id").alias("user_id"),
        "arr",
        percentile.alias("arr_percentile"),
        "segment",
        "industry",
        "renewal_date",
        "churned_on",
    )


def formulate(
    signals: pl.DataFrame,
    customers: pl.DataFrame,
    settings: RankingSettings,
    preferences: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Day-level insight candidates: one row per fingerprint and partition day, scored.

    Signals of customers that are unknown, have no CSM, or churned on or before the day are
    dropped here (the contract: no insight on or after churned_on). `preferences` are the
    learned ones of each day (lib/ranking/preferences.py); None scores everyone neutrally.
    """
    accounts = account_context(customers)
    # One contiguous chunk first: signals arrive as a concat of the detectors' frames, and
    # polars gathers a many-chunk list-of-struct column (evidence) ~30x slower than a single one.
    frame = (
        signals.rechunk()
        .join(accounts, on="customer_id", how="inner")
        .filter(
            pl.col("user_id").is_not_null()
            & (pl.col("churned_on").is_null() | (pl.col("churned_on") > pl.col("partition_date")))
        )
        .with_columns(
            pl.col("type")
            .replace_strict(CATEGORY_OF_TYPE, return_dtype=pl.String)
            .alias("category"),
            pl.concat_str(
                [pl.col("customer_id"), pl.col("type"), pl.col("subject").fill_null("")],
                separator="|",
            ).alias("fingerprint"),
            (pl.col("renewal_date") - pl.col("partition_date"))
            .dt.total_days()
            .alias("days_to_renewal"),
        )
    )
    # One candidate per fingerprint and day: the strongest, if a detector repeats itself.
    # Keeping the first row of each key in sorted order is `unique(keep="first",
    # maintain_order=True)`, but a filter copies the (heavy) rows in order instead of gathering.
    # Sorted, a key's first row is the one whose key differs from the row above (nulls equal,
    # as `is_first_distinct` has them): no hash of the keys, and no copy at all when no
    # detector repeated itself (the usual case).
    frame = frame.sort(
        ["fingerprint", "partition_date", "severity"], descending=[False, False, True]
    )
    repeated = (pl.int_range(pl.len()) > 0) & pl.all_horizontal(
        pl.col(key).eq_missing(pl.col(key).shift(1)) for key in ("fingerprint", "partition_date")
    )
    if frame.select(repeated.any()).item():
        frame = frame.filter(~repeated)
    frame = attach_preferences(frame, preferences)
    return score_insights(frame, settings).drop("churned_on")


def narrate_frame(frame: pl.DataFrame, narrator: Narrator) -> pl.DataFrame:
    """Adds title, summary, so_what and recommended_action (JSON) to each row."""
    if frame.height == 0:
        return frame.with_columns(
            [
                pl.lit(None, dtype=pl.String).alias(c)
                for c in ("title", "summary", "so_what", "recommended_action")
            ]
        )
    texts = narrate_rows(frame, narrator)
    # `json.dumps({"type": ..., "description": ..., "quick_action_id": ...})` of each row, the
    # text around the description made once per type: only the description is dumped per row
    # (a string alone goes straight to the C encoder; a dict of three took three times as long)
    around: dict[str, tuple[str, str]] = {}
    actions = []
    for insight_type, text in zip(frame.get_column("type").to_list(), texts, strict=True):
        if insight_type not in around:
            quick = ACTION_OF_TYPE.get(insight_type, "review_account")
            around[insight_type] = (
                f'{{"type": {json.dumps(QUICK_ACTIONS[quick])}, "description": ',
                f', "quick_action_id": {json.dumps(quick)}}}',
            )
        head, tail = around[insight_type]
        actions.append(head + json.dumps(text["action"]) + tail)
    return frame.with_columns(
        pl.Series("title", [t["title"] for t in texts], pl.String),
        pl.Series("summary", [t["summary"] for t in texts], pl.String),
        pl.Series("so_what", [t["so_what"] for t in texts], pl.String),
        pl.Series("recommended_action", actions, pl.String),
    )


def evidence_json(frame: pl.DataFrame) -> pl.DataFrame:
    """The evidence list as the JSON text the store keeps (vectorised)."""
    items = pl.col("evidence").list.eval(pl.element().struct.json_encode()).list.join(",")
    return frame.with_columns(pl.concat_str([pl.lit("["), items, pl.lit("]")]).alias("evidence"))

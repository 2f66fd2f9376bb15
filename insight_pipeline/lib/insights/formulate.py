"""From signals to insights: account context, category, fingerprint, score, action, narrative.

`formulate` is vectorised over all signals of a range; `narrate_frame` renders the narrative of
each *new* episode only (a persisting pattern is narrated once, when it is first raised).
"""

from __future__ import annotations

import json

import polars as pl

from insight_pipeline.lib.detectors.common import sort_by_integers
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
    order = _candidate_rows(signals, accounts)
    if order is None:  # a detector repeated itself (or ids repeat): the general path
        frame = _strongest(_in_context(signals.rechunk(), accounts))
    else:
        # one gather of the signals' rows (from one contiguous chunk: signals arrive as a concat
        # of the detectors' frames, and polars gathers a many-chunk list-of-struct column ~30x
        # slower than a single one), and of their accounts' rows
        rows, at, fingerprint = order
        frame = pl.concat(
            [signals.rechunk()[rows], accounts.drop("customer_id")[at]], how="horizontal"
        ).with_columns(_derived(fingerprint))
    frame = attach_preferences(frame, preferences)
    # the score's explanation (score_parts) is written for the new episodes alone (episodes.py)
    return score_insights(frame, settings, explain=False).drop("churned_on")


def _derived(fingerprint: pl.Series | None = None) -> list[pl.Expr]:
    """category, fingerprint (unless known) and days_to_renewal of a signal with its account
    context."""
    return [
        pl.col("type").replace_strict(CATEGORY_OF_TYPE, return_dtype=pl.String).alias("category"),
        _fingerprint() if fingerprint is None else pl.lit(fingerprint).alias("fingerprint"),
        (pl.col("renewal_date") - pl.col("partition_date"))
        .dt.total_days()
        .alias("days_to_renewal"),
    ]


def _fingerprint() -> pl.Expr:
    return pl.concat_str(
        [pl.col("customer_id"), pl.col("type"), pl.col("subject").fill_null("")], separator="|"
    ).alias("fingerprint")


def _candidate_rows(
    signals: pl.DataFrame, accounts: pl.DataFrame
) -> tuple[pl.Series, pl.Series, pl.Series] | None:
    """Where `_strongest(_in_context(signals, accounts))` takes its rows from (signal rows,
    account rows) and their fingerprints, when no fingerprint and day repeats (the usual case:
    then that sort's order is the keys' alone, and every row is kept), else None. Worked out on
    the keys alone: each signal's account found by an Enum of the ids (not a join, which
    gathered every column, evidence lists included), the fingerprints sorted as their ranks
    among the distinct ones packed with the day into one integer (not a sort on the texts and
    two more keys), so the heavy rows are gathered once."""
    ids = accounts.get_column("customer_id")
    if ids.null_count() or ids.is_duplicated().any():
        return None
    account = signals.get_column("customer_id").cast(pl.Enum(ids), strict=False).to_physical()
    keys = (
        signals.select("customer_id", "type", "subject", "partition_date")
        .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), account.alias("_at"))
        .filter(pl.col("_at").is_not_null())
    )
    keys = pl.concat(
        [keys, accounts.select("user_id", "churned_on", "renewal_date")[keys["_at"]]],
        how="horizontal",
    )
    keys = keys.filter(
        pl.col("user_id").is_not_null()
        & (pl.col("churned_on").is_null() | (pl.col("churned_on") > pl.col("partition_date")))
    ).with_columns(_fingerprint())
    if (
        keys.get_column("fingerprint").null_count()
        or keys.get_column("partition_date").null_count()
    ):
        return None
    ranks = pl.Enum(keys.get_column("fingerprint").unique().sort())
    coded = sort_by_integers(
        keys.select(
            pl.int_range(pl.len(), dtype=pl.UInt32).alias("_key"),
            pl.col("fingerprint").cast(ranks).to_physical().alias("_rank"),
            "partition_date",
        ),
        ["_rank", "partition_date"],
    )
    if coded.select(_repeats(("_rank", "partition_date")).any()).item():
        return None
    kept = keys[coded.get_column("_key")]
    return kept.get_column("_row"), kept.get_column("_at"), kept.get_column("fingerprint")


def _in_context(signals: pl.DataFrame, accounts: pl.DataFrame) -> pl.DataFrame:
    """The signals of customers with a CSM on their customer days, with the account context,
    category, fingerprint and days to renewal (rows in no particular order)."""
    return (
        signals.join(accounts, on="customer_id", how="inner")
        .filter(
            pl.col("user_id").is_not_null()
            & (pl.col("churned_on").is_null() | (pl.col("churned_on") > pl.col("partition_date")))
        )
        .with_columns(_derived())
    )


def _repeats(keys: tuple[str, ...]) -> pl.Expr:
    """True on each row whose `keys` equal the row above's (nulls equal)."""
    return (pl.int_range(pl.len()) > 0) & pl.all_horizontal(
        pl.col(key).eq_missing(pl.col(key).shift(1)) for key in keys
    )


def _strongest(frame: pl.DataFrame) -> pl.DataFrame:
    """One candidate per fingerprint and day, the strongest, in (fingerprint, day) order."""
    # Keeping the first row of each key in sorted order is `unique(keep="first",
    # maintain_order=True)`, but a filter copies the (heavy) rows in order instead of gathering.
    # Sorted, a key's first row is the one whose key differs from the row above (nulls equal,
    # as `is_first_distinct` has them): no hash of the keys.
    frame = frame.sort(
        ["fingerprint", "partition_date", "severity"], descending=[False, False, True]
    )
    return frame.filter(~_repeats(("fingerprint", "partition_date")))


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

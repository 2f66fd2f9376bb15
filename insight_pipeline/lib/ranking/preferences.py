"""Learned preferences: how likely each CSM is to find an insight type worth their time.

Feedback written by the API (`InsightStore.record_action`) is the only evidence. Each event is

- a **positive** (1): the insight was actioned, or marked helpful / took_action;
- a **negative** (1): dismissed as not_relevant;
- **half a negative** (`RankingSettings.already_knew_weight`, 0.5): dismissed as already_knew
  (right, but not news) or dismissed without a reason (ambiguous);
- **nothing**: a snooze says "not now", not "not relevant".

The same judgement repeated on one insight (a double click, a re-sent request) counts once.

The model is a Beta-Binomial with an empirical-Bayes prior shared across the team, so one
CSM's few clicks are shrunk toward what the whole team thinks of the type:

- the team's rate of a type t (or category c), pooled over every CSM and shrunk toward neutral
  with `team_prior_strength` k0 pseudo-events: m_t = (pos_t + k0 / 2) / (n_t + k0) - the
  empirical-Bayes prior every CSM shares (a type nobody has judged stays neutral, 0.5);
- a CSM's lean on a category: p_uc = (pos_uc + k m_c) / (n_uc + k), k = `preference_strength`;
- the CSM's preference for a type is the posterior mean of Beta(k pi, k (1 - pi)) updated with
  their own feedback on the type, p_ut = (pos_ut + k pi_ut) / (n_ut + k), where the prior mean
  pi_ut is the team's rate of the type moved by the CSM's lean on its category, on the log-odds
  scale: logit pi_ut = logit m_t + logit p_uc - logit m_c.

Hence: with no feedback at all every preference is 0.5 (neutral: rankings are exactly what they
were before any feedback); a CSM without feedback gets the team's rate (cold start = the team
prior); a CSM who dismissed every benchmark insight starts low on a benchmark type they have
never seen (the user x category fallback); and their own judgements of a type take over as they
accumulate. k is a setting rather than estimated from the spread between CSMs because a team of
about ten gives too noisy a between-user variance to trust.

No look-ahead: the preferences of partition day D use only events created before D 00:00 UTC,
so a range run and day-by-day runs learn exactly the same thing.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from insight_pipeline.lib.settings import RankingSettings
from insight_pipeline.lib.signals import CATEGORY_OF_TYPE

#: Columns of the learned preferences (one row per day, CSM and type; team rows have no CSM).
PREFERENCE_SCHEMA: dict[str, pl.DataType] = {
    "partition_date": pl.Date(),
    "user_id": pl.String(),
    "type": pl.String(),
    "category": pl.String(),
    "positives": pl.Float64(),
    "negatives": pl.Float64(),
    "category_preference": pl.Float64(),
    "preference": pl.Float64(),
}

POSITIVE_FEEDBACK = ("helpful", "took_action")
NEUTRAL = 0.5
_EPS = 0.01  # probabilities are kept inside [eps, 1 - eps] before a logit
_TYPES = pl.DataFrame({"type": list(CATEGORY_OF_TYPE), "category": list(CATEGORY_OF_TYPE.values())})


def judgements(events: pl.DataFrame, settings: RankingSettings) -> pl.DataFrame:
    """Feedback events (the store's FEEDBACK_SCHEMA) as weighted judgements.

    Returns user_id, type, category, available_on (the first partition day that may use the
    event: the day after it was created, UTC), pos and neg; events that say nothing dropped.
    """
    positive = (pl.col("action") == "actioned") | pl.col("feedback").is_in(POSITIVE_FEEDBACK)
    dismissed = pl.col("action") == "dismiss"
    negative = (
        pl.when(positive)
        .then(0.0)
        .when(dismissed & (pl.col("feedback") == "not_relevant"))
        .then(1.0)
        .when(dismissed)
        .then(settings.already_knew_weight)
        .otherwise(0.0)
    )
    return (
        events.sort("created_at", "id")
        .unique(["insight_id", "action", "feedback"], keep="first", maintain_order=True)
        .select(
            "user_id",
            pl.col("insight_type").alias("type"),
            "category",
            (pl.col("created_at").dt.convert_time_zone("UTC").dt.date() + timedelta(days=1))
            .cast(pl.Date)
            .alias("available_on"),
            positive.cast(pl.Float64).fill_null(0.0).alias("pos"),
            negative.fill_null(0.0).alias("neg"),
        )
        .filter((pl.col("pos") + pl.col("neg")) > 0)
    )


def _as_of(
    judged: pl.DataFrame, days: pl.DataFrame, keys: list[str], grid: pl.DataFrame
) -> pl.DataFrame:
    """Cumulative pos/neg per `keys` as of each day (events available on or before the day),
    on the grid of days x `grid` rows; zero where nothing was available yet."""
    daily = (
        judged.group_by([*keys, "available_on"])
        .agg(pl.col("pos").sum(), pl.col("neg").sum())
        .sort([*keys, "available_on"])
        .with_columns(pl.col("pos", "neg").cum_sum().over(keys))
        .sort("available_on")
    )
    frame = days.join(grid, how="cross").sort("partition_date")
    if daily.height == 0:
        return frame.with_columns(pl.lit(0.0).alias("pos"), pl.lit(0.0).alias("neg"))
    return (
        frame.join_asof(
            daily,
            left_on="partition_date",
            right_on="available_on",
            by=keys,
            strategy="backward",
            check_sortedness=False,  # sorted above; polars cannot verify it within groups
        )
        .drop("available_on")
        .with_columns(pl.col("pos", "neg").fill_null(0.0))
    )


def _logit(p: pl.Expr) -> pl.Expr:
    p = p.clip(_EPS, 1 - _EPS)
    return (p / (1 - p)).log()


def _shrunk(pos: str, neg: str, prior: pl.Expr, strength: float) -> pl.Expr:
    """Posterior mean of a Beta prior with mean `prior` and `strength` pseudo-events."""
    return (pl.col(pos) + strength * prior) / (pl.col(pos) + pl.col(neg) + strength)


def learn_preferences(
    events: pl.DataFrame, first: date, last: date, settings: RankingSettings
) -> pl.DataFrame:
    """Preferences (PREFERENCE_SCHEMA) for every day in [first, last]: team rows (user_id null)
    for every type, and rows for every CSM with feedback available on that day."""
    days = pl.DataFrame(
        {"partition_date": pl.date_range(first, last, "1d", eager=True)},
        schema={"partition_date": pl.Date},
    )
    judged = judgements(events, settings).filter(pl.col("available_on") <= last)
    k0, k = settings.team_prior_strength, settings.preference_strength

    team_type = _as_of(judged, days, ["type"], _TYPES.select("type")).with_columns(
        _shrunk("pos", "neg", pl.lit(NEUTRAL), k0).alias("m_t")
    )
    team_category = _as_of(judged, days, ["category"], _TYPES.select("category").unique()).select(
        "partition_date", "category", _shrunk("pos", "neg", pl.lit(NEUTRAL), k0).alias("m_c")
    )
    team = (
        team_type.join(_TYPES, on="type")
        .join(team_category, on=["partition_date", "category"])
        .select(
            "partition_date",
            "type",
            "category",
            pl.col("pos").alias("team_pos"),
            pl.col("neg").alias("team_neg"),
            "m_t",
            "m_c",
        )
    )

    users = judged.select("user_id").unique().sort("user_id")
    user_category = _as_of(
        judged,
        days,
        ["user_id", "category"],
        users.join(_TYPES.select("category").unique(), how="cross"),
    ).rename({"pos": "pos_c", "neg": "neg_c"})
    user_type = (
        _as_of(judged, days, ["user_id", "type"], users.join(_TYPES.select("type"), how="cross"))
        .join(_TYPES, on="type")
        .join(user_category, on=["partition_date", "user_id", "category"])
        .join(team, on=["partition_date", "type", "category"])
        # only CSMs who had given some feedback by that day: the others read the team rows
        .filter((pl.col("pos_c") + pl.col("neg_c")).sum().over("partition_date", "user_id") > 0)
        .with_columns(_shrunk("pos_c", "neg_c", pl.col("m_c"), k).alias("p_uc"))
        .with_columns(
            (_logit(pl.col("m_t")) + _logit(pl.col("p_uc")) - _logit(pl.col("m_c"))).alias("_lo")
        )
        .with_columns((1.0 / (1.0 + (-pl.col("_lo")).exp())).alias("pi"))
        .select(
            "partition_date",
            "user_id",
            "type",
            "category",
            pl.col("pos").alias("positives"),
            pl.col("neg").alias("negatives"),
            pl.col("p_uc").alias("category_preference"),
            _shrunk("pos", "neg", pl.col("pi"), k).alias("preference"),
        )
    )
    team_rows = team.select(
        "partition_date",
        pl.lit(None, dtype=pl.String).alias("user_id"),
        "type",
        "category",
        pl.col("team_pos").alias("positives"),
        pl.col("team_neg").alias("negatives"),
        pl.col("m_c").alias("category_preference"),
        pl.col("m_t").alias("preference"),
    )
    # Rounded so that sums over differently sized inputs agree to the bit across run shapes.
    return (
        pl.concat([team_rows, user_type])
        .with_columns(pl.col("category_preference", "preference").round(6))
        .select([pl.col(c).cast(t) for c, t in PREFERENCE_SCHEMA.items()])
        .sort("partition_date", "user_id", "type", nulls_last=False)
    )


def attach_preferences(candidates: pl.DataFrame, preferences: pl.DataFrame | None) -> pl.DataFrame:
    """Adds `preference` to candidates (partition_date, user_id, type): the CSM's own estimate,
    else the team's for the type (a CSM with no feedback yet), else neutral 0.5."""
    if preferences is None or preferences.height == 0:
        return candidates.with_columns(pl.lit(NEUTRAL).alias("preference"))
    own = preferences.filter(pl.col("user_id").is_not_null()).select(
        "partition_date", "user_id", "type", pl.col("preference").alias("_own")
    )
    team = preferences.filter(pl.col("user_id").is_null()).select(
        "partition_date", "type", pl.col("preference").alias("_team")
    )
    return (
        candidates.drop("preference", strict=False)
        .join(own, on=["partition_date", "user_id", "type"], how="left", maintain_order="left")
        .join(team, on=["partition_date", "type"], how="left", maintain_order="left")
        .with_columns(pl.coalesce("_own", "_team", pl.lit(NEUTRAL)).alias("preference"))
        .drop("_own", "_team")
    )

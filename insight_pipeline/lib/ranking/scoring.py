"""The scoring model: score = weighted evidence x learned preference, every part kept with the
insight (`score_parts`) so a CSM, or the Dagster UI, can see why it ranks where it does.

Parts, each 0..1:

- severity: how far from normal, from the detector (a usage drop to half its expected level is
  0.5, to a quarter 1.0; a champion leaving 0.8, an executive sponsor 0.9; ...);
- impact: the business weight of the account: 0.6 x its ARR percentile among all customers
  + 0.4 x renewal proximity (1 within 30 days of renewal, falling linearly to 0 at 365 days;
  0 when the date is unknown or passed);
- confidence: data volume and persistence behind the signal, from the detector;
- novelty: 1 for a new pattern; a pattern back within 30 days (`novelty_days`) of its previous
  episode's end is less news: 0.5 rising linearly to 1 (a flapping metric fades). A persisting
  pattern never re-raises at all: it extends its open insight (episodes.py, which sets novelty
  and scores new episodes again);
- preference: the CSM's learned liking of the type (preferences.py: a Beta posterior shrunk
  toward the team; 0.5 = neutral, the value before any feedback).

    base  = 0.45 severity + 0.30 impact + 0.15 confidence + 0.10 novelty   (RankingSettings)
    score = clip(base x 2 x preference, 0, 1)

i.e. the evidence's weight times the odds that this CSM finds it useful, relative to a neutral
0.5: an expected value. Before any feedback every preference is 0.5 and the score is the base;
a type the CSM dismisses two times in three (0.33) scores two thirds of its base, one they act
on three times in four (0.75) one and a half times. Priority: high from 0.65, medium from 0.40,
else low (`high_cutoff`, `medium_cutoff`); only critical insights and those from
`push_min_score` (0.40) are pushed, at most `daily_cap` (10) per CSM and day (episodes.py).

**Critical risks are never suppressed by personalisation**: champion_left and silent_account,
any risk-category insight with severity >= 0.7, and a usage_drop with severity >= 0.6 (the
value down to ~44% of expected or less) are flagged `critical` and their preference is floored
at 0.5, so a CSM's dismissals can raise them but never push them below their neutral score; the
daily cap also ranks them first (episodes.py).

**Echoes rank lower** (echoes.py): a new insight that repeats what an open insight on the same
account already says (a declining_usage on a metric that dropped, a going_dark of a silent
account, the second metric of one drop) scores `echo_factor` (0.5) of its score and is not
critical; `score_parts.echo_of` names the insight it repeats.

The score never falls when severity, confidence, ARR or renewal proximity rises (tested).
"""

from __future__ import annotations

import polars as pl

from insight_pipeline.lib.settings import RankingSettings


def impact_expr() -> pl.Expr:
    """Needs columns arr_percentile (0..1) and days_to_renewal (may be null)."""
    proximity = (
        pl.when(pl.col("days_to_renewal").is_null() | (pl.col("days_to_renewal") < 0))
        .then(0.0)
        .otherwise(1.0 - ((pl.col("days_to_renewal") - 30).clip(lower_bound=0) / 335.0))
        .clip(0.0, 1.0)
    )
    return (0.6 * pl.col("arr_percentile").fill_null(0.0) + 0.4 * proximity).clip(0.0, 1.0)


def critical_expr(settings: RankingSettings) -> pl.Expr:
    """True for the risks personalisation must never bury (needs type, category, severity)."""
    s = settings
    return (
        pl.col("type").is_in(list(s.critical_types))
        | ((pl.col("category") == "risk") & (pl.col("severity") >= s.critical_severity))
        | ((pl.col("type") == "usage_drop") & (pl.col("severity") >= s.critical_drop_severity))
    ).fill_null(False)


def score_insights(
    frame: pl.DataFrame, settings: RankingSettings, explain: bool = True
) -> pl.DataFrame:
    """Adds impact, novelty, preference (if absent), critical, score, priority and, when
    `explain`, score_parts (JSON). A critical insight's preference is floored at
    `critical_preference_floor`; an echo (`echo_of` set) is not critical and scores
    `echo_factor` of its score. The candidates are scored without the JSON: it is written for
    the new episodes, which are scored again once their novelty and echoes are known (a year's
    range raises them on ~4% of its candidates)."""
    s = settings
    if "preference" not in frame.columns:
        frame = frame.with_columns(pl.lit(0.5).alias("preference"))
    if "novelty" not in frame.columns:
        frame = frame.with_columns(pl.lit(1.0).alias("novelty"))
    if "echo_of" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("echo_of"))
    echo = pl.col("echo_of").is_not_null()
    frame = frame.with_columns(
        impact_expr().alias("impact"), (critical_expr(s) & ~echo).alias("critical")
    )
    frame = frame.with_columns(
        pl.when(pl.col("critical"))
        .then(pl.max_horizontal("preference", pl.lit(s.critical_preference_floor)))
        .otherwise(pl.col("preference"))
        .alias("preference")
    )
    base = (
        s.weight_severity * pl.col("severity")
        + s.weight_impact * pl.col("impact")
        + s.weight_confidence * pl.col("confidence")
        + s.weight_novelty * pl.col("novelty")
    )
    score = (base * 2.0 * pl.col("preference")).clip(0.0, 1.0) * (
        pl.when(echo).then(pl.lit(s.echo_factor)).otherwise(pl.lit(1.0))
    )
    frame = frame.with_columns(score.alias("score")).with_columns(
        pl.when(pl.col("score") >= s.high_cutoff)
        .then(pl.lit("high"))
        .when(pl.col("score") >= s.medium_cutoff)
        .then(pl.lit("medium"))
        .otherwise(pl.lit("low"))
        .alias("priority")
    )
    if not explain:
        return frame
    return frame.with_columns(
        pl.struct(
            pl.col("severity").round(3),
            pl.col("impact").round(3),
            pl.col("confidence").round(3),
            pl.col("novelty").round(3),
            pl.col("preference").round(3),
            pl.col("arr_percentile").round(3),
            pl.col("days_to_renewal"),
            pl.col("critical"),
            pl.col("echo_of"),
            pl.col("score").round(4),
        )
        .struct.json_encode()
        .alias("score_parts"),
    )

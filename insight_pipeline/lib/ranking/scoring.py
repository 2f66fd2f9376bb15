"""The scoring model: score = weighted parts, each 0..1, kept with the insight.

- severity: how far from normal (from the detector);
- impact: business weight of the account: 0.6 x ARR percentile among all customers + 0.4 x
  renewal proximity (1 within 30 days of renewal, falling linearly to 0 at 365 days);
- confidence: data volume and persistence (from the detector);
- novelty: 1 for a pattern not raised before; lower when the same customer already has an open
  insight of that type (set by the sink's episode logic, 1 here);
- preference: the user's learned liking of the type (0.5 = neutral until feedback exists).

score = (w_sev*severity + w_imp*impact + w_conf*confidence + w_nov*novelty) x (0.5 + preference)
clipped to 0..1; priority is high >= high_cutoff, medium >= medium_cutoff, else low. The score
rises with severity, ARR and renewal proximity and never falls when any of them rises.
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


def score_insights(frame: pl.DataFrame, settings: RankingSettings) -> pl.DataFrame:
    """Adds impact, novelty, preference (if absent), score, priority and score_parts (JSON)."""
    s = settings
    if "preference" not in frame.columns:
        frame = frame.with_columns(pl.lit(0.5).alias("preference"))
    if "novelty" not in frame.columns:
        frame = frame.with_columns(pl.lit(1.0).alias("novelty"))
    frame = frame.with_columns(impact_expr().alias("impact"))
    base = (
        s.weight_severity * pl.col("severity")
        + s.weight_impact * pl.col("impact")
        + s.weight_confidence * pl.col("confidence")
        + s.weight_novelty * pl.col("novelty")
    )
    score = (base * (0.5 + pl.col("preference"))).clip(0.0, 1.0)
    return frame.with_columns(score.alias("score")).with_columns(
        pl.when(pl.col("score") >= s.high_cutoff)
        .then(pl.lit("high"))
        .when(pl.col("score") >= s.medium_cutoff)
        .then(pl.lit("medium"))
        .otherwise(pl.lit("low"))
        .alias("priority"),
        pl.struct(
            pl.col("severity").round(3),
            pl.col("impact").round(3),
            pl.col("confidence").round(3),
            pl.col("novelty").round(3),
            pl.col("preference").round(3),
            pl.col("arr_percentile").round(3),
            pl.col("days_to_renewal"),
            pl.col("score").round(4),
        )
        .struct.json_encode()
        .alias("score_parts"),
    )

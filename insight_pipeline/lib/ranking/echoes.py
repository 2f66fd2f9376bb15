"""Echoes: a new insight that repeats what an open insight on the same account already says.

One event reaches several detectors. Usage that stops raises a usage_drop on each metric; weeks
later the weekly totals show a declining_usage and a usage_pattern_change on the same metrics,
and the account is a silent_account that has also gone dark. Each is true, and after the first
none is news: on the sample, one account's stopped usage held 15 open insights and the demo's
top three were one account's three declining metrics.

A new episode is an **echo** when an episode of the same account that `RELATIONS` says explains
it is open on the echo's first day (it began on or before that day and was last seen within its
TTL, the rule that keeps a pattern in its open insight; a dismissed insight explains nothing:
the CSM has set it aside, so it carries no alarm), and, where the two measure the same fall on
the same scale, is at least as severe (a worse fall than the one already raised is news).
Two new episodes of the same type on the same day are ranked by severity, then fingerprint:
the first explains the others.

An echo is kept (the account's page shows it, feedback on it counts) but its score is
`echo_factor` of what it would be, it is never critical (the explaining insight carries the
alarm) and `score_parts.echo_of` names what it repeats. The explaining episodes are those of
the store after the run's plan, so a range run and day-by-day runs decide the same: an open
episode is seen open on every day between its first and its last detection, because its gaps
are within the threshold that keeps it open.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from insight_pipeline.lib.settings import RankingSettings


@dataclass(frozen=True)
class Explains:
    """`explainer`, open on the account, explains a new `echo`."""

    explainer: str
    echo: str
    subject: str
    """"same": on the explainer's metric; "other": on another metric (one event across
    metrics); "any": whatever the echo's subject."""
    weaker_only: bool
    """The echo is one only if not more severe than the explainer (same scale of fall)."""
    falling_only: bool = False
    """The echo is one only if it reports a fall (a pattern change up after a drop is a
    recovery, which is news)."""


RELATIONS: tuple[Explains, ...] = (
    # no usage, no meeting, no message: includes no two-way contact and any fall in usage
    Explains("silent_account", "going_dark", "any", weaker_only=False),
    Explains("silent_account", "declining_usage", "any", weaker_only=False),
    Explains("silent_account", "usage_pattern_change", "any", weaker_only=False, falling_only=True),
    # a metric that dropped then sits low: the weekly tests see the same fall weeks later
    Explains("usage_drop", "declining_usage", "same", weaker_only=True),
    Explains("usage_drop", "usage_pattern_change", "same", weaker_only=True, falling_only=True),
    # one event across metrics: the first (or most severe) metric tells it
    Explains("usage_drop", "usage_drop", "other", weaker_only=True),
    Explains("declining_usage", "declining_usage", "other", weaker_only=True),
    Explains("adoption_trend", "adoption_trend", "other", weaker_only=True),
)

_RELATIONS_FRAME = pl.DataFrame(
    {
        "_e_type": [r.explainer for r in RELATIONS],
        "type": [r.echo for r in RELATIONS],
        "_subject_rule": [r.subject for r in RELATIONS],
        "_weaker_only": [r.weaker_only for r in RELATIONS],
        "_falling_only": [r.falling_only for r in RELATIONS],
    }
)
ECHO_TYPES = frozenset(r.echo for r in RELATIONS)
EXPLAINER_TYPES = frozenset(r.explainer for r in RELATIONS)
#: Columns an explaining episode needs (the store's episodes and the run's new ones).
EXPLAINER_COLUMNS = ("customer_id", "type", "subject", "fingerprint", "partition_date")


def _rounded(severity: pl.Expr) -> pl.Expr:
    """Severities compare as stored in score_parts (3 decimals), so a new episode and the same
    episode read back from the store compare alike."""
    return severity.cast(pl.Float64).round(3)


def explainers(
    existing: pl.DataFrame, new: pl.DataFrame, extensions: pl.DataFrame, settings: RankingSettings
) -> pl.DataFrame:
    """The episodes that may explain others, as the store holds them after the run's plan:
    the stored ones not dismissed (last seen moved by `extensions`) and the new ones, each with
    the last day it stays open (`_open_until`) and its severity. Stored episodes without
    customer_id, type and subject (bare test frames) explain nothing."""
    columns = {
        "_e_customer": pl.String,
        "_e_type": pl.String,
        "_e_subject": pl.String,
        "_e_fingerprint": pl.String,
        "_e_first": pl.Date,
        "_open_until": pl.Date,
        "_e_severity": pl.Float64,
    }
    frames = []
    if set(EXPLAINER_COLUMNS) <= set(new.columns) and "severity" in new.columns:
        frames.append(_explaining(new, pl.col("severity"), settings))
    stored_columns = {*EXPLAINER_COLUMNS, "score_parts", "category", "status"}
    if existing.height and stored_columns <= set(existing.columns):
        stored = existing.filter(pl.col("status").ne_missing("dismissed"))
        if extensions.height:
            stored = stored.join(
                extensions.select("id", pl.col("last_seen_date").alias("_extended")),
                on="id",
                how="left",
            ).with_columns(pl.max_horizontal("last_seen_date", "_extended").alias("last_seen_date"))
        severity = pl.col("score_parts").str.json_path_match("$.severity").cast(pl.Float64)
        frames.append(_explaining(stored, severity, settings))
    if not frames:
        return pl.DataFrame(schema=columns)
    # one row per episode (a fingerprint has one per first day; a re-run's new episode is also
    # the stored one)
    return pl.concat([f.cast(columns) for f in frames]).unique(
        ["_e_fingerprint", "_e_first"], keep="first", maintain_order=True
    )


def _explaining(frame: pl.DataFrame, severity: pl.Expr, settings: RankingSettings) -> pl.DataFrame:
    """The explaining episodes of `frame` in `explainers`' columns: open until their TTL after
    they were last seen."""
    ttl = (
        pl.col("category").replace_strict(settings.ttl_days, default=14, return_dtype=pl.Int32)
        if "category" in frame.columns
        else pl.lit(14)
    )
    return frame.filter(pl.col("type").is_in(list(EXPLAINER_TYPES))).select(
        pl.col("customer_id").alias("_e_customer"),
        pl.col("type").alias("_e_type"),
        pl.col("subject").fill_null("").alias("_e_subject"),
        pl.col("fingerprint").alias("_e_fingerprint"),
        pl.col("partition_date").alias("_e_first"),
        (pl.col("last_seen_date") + pl.duration(days=ttl)).alias("_open_until"),
        _rounded(severity).alias("_e_severity"),
    )


def _falling() -> pl.Expr:
    """Does a new episode report a fall? From its facts' change_pct (usage_pattern_change)."""
    return (
        pl.col("facts").str.json_path_match("$.change_pct").cast(pl.Float64, strict=False) < 0
    ).fill_null(False)


def echo_of(new: pl.DataFrame, explaining: pl.DataFrame) -> pl.Series:
    """For each row of `new` (new episodes: customer_id, type, subject, fingerprint,
    partition_date, severity; facts for pattern changes), what it echoes ("type subject" of
    the explaining episode, the earliest then by fingerprint), or null."""
    out = pl.Series("echo_of", [None] * new.height, dtype=pl.String)
    if new.height == 0 or explaining.height == 0 or not set(EXPLAINER_COLUMNS) <= set(new.columns):
        return out
    falling = _falling() if "facts" in new.columns else pl.lit(False)
    echoes = (
        new.with_row_index("_row")
        .filter(pl.col("type").is_in(list(ECHO_TYPES)))
        .select(
            "_row",
            "customer_id",
            "type",
            pl.col("subject").fill_null(""),
            "fingerprint",
            "partition_date",
            _rounded(pl.col("severity")).alias("_severity"),
            falling.alias("_falling"),
        )
    )
    if echoes.height == 0:
        return out
    pairs = (
        echoes.join(_RELATIONS_FRAME, on="type", how="inner")
        .join(
            explaining,
            left_on=["customer_id", "_e_type"],
            right_on=["_e_customer", "_e_type"],
            how="inner",
        )
        .filter(
            (pl.col("_e_fingerprint") != pl.col("fingerprint"))
            & (pl.col("_e_first") <= pl.col("partition_date"))
            & (pl.col("partition_date") <= pl.col("_open_until"))
        )
    )
    same_subject = pl.col("_e_subject") == pl.col("subject")
    subject_ok = (
        pl.when(pl.col("_subject_rule") == "same")
        .then(same_subject)
        .when(pl.col("_subject_rule") == "other")
        .then(~same_subject)
        .otherwise(pl.lit(True))
    )
    # the same day and type: the more severe (then the smaller fingerprint) explains the other
    same_day_sibling = (pl.col("_e_first") == pl.col("partition_date")) & (
        pl.col("_e_type") == pl.col("type")
    )
    stronger = (pl.col("_e_severity") > pl.col("_severity")) | (
        (pl.col("_e_severity") == pl.col("_severity"))
        & (pl.col("_e_fingerprint") < pl.col("fingerprint"))
    )
    severity_ok = (
        pl.when(same_day_sibling)
        .then(stronger)
        .when(pl.col("_weaker_only"))
        .then(pl.col("_e_severity") >= pl.col("_severity"))
        .otherwise(pl.lit(True))
    )
    found = (
        pairs.filter(
            (subject_ok & severity_ok & (~pl.col("_falling_only") | pl.col("_falling"))).fill_null(
                False
            )
        )
        .sort("_row", "_e_first", "_e_fingerprint")
        .group_by("_row", maintain_order=True)
        .agg(
            pl.concat_str([pl.col("_e_type").first(), pl.col("_e_subject").first()], separator=" ")
            .str.strip_chars()
            .alias("echo_of")
        )
    )
    if found.height == 0:
        return out
    return out.scatter(found["_row"], found["echo_of"])

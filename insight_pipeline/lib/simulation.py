"""Simulated CSMs for the feedback-loop simulation (`insight-pipeline simulate`): pure logic.

Each simulated CSM has hidden tastes: a probability, per insight type, that they find an insight
of that type relevant. Tastes come from a few archetypes (the renewals-minded CSM who ignores
peer benchmarks, the growth-minded one who dismisses most risk noise, ...) with per-type noise,
so preferences are mostly per category, as real teams' are, but not exactly. Whatever their
archetype, every CSM acts on a critical risk (a champion leaving, a silent account, a large
usage drop): the point of the simulation is that learning their dislikes must not cost those.

A CSM reads what they are pushed each day and reacts like a person:

- 10% of items are left untouched;
- a relevant item is actioned (took_action 55%, helpful 20%), snoozed for 3-7 days (15%), or
  dismissed as already_knew (10%); a snoozed item that comes back is actioned or dismissed;
- an irrelevant item is dismissed as not_relevant (90%) or without a reason (10%).

The driver (insight_pipeline/simulation.py) runs the real pipeline day by day and writes these
reactions through `InsightStore.record_action`, the API's own write path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import polars as pl

from insight_pipeline.lib.ranking.quality import quality_metrics
from insight_pipeline.lib.signals import CATEGORY_OF_TYPE

ARCHETYPES: dict[str, dict[str, float]] = {
    # renewals-minded: lives by risks and renewal timing; peer benchmarks and upsell are noise
    "renewals": {
        "risk": 0.9,
        "timing": 0.9,
        "engagement": 0.8,
        "usage": 0.6,
        "opportunity": 0.15,
        "benchmark": 0.1,
    },
    # growth-minded: adoption and expansion; dismisses timing nudges and most risk noise
    "growth": {
        "opportunity": 0.9,
        "usage": 0.9,
        "benchmark": 0.8,
        "engagement": 0.6,
        "timing": 0.15,
        "risk": 0.2,
    },
    # relationship-minded: people and meetings; product telemetry is not their language
    "relationship": {
        "engagement": 0.9,
        "risk": 0.85,
        "timing": 0.85,
        "opportunity": 0.6,
        "usage": 0.2,
        "benchmark": 0.1,
    },
    # analyst: numbers and peers; calendar nudges and meeting counts are noise
    "analyst": {
        "benchmark": 0.9,
        "usage": 0.9,
        "risk": 0.85,
        "opportunity": 0.7,
        "engagement": 0.2,
        "timing": 0.1,
    },
}
"""Hidden relevance by category of each archetype: each CSM dismisses a couple of categories
as not relevant and acts on the others (the team is built from these, with per-type noise)."""
CRITICAL_RELEVANCE = 0.95
"""Every CSM finds a critical risk relevant this often, whatever their archetype."""
TYPE_NOISE = 0.08
"""Standard deviation of a type's relevance around its category's (per CSM)."""
IGNORE_RATE = 0.10
REACTION_HOUR = time(10, 0)
"""Simulated CSMs react at 10:00 UTC on the day they are pushed an item (the next day's
partition, run after midnight, sees it; the same day's does not)."""

CRITICAL_TYPES = ("champion_left", "silent_account", "usage_drop")
CRITICAL_DROP_MAGNITUDE = 0.4
"""A planted usage_drop is a critical risk when usage falls to 40% or less of normal."""
PUSH_WINDOW_DAYS = 7


@dataclass(frozen=True)
class Reaction:
    """One action of a simulated CSM, as `InsightStore.record_action` takes it."""

    insight_id: str
    user_id: str
    action: str
    feedback: str | None
    snooze_until: datetime | None
    at: datetime


def make_team(user_ids: list[str], seed: int) -> pl.DataFrame:
    """Hidden tastes: user_id, archetype, type, relevance (one row per CSM and type)."""
    rng = np.random.default_rng(seed)
    names = list(ARCHETYPES)
    order = rng.permutation(len(user_ids))
    types = list(CATEGORY_OF_TYPE)
    rows: dict[str, list[Any]] = {"user_id": [], "archetype": [], "type": [], "relevance": []}
    for position, user in zip(order, sorted(user_ids), strict=True):
        archetype = names[int(position) % len(names)]
        base = np.array([ARCHETYPES[archetype].get(CATEGORY_OF_TYPE[t], 0.5) for t in types])
        noisy = np.clip(base + rng.normal(0.0, TYPE_NOISE, len(types)), 0.02, 0.98)
        rows["user_id"] += [user] * len(types)
        rows["archetype"] += [archetype] * len(types)
        rows["type"] += types
        rows["relevance"] += noisy.round(3).tolist()
    return pl.DataFrame(rows)


def react(
    pushed: pl.DataFrame, team: pl.DataFrame, day: date, rng: np.random.Generator
) -> list[Reaction]:
    """The reactions of the team to what each CSM was pushed on `day` (store.pushed_insights:
    id, user_id, type, status, score_parts ...). Drawn in the frame's order, so a seed replays."""
    if pushed.height == 0:
        return []
    frame = (
        pushed.join(team, on=["user_id", "type"], how="left", maintain_order="left")
        .with_columns(
            pl.col("score_parts")
            .str.json_path_match("$.critical")
            .eq("true")
            .fill_null(False)
            .alias("critical")
        )
        .with_columns(
            pl.when(pl.col("critical"))
            .then(pl.max_horizontal("relevance", pl.lit(CRITICAL_RELEVANCE)))
            .otherwise(pl.col("relevance").fill_null(0.5))
            .alias("relevance")
        )
    )
    n = frame.height
    ignored = rng.random(n) < IGNORE_RATE
    relevant = rng.random(n) < frame["relevance"].to_numpy()
    kind = rng.random(n)
    snooze_days = rng.integers(3, 8, n)
    resurfacing = (frame["status"] == "snoozed").to_numpy()
    at = datetime.combine(day, REACTION_HOUR, tzinfo=UTC)
    reactions = []
    for i, row in enumerate(frame.select("id", "user_id").iter_rows()):
        if ignored[i]:
            continue
        action, feedback, until = _choice(bool(relevant[i]), float(kind[i]), bool(resurfacing[i]))
        when = at + timedelta(seconds=i)
        snooze = when + timedelta(days=int(snooze_days[i])) if until else None
        reactions.append(Reaction(row[0], row[1], action, feedback, snooze, when))
    return reactions


def _choice(relevant: bool, u: float, resurfacing: bool) -> tuple[str, str | None, bool]:
    """(action, feedback, snoozed?) of one reaction; a resurfacing item is not snoozed again."""
    if not relevant:
        return ("dismiss", "not_relevant", False) if u < 0.9 else ("dismiss", None, False)
    if u < 0.55:
        return "actioned", "took_action", False
    if u < 0.75:
        return "actioned", "helpful", False
    if u < 0.90:
        return ("actioned", "took_action", False) if resurfacing else ("snooze", None, True)
    return "dismiss", "already_knew", False


def weekly_quality(events: pl.DataFrame, first: date, last: date) -> pl.DataFrame:
    """Relevance and action rates per simulated week, with the definitions of the quality asset.
    Weeks are counted back from `last`, so the last week is always whole (the first may be
    short when the range is not whole weeks)."""
    n_weeks = -(-((last - first).days + 1) // 7)
    rows = []
    for week in range(1, n_weeks + 1):
        end = last - timedelta(days=7 * (n_weeks - week))
        start = max(first, end - timedelta(days=6))
        overall = quality_metrics(events, end, end, windows=((end - start).days + 1,)).filter(
            pl.col("scope") == "overall"
        )
        rows.append(
            {
                "week": week,
                "first_day": start,
                "last_day": end,
                "acted": int(overall["acted"][0]),
                "relevance": overall["relevance_rate"][0],
                "action": overall["action_rate"][0],
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "week": pl.Int64,
            "first_day": pl.Date,
            "last_day": pl.Date,
            "acted": pl.Int64,
            "relevance": pl.Float64,
            "action": pl.Float64,
        },
    )


def critical_recall(
    truth: pl.DataFrame,
    pushed: pl.DataFrame,
    first: date,
    last: date,
    silent_days: int,
) -> tuple[float | None, int, int]:
    """(recall, planted, pushed in time) of the planted critical risks that start in
    [first, last - 7]: champion_left, silent_account, usage_drop with magnitude <= 0.4.

    One counts as pushed when an insight of its customer, type (and subject: metric or contact)
    was pushed to the CSM within 7 days of the day it could first be seen: its start, or for
    silent_account its start + `silent_days` (silence must last that long to exist).
    `pushed` is the log of what CSMs were pushed: id, customer_id, type, subject, day.
    """
    lag = pl.when(pl.col("type") == "silent_account").then(silent_days).otherwise(0)
    planted = (
        truth.with_columns(
            pl.col("start_date").cast(pl.Date), pl.col("subject").fill_null("").cast(pl.String)
        )
        .filter(
            pl.col("type").is_in(list(CRITICAL_TYPES))
            & ((pl.col("type") != "usage_drop") | (pl.col("magnitude") <= CRITICAL_DROP_MAGNITUDE))
            & pl.col("start_date").is_between(first, last - timedelta(days=PUSH_WINDOW_DAYS))
        )
        .with_columns((pl.col("start_date") + pl.duration(days=lag)).alias("visible_from"))
        .filter(pl.col("visible_from") <= last - timedelta(days=PUSH_WINDOW_DAYS))
        .with_row_index("planted_id")
    )
    if planted.height == 0:
        return None, 0, 0
    matched = planted.join(
        pushed.select("customer_id", "type", pl.col("subject").fill_null(""), "day"),
        on=["customer_id", "type"],
        how="inner",
        suffix="_pushed",
    ).filter(
        ((pl.col("type") == "silent_account") | (pl.col("subject") == pl.col("subject_pushed")))
        & pl.col("day").is_between(
            pl.col("start_date"), pl.col("visible_from") + pl.duration(days=PUSH_WINDOW_DAYS)
        )
    )
    hits = matched["planted_id"].n_unique()
    return hits / planted.height, planted.height, hits

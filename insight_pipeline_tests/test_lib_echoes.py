"""Echoes: a new insight that repeats what an open insight on the same account says ranks
below news, is not critical and names what it repeats; what is news stays news; a range decides
exactly what day-by-day runs decide."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta

import polars as pl
import pytest

from insight_pipeline.lib.ranking.episodes import plan_episodes
from insight_pipeline.lib.ranking.scoring import score_insights
from insight_pipeline.lib.settings import RankingSettings
from insight_pipeline.lib.store import EPISODE_SCHEMA

S = RankingSettings()
D0 = date(2026, 3, 2)
CATEGORY = {
    "usage_drop": "usage",
    "usage_pattern_change": "usage",
    "adoption_trend": "usage",
    "declining_usage": "risk",
    "silent_account": "risk",
    "going_dark": "engagement",
    "qbr_due": "timing",
}
STORE = pl.DataFrame(schema={k: v for k, v in EPISODE_SCHEMA.items() if k != "expires_at"})


def row(
    kind: str,
    subject: str = "",
    day: int = 0,
    severity: float = 0.8,
    customer: str = "C1",
    change_pct: float | None = None,
) -> dict[str, object]:
    return {
        "customer_id": customer,
        "user_id": "u1",
        "type": kind,
        "subject": subject,
        "category": CATEGORY[kind],
        "fingerprint": f"{customer}|{kind}|{subject}",
        "partition_date": D0 + timedelta(days=day),
        "severity": severity,
        "confidence": 0.8,
        "arr_percentile": 0.5,
        "days_to_renewal": 200,
        "facts": json.dumps({"change_pct": change_pct}),
    }


def scored(rows: list[dict[str, object]], settings: RankingSettings = S) -> pl.DataFrame:
    return score_insights(pl.DataFrame(rows), settings)


def apply(store: pl.DataFrame, new: pl.DataFrame, ext: pl.DataFrame) -> pl.DataFrame:
    """The store after a run's plan: new episodes added, continued ones last seen later."""
    added = new.select(
        "id",
        "fingerprint",
        "partition_date",
        "last_seen_date",
        pl.lit("new").alias("status"),
        "customer_id",
        "category",
        "type",
        "subject",
        "score_parts",
    )
    out = pl.concat([store, added.cast(STORE.schema)])
    if ext.height:
        out = (
            out.join(ext.select("id", pl.col("last_seen_date").alias("_ext")), on="id", how="left")
            .with_columns(pl.max_horizontal("last_seen_date", "_ext").alias("last_seen_date"))
            .drop("_ext")
        )
    return out


def by_type(new: pl.DataFrame) -> dict[str, dict[str, object]]:
    return {
        f"{r['type']} {r['subject']}".strip(): r
        for r in new.with_columns(
            pl.col("score_parts").str.json_path_match("$.echo_of").alias("echo")
        ).iter_rows(named=True)
    }


def plan_days(store: pl.DataFrame, rows: list[dict[str, object]]) -> pl.DataFrame:
    new, ext = plan_episodes(scored(rows), store, S)
    return apply(store, new, ext)


def test_stopped_usage_is_told_once_and_its_echoes_rank_below_news() -> None:
    """An account's usage stops: drops on three metrics the same day, weeks later declines,
    pattern changes, a silent account and going dark. Each later insight repeats an open one."""
    store = plan_days(
        STORE,
        [
            row("usage_drop", "logins", 0, 1.0),
            row("usage_drop", "events", 0, 1.0),
            row("usage_drop", "dau", 0, 0.7),
            row("qbr_due", "2026-06-01", 0, 0.6),
        ],
    )
    first = by_type(store.filter(pl.col("partition_date") == D0))
    lead = first["usage_drop events"]  # the most severe; the tie broken by fingerprint
    assert json.loads(lead["score_parts"])["echo_of"] is None
    assert json.loads(first["usage_drop logins"]["score_parts"])["echo_of"] == "usage_drop events"
    assert json.loads(first["usage_drop dau"]["score_parts"])["echo_of"] == "usage_drop events"
    assert json.loads(first["qbr_due 2026-06-01"]["score_parts"])["echo_of"] is None
    # the drops are seen for 10 days, then the weekly tests and the silence follow
    for day in range(1, 11):
        store = plan_days(store, [row("usage_drop", m, day, 1.0) for m in ("logins", "events")])
    store = plan_days(store, [row("silent_account", "", 12, 0.7)])
    new, _ = plan_episodes(
        scored(
            [
                row("declining_usage", "logins", 20, 1.0),
                row("usage_pattern_change", "events", 20, 1.0, change_pct=-100),
                row("going_dark", "", 20, 0.9),
                row("declining_usage", "logins", 20, 1.0, customer="C2"),
            ]
        ),
        store,
        S,
    )
    later = by_type(new.filter(pl.col("customer_id") == "C1"))
    assert later["declining_usage logins"]["echo"] == "usage_drop logins"
    assert later["usage_pattern_change events"]["echo"] == "usage_drop events"
    assert later["going_dark"]["echo"] == "silent_account"
    other = new.filter(pl.col("customer_id") == "C2")  # another account's drop explains nothing
    assert other["score_parts"].str.json_path_match("$.echo_of").to_list() == [None]
    # an echo scores echo_factor of what it would alone, and is never critical
    alone, _ = plan_episodes(scored([row("declining_usage", "logins", 20, 1.0)]), STORE, S)
    echo = later["declining_usage logins"]
    assert alone["critical"][0] and not echo["critical"]
    assert echo["score"] == pytest.approx(S.echo_factor * alone["score"][0])
    assert echo["priority"] != "high" and alone["priority"][0] == "high"
    # the news of the day (the other account's decline) is pushed first
    assert other["rank_in_day"][0] == 1


def test_what_is_news_stays_news() -> None:
    store = plan_days(
        STORE, [row("usage_drop", "logins", 0, 0.5), row("usage_drop", "events", 0, 0.9)]
    )
    news = [
        [row("declining_usage", "logins", 5, 0.9)],  # a worse fall than the drop raised
        [row("usage_pattern_change", "events", 5, 0.6, change_pct=40)],  # a recovery
        [row("declining_usage", "dau", 5, 0.6)],  # a metric whose drop is not on record
        [row("silent_account", "", 5, 0.7)],  # silence is more than a drop in usage
    ]
    for rows in news:
        new, _ = plan_episodes(scored(rows), store, S)
        assert new["score_parts"].str.json_path_match("$.echo_of").to_list() == [None], rows
    # and a going_dark raised before the silence does not echo it (silence adds the usage)
    both, _ = plan_episodes(
        scored([row("going_dark", "", 0, 0.9), row("silent_account", "", 0, 0.7)]), STORE, S
    )
    echoes = dict(
        zip(both["type"], both["score_parts"].str.json_path_match("$.echo_of"), strict=True)
    )
    assert echoes == {"going_dark": "silent_account", "silent_account": None}


def test_an_explaining_insight_counts_while_it_is_open() -> None:
    store = plan_days(STORE, [row("usage_drop", "logins", 0, 1.0)])
    ttl = S.ttl_days["usage"]

    def echo_on(day: int, store: pl.DataFrame) -> str | None:
        new, _ = plan_episodes(scored([row("declining_usage", "logins", day, 0.9)]), store, S)
        return new["score_parts"].str.json_path_match("$.echo_of")[0]

    assert echo_on(ttl, store) == "usage_drop logins"  # open: last seen day 0, TTL 14
    assert echo_on(ttl + 1, store) is None  # expired
    # a dismissed insight explains nothing: the CSM set it aside, it carries no alarm
    dismissed = store.with_columns(pl.lit("dismissed").alias("status"))
    assert echo_on(1, dismissed) is None
    # an expired episode of a pattern beside its open one: the open one explains
    again = plan_days(store, [row("usage_drop", "logins", ttl + 20, 1.0)])
    assert again.filter(pl.col("type") == "usage_drop").height == 2
    assert echo_on(ttl + 25, again) == "usage_drop logins"
    # an explaining insight that began after the echo's day does not explain it
    late = plan_days(STORE, [row("usage_drop", "logins", 3, 1.0)])
    assert echo_on(2, late) is None


@pytest.mark.parametrize("range_from", [0, 6, 19])
def test_a_range_decides_echoes_exactly_as_day_by_day_runs(range_from: int) -> None:
    """Days before `range_from` run one by one, the rest as one range (from 6: the logins drop
    is stored and continued within the range, so its open window is the range's)."""
    days = {
        0: [row("usage_drop", "logins", 0, 0.9), row("usage_drop", "dau", 0, 0.9)],
        1: [row("usage_drop", "logins", 1, 0.9), row("usage_drop", "events", 1, 0.95)],
        6: [row("usage_drop", "logins", 6, 0.9)],
        # a gap within the TTL keeps the drop open on days it was not seen
        18: [row("usage_drop", "logins", 18, 0.9), row("declining_usage", "logins", 18, 0.8)],
        19: [row("usage_pattern_change", "dau", 19, 0.8, change_pct=-50)],
        30: [row("silent_account", "", 30, 0.7), row("going_dark", "", 30, 0.6)],
        33: [row("declining_usage", "events", 33, 0.9)],
        50: [row("declining_usage", "dau", 50, 0.9)],
    }
    ranged = STORE
    for day, rows in days.items():
        if day < range_from:
            ranged = plan_days(ranged, rows)
    rest = [r for day, rows in days.items() if day >= range_from for r in rows]
    ranged_new, ranged_ext = plan_episodes(scored(rest), ranged, S)
    ranged = apply(ranged, ranged_new, ranged_ext)
    daily = STORE
    for rows in days.values():
        daily = plan_days(daily, rows)
    columns = ["id", "fingerprint", "partition_date", "last_seen_date", "score_parts"]
    assert ranged.sort("id").select(columns).equals(daily.sort("id").select(columns))
    echoes = ranged.sort("partition_date", "fingerprint").select(
        "fingerprint", pl.col("score_parts").str.json_path_match("$.echo_of")
    )
    assert echoes.rows() == [
        ("C1|usage_drop|dau", None),  # same severity: the smaller fingerprint leads
        ("C1|usage_drop|logins", "usage_drop dau"),
        ("C1|usage_drop|events", None),  # more severe than the open drops: news
        ("C1|declining_usage|logins", "usage_drop logins"),
        ("C1|usage_pattern_change|dau", None),  # dau's drop, last seen on day 0, closed on 14
        ("C1|going_dark|", "silent_account"),
        ("C1|silent_account|", None),
        ("C1|declining_usage|events", "silent_account"),
        ("C1|declining_usage|dau", "silent_account"),
    ]


def test_echo_factor_one_turns_echoes_off_and_bad_values_are_refused() -> None:
    off = replace(S, echo_factor=1.0)
    rows = [row("usage_drop", "logins", 0, 1.0), row("usage_drop", "events", 0, 1.0)]
    new, _ = plan_episodes(score_insights(pl.DataFrame(rows), off), STORE, off)
    assert new["critical"].all()
    assert new["score_parts"].str.json_path_match("$.echo_of").null_count() == 2
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"ranking\.echo_factor"):
            RankingSettings(echo_factor=bad)

"""Ranking against a real store (DuckDB and PostgreSQL) and as Dagster assets: a dismissal made
through `record_action` (the API's path) folds the pattern for the cooldown and no longer; a
snoozed insight comes back on its day; expired insights leave the feed and the pushes; the daily
cap reaches the store; quality metrics round-trip; `user_preferences` and `insight_quality`
materialise from the feedback history, a range learning exactly what its days learn."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from insight_pipeline.defs.ranking.assets import insight_quality, user_preferences
from insight_pipeline.defs.resources import PolarsParquetIOManager, SettingsResource, StoreResource
from insight_pipeline.lib.ranking.episodes import earliest_relevant_day, plan_episodes
from insight_pipeline.lib.ranking.preferences import PREFERENCE_SCHEMA
from insight_pipeline.lib.ranking.quality import quality_metrics
from insight_pipeline.lib.ranking.scoring import score_insights
from insight_pipeline.lib.settings import RankingSettings
from insight_pipeline.lib.store import UPSERT_SCHEMA, InsightStore

S = RankingSettings()
D0 = date(2026, 3, 2)
WRITTEN = [*UPSERT_SCHEMA, "pushed", "rank_in_day"]


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def candidates(day: date, customers: list[str], **values: object) -> pl.DataFrame:
    """Day-level candidates as insight_candidates makes them (scored, the score's explanation
    left to the new episodes), for one CSM."""
    rows = [
        {
            "customer_id": c,
            "customer_name": f"Customer {c}",
            "user_id": "u1",
            "type": "usage_drop",
            "category": "usage",
            "subject": "dau",
            "partition_date": day,
            "severity": 0.5,
            "confidence": 0.6,
            "arr_percentile": 0.5,
            "days_to_renewal": 200,
            **values,
        }
        for c in customers
    ]
    frame = pl.DataFrame(rows).with_columns(
        pl.concat_str(["customer_id", "type", "subject"], separator="|").alias("fingerprint")
    )
    return score_insights(frame, S, explain=False)


def run_day(store: InsightStore, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The insights asset + sink for one day, narration stubbed: plan, then write."""
    day = frame["partition_date"].min()
    existing = store.load_episodes(since=earliest_relevant_day(day, S))
    new, extensions = plan_episodes(frame, existing, S)
    new = new.with_columns(
        pl.lit("A title").alias("title"),
        pl.lit("A summary.").alias("summary"),
        pl.lit('[{"metric": "dau", "value": 1.0, "comparison": "x", "source": "t"}]').alias(
            "evidence"
        ),
        pl.lit("So what.").alias("so_what"),
        pl.lit('{"type": "review", "description": "d", "quick_action_id": "r"}').alias(
            "recommended_action"
        ),
    )
    store.write_insights(new.select(WRITTEN), extensions)
    return new, extensions


def test_dismissal_cooldown_works_end_to_end_through_record_action(store: InsightStore) -> None:
    new, _ = run_day(store, candidates(D0, ["C1", "C2"]))
    dismissed = new.filter(pl.col("customer_id") == "C1")["id"][0]
    store.record_action(dismissed, "u1", "dismiss", "not_relevant", at=at(D0))
    # the same patterns 20 days later: C1's was dismissed (cooldown 30 days), C2's expired
    # (usage TTL 14 days) and is a new episode
    day = D0 + timedelta(days=20)
    new, extensions = run_day(store, candidates(day, ["C1", "C2"]))
    assert extensions["id"].to_list() == [dismissed]
    assert new["customer_id"].to_list() == ["C2"]
    assert store.get_insights([dismissed])["status"][0] == "dismissed"
    # 31 days after it was last seen the cooldown is over: a new episode, status new
    later = day + timedelta(days=31)
    new, extensions = run_day(store, candidates(later, ["C1"]))
    assert extensions.height == 0 and new.height == 1
    assert new["id"][0] != dismissed
    assert store.get_insights([new["id"][0]])["status"][0] == "new"
    history = store.feedback_events()
    assert history.select("insight_id", "action", "feedback", "insight_type").row(0) == (
        dismissed,
        "dismiss",
        "not_relevant",
        "usage_drop",
    )


def test_snoozed_insight_comes_back_on_its_day(store: InsightStore) -> None:
    new, _ = run_day(store, candidates(D0, ["C1"]))
    key = new["id"][0]
    back = D0 + timedelta(days=3)
    store.record_action(key, "u1", "snooze", snooze_until=at(back, 8), at=at(D0, 10))
    feed = store.query_insights
    assert key not in feed(as_of=at(back - timedelta(days=1))).get_column("id").to_list()
    assert key in feed(as_of=at(back, 9)).get_column("id").to_list()
    assert store.pushed_insights(back - timedelta(days=1), as_of=at(back, 9)).height == 0
    resurfaced = store.pushed_insights(back, as_of=at(back, 9))
    assert resurfaced["id"].to_list() == [key] and resurfaced["status"][0] == "snoozed"


def test_expired_insights_leave_the_feed_and_the_pushes(store: InsightStore) -> None:
    new, _ = run_day(store, candidates(D0, ["C1"]))
    expires = new["expires_at"][0]
    assert expires == at(D0 + timedelta(days=S.ttl_days["usage"]), 0)
    before = expires - timedelta(hours=1)
    after = expires + timedelta(hours=1)
    assert store.query_insights(as_of=before).height == 1
    assert store.query_insights(as_of=after).height == 0
    assert store.pushed_insights(D0, as_of=before).height == 1
    assert store.pushed_insights(D0, as_of=after).height == 0


def test_daily_cap_reaches_the_store(store: InsightStore) -> None:
    customers = [f"C{i:02d}" for i in range(14)]
    frame = candidates(D0, customers).with_columns(
        (pl.col("severity") + pl.int_range(pl.len()) * 0.01).alias("severity")
    )
    run_day(store, score_insights(frame.drop("score", "priority"), S, explain=False))
    pushed = store.pushed_insights(D0, as_of=at(D0))
    assert pushed.height == S.daily_cap
    assert pushed["rank_in_day"].to_list() == list(range(1, S.daily_cap + 1))
    assert pushed["score"].to_list() == sorted(pushed["score"].to_list(), reverse=True)
    # the rest are kept: still in the feed, just not pushed
    assert store.query_insights(as_of=at(D0), limit=100).height == len(customers)
    # an upsert without ranking's columns (an older writer) is pushed, unranked
    day = D0 + timedelta(days=1)
    new, _ = run_day(store, candidates(day, ["Z1"]))
    store.write_insights(new.select(list(UPSERT_SCHEMA)), pl.DataFrame())
    legacy = store.pushed_insights(day, as_of=at(day))
    assert legacy["id"].to_list() == new["id"].to_list()
    assert legacy["rank_in_day"].to_list() == [None]


def test_quality_metrics_round_trip_and_rewrite_idempotently(store: InsightStore) -> None:
    run_day(store, candidates(D0, ["C1", "C2", "C3"]))
    ids = store.query_insights(as_of=at(D0))["id"].to_list()
    store.record_action(ids[0], "u1", "actioned", "took_action", at=at(D0))
    store.record_action(ids[1], "u1", "dismiss", "not_relevant", at=at(D0))
    store.record_action(ids[2], "u1", "dismiss", "already_knew", at=at(D0 + timedelta(days=1)))
    last = D0 + timedelta(days=2)
    metrics = quality_metrics(store.feedback_events(), D0, last, windows=(1, 28))
    assert store.write_quality(metrics, D0, last) == metrics.height
    assert store.write_quality(metrics, D0, last) == metrics.height  # replaced, not doubled
    back = store.quality(D0, last)
    assert back.height == metrics.height
    rolling = store.quality(last, last, window_days=28, scope="overall")
    assert rolling.height == 1
    assert rolling["acted"][0] == 3
    assert rolling["relevance_rate"][0] == pytest.approx(2 / 3)
    assert rolling["action_rate"][0] == pytest.approx(1 / 3)
    assert store.quality(D0, D0, scope="user")["scope_key"].to_list() == ["u1", "u1"]


# ------------------------------------------------------------------------------ dagster


def resources(url: str, work: Path) -> dict[str, object]:
    return {
        "store": StoreResource(url=url),
        "settings": SettingsResource(),
        "io_manager": PolarsParquetIOManager(base_dir=str(work / "intermediate")),
    }


def materialise(
    assets: list, res: dict[str, object], first: date, last: date
) -> dg.ExecuteInProcessResult:
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, resources=res, tags=tags, instance=instance)
    assert result.success
    return result


def test_ranking_assets_learn_from_feedback_without_look_ahead(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'insights.duckdb'}"
    store = InsightStore(url)
    store.migrate()
    try:
        new, _ = run_day(store, candidates(D0, ["C1", "C2", "C3", "C4"]))
        for key in new["id"].to_list()[:3]:
            store.record_action(key, "u1", "dismiss", "not_relevant", at=at(D0, 15))
        store.record_action(
            new["id"][3], "u1", "actioned", "took_action", at=at(D0 + timedelta(days=1))
        )
    finally:
        store.dispose()
    first, last = D0, D0 + timedelta(days=3)
    result = materialise(
        [user_preferences, insight_quality], resources(url, tmp_path / "range"), first, last
    )
    prefs = result.output_for_node("user_preferences")
    assert prefs.schema == pl.Schema(PREFERENCE_SCHEMA)
    u1 = prefs.filter((pl.col("user_id") == "u1") & (pl.col("type") == "usage_drop"))
    by_day = dict(zip(u1["partition_date"].to_list(), u1["preference"].to_list(), strict=True))
    assert D0 not in by_day  # nothing was known on D0 itself
    assert by_day[D0 + timedelta(days=1)] < 0.5  # three dismissals on D0
    assert by_day[D0 + timedelta(days=2)] > by_day[D0 + timedelta(days=1)]  # then an action
    # a range run learns exactly what day-by-day runs learn
    for offset in range(4):
        day = first + timedelta(days=offset)
        single = materialise([user_preferences], resources(url, tmp_path / f"d{offset}"), day, day)
        assert single.output_for_node("user_preferences").equals(
            prefs.filter(pl.col("partition_date") == day)
        )
    metadata = result.asset_materializations_for_node("insight_quality")[-1].metadata
    assert metadata["acted_on_28d"].value == 4
    assert metadata["relevance_28d"].value == pytest.approx(0.25)
    store = InsightStore(url)
    try:
        assert store.quality(last, last, window_days=28, scope="overall")["acted"][0] == 4
    finally:
        store.dispose()
    parts = json.loads(new["score_parts"][0])
    assert parts["preference"] == 0.5 and parts["critical"] is False

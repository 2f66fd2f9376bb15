"""The team assets in Dagster: they join the graph (a 27-day look-back on insight_candidates,
group team, checks on the pattern plan); on generated data a range run writes exactly the team
insights and rollups that day-by-day runs write, and re-running changes nothing; and the
rollups the asset stores equal direct SQL counts over the insights and feedback tables, on
DuckDB and on the real PostgreSQL."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from sqlalchemy import create_engine, text

from insight_pipeline.definitions import ALL_ASSETS
from insight_pipeline.defs.resources import (
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
)
from insight_pipeline.defs.sources.assets import accounts
from insight_pipeline.defs.team import assets as team
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.lib.team import ROLLUP_COLUMNS
from insight_pipeline.sample import generate_sample

TEAM_ASSETS = dg.load_assets_from_modules([team])
_LOADED = {k for a in ALL_ASSETS for k in a.keys}
#: The whole graph with the team assets (definitions.py may or may not list them yet).
EVERYTHING = [*ALL_ASSETS, *(a for a in TEAM_ASSETS if not set(a.keys) & _LOADED)]
UPSTREAM = dg.AssetSelection.all() - dg.AssetSelection.groups("team")
END = date(2026, 6, 30)
#: So loose that a small generated sample raises team insights to compare (the defaults raise
#: none on 150 accounts of independent patterns - as they should).
LOOSE = {
    "team": {"fdr": 1.0, "min_rise": 0.0, "min_lift": 1.0, "min_accounts": 2},
}


def tags(first: date, last: date) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }


def resources(source: Path, db_url: str, work: Path, overrides: dict | None = None) -> dict:
    return {
        "source": SourceResource(location=str(source)),
        "store": StoreResource(url=db_url),
        "narrator": NarratorResource(use_claude=False),
        "settings": SettingsResource(overrides=overrides or {}),
        "io_manager": PolarsParquetIOManager(base_dir=str(work / "intermediate")),
    }


def test_the_team_assets_join_the_graph() -> None:
    defs = dg.Definitions(
        assets=EVERYTHING,
        resources=resources(Path("unused"), "duckdb:///:memory:", Path("unused")),
    )
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"cross_account_patterns", "team_insights_table", "team_rollups"} <= keys
    for name in ("cross_account_patterns", "team_insights_table", "team_rollups"):
        assert graph.get(dg.AssetKey(name)).group_name == "team"
    node = graph.get(dg.AssetKey("cross_account_patterns"))
    mapping = node.partition_mappings[dg.AssetKey("insight_candidates")]
    assert isinstance(mapping, dg.TimeWindowPartitionMapping)
    assert mapping.start_offset == -27 and mapping.end_offset == 0
    pattern_key = dg.AssetKey("cross_account_patterns")
    checks = {k.name for k in graph.asset_check_keys if k.asset_key == pattern_key}
    assert "valid_category_type_priority" in checks
    assert dg.AssetKey("insights_table") in graph.get(dg.AssetKey("team_rollups")).parent_keys


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("team-sample")
    generate_sample(out, accounts=150, days=200, seed=11, end_date=END)
    return out


def team_state(db_url: str, first: date, last: date) -> tuple[pl.DataFrame, pl.DataFrame]:
    store = InsightStore(db_url)
    try:
        insights = store.get_insights().filter(pl.col("category") == "team").sort("id")
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        rollups = pl.concat(
            [
                store.team_rollups(g, day=d)
                for g in ("csm", "manager", "segment", "total")
                for d in days
            ]
        )
        return insights, rollups
    finally:
        store.dispose()


def test_range_run_equals_day_by_day_and_reruns_change_nothing(
    sample_dir: Path, tmp_path: Path
) -> None:
    """Upstream materialised once; the team assets then run once over the range in one copy of
    the store and day by day in another: same team insights, same rollups."""
    first, last = END - timedelta(days=7), END
    base_url = f"duckdb:///{tmp_path / 'base.duckdb'}"
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            EVERYTHING,
            selection=UPSTREAM,
            resources=resources(sample_dir, base_url, tmp_path, LOOSE),
            tags=tags(first, last),
            instance=instance,
        )
        assert result.success
        for name in ("ranged", "daily"):
            shutil.copy(tmp_path / "base.duckdb", tmp_path / f"{name}.duckdb")
        ranged_url = f"duckdb:///{tmp_path / 'ranged.duckdb'}"
        daily_url = f"duckdb:///{tmp_path / 'daily.duckdb'}"
        ranged_res = resources(sample_dir, ranged_url, tmp_path, LOOSE)
        daily_res = resources(sample_dir, daily_url, tmp_path, LOOSE)
        run = dg.materialize(
            EVERYTHING,
            selection=dg.AssetSelection.groups("team"),
            resources=ranged_res,
            tags=tags(first, last),
            instance=instance,
        )
        assert run.success
        for offset in range(8):
            day = first + timedelta(days=offset)
            run = dg.materialize(
                EVERYTHING,
                selection=dg.AssetSelection.groups("team"),
                resources=daily_res,
                tags=tags(day, day),
                instance=instance,
            )
            assert run.success
        ranged, daily = team_state(ranged_url, first, last), team_state(daily_url, first, last)
        content = ["id", "fingerprint", "partition_date", "last_seen_date", "user_id", "score"]
        content += ["title", "summary", "evidence", "expires_at"]
        assert ranged[0].height > 0, "the loose settings should raise team insights"
        assert ranged[0].select(content).equals(daily[0].select(content))
        assert ranged[0]["customer_id"].null_count() == ranged[0].height
        assert ranged[1].height > 0 and ranged[1].equals(daily[1])

        again = dg.materialize(
            EVERYTHING,
            selection=dg.AssetSelection.groups("team"),
            resources=ranged_res,
            tags=tags(first, last),
            instance=instance,
        )
        assert again.success
        rerun = team_state(ranged_url, first, last)
        assert rerun[0].select(content).equals(ranged[0].select(content))
        assert rerun[1].equals(ranged[1])


# ---------------------------------------------------------------------------- vs direct SQL

D = date(2026, 6, 10)
USERS = [
    ("L", "Lee", "leader", None),
    ("M", "Mia", "manager", "L"),
    ("c1", "One", "csm", "M"),
    ("c2", "Two", "csm", "M"),
    ("c3", "Three", "csm", "L"),
]
CUSTOMERS = {  # id: (csm, segment, arr)
    "A": ("c1", "smb", 100_000.0),
    "B": ("c2", "smb", 50_000.0),
    "C": ("c3", "enterprise", 200_000.0),
    "E": ("c1", "enterprise", 10_000.0),
    "F": ("c2", "mid_market", 70_000.0),
}


def utc(day: date, hour: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def iid(key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"team-sql|{key}"))


# key, customer, category, type, priority, score, raised, expires
INSIGHTS: list[tuple[str, str | None, str, str, str, float, date, date | None]] = [
    ("i1", "A", "risk", "champion_left", "high", 0.8, date(2026, 6, 5), date(2026, 7, 5)),
    ("i2", "A", "usage", "usage_drop", "medium", 0.5, date(2026, 6, 8), date(2026, 6, 22)),
    ("i3", "B", "risk", "health_drop", "high", 0.9, date(2026, 6, 2), date(2026, 7, 2)),
    ("i4", "C", "risk", "silent_account", "high", 0.7, date(2026, 6, 3), date(2026, 7, 3)),
    ("i5", "C", "opportunity", "entitlement_limit", "low", 0.3, date(2026, 6, 1), date(2026, 7, 1)),
    ("i6", "E", "risk", "support_surge", "low", 0.2, date(2026, 5, 20), date(2026, 6, 10)),
    ("i7", "E", "timing", "qbr_due", "medium", 0.6, date(2026, 6, 6), date(2026, 7, 6)),
    ("i8", "B", "risk", "going_dark", "high", 0.9, date(2026, 6, 11), date(2026, 7, 11)),
    ("i9", "B", "opportunity", "referral_candidate", "medium", 0.5, date(2026, 6, 9), None),
    ("i10", "F", "usage", "usage_drop", "high", 0.75, date(2026, 6, 9), date(2026, 6, 23)),
    ("i11", "F", "risk", "detractor_nps", "medium", 0.45, date(2026, 6, 7), date(2026, 7, 7)),
    ("i12", "A", "opportunity", "case_study_candidate", "low", 0.25, date(2026, 5, 1), None),
    ("t1", None, "team", "cross_account_pattern", "high", 0.9, date(2026, 6, 9), None),
]
# key, action, feedback, at, snooze until
EVENTS: list[tuple[str, str, str | None, datetime, datetime | None]] = [
    ("i3", "dismiss", "not_relevant", utc(date(2026, 6, 9), 12), None),
    ("i4", "snooze", None, utc(date(2026, 6, 4), 9), utc(date(2026, 6, 20))),
    ("i5", "snooze", None, utc(date(2026, 6, 4), 9), utc(date(2026, 6, 8))),
    ("i7", "actioned", "took_action", utc(date(2026, 6, 7), 7), None),
    ("i9", "dismiss", "already_knew", utc(date(2026, 6, 12), 8), None),
    ("i10", "snooze", None, utc(date(2026, 6, 9), 10), utc(date(2026, 6, 9), 20)),
    ("i11", "snooze", None, utc(date(2026, 6, 8), 9), utc(date(2026, 6, 30))),
    ("i11", "actioned", "helpful", utc(date(2026, 6, 9), 12), None),
    ("t1", "dismiss", "not_relevant", utc(date(2026, 6, 9), 13), None),
]


def write_source(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        USERS,
        schema=["user_id", "name", "role", "manager_id"],
        orient="row",
    ).with_columns((pl.col("user_id") + "@example.com").alias("email")).write_csv(
        folder / "users.csv"
    )
    pl.DataFrame(
        [
            (
                cid,
                f"Customer {cid}",
                "software",
                seg,
                "NA",
                csm,
                arr,
                "pro",
                "2024-01-01",
                "2026-09-01",
                None,
            )
            for cid, (csm, seg, arr) in CUSTOMERS.items()
        ],
        schema=[
            "customer_id",
            "name",
            "industry",
            "segment",
            "region",
            "csm_user_id",
            "arr",
            "plan",
            "contract_start",
            "renewal_date",
            "churned_on",
        ],
        orient="row",
    ).write_csv(folder / "customers.csv")
    pl.DataFrame(
        {"customer_id": ["A"], "date": ["2026-06-01"], "metric": ["dau"], "value": [3.0]}
    ).write_csv(folder / "usage_daily.csv")


def seed_store(url: str) -> None:
    store = InsightStore(url)
    store.migrate()
    try:
        store.sync_users(
            pl.DataFrame(
                USERS, schema=["user_id", "name", "role", "manager_id"], orient="row"
            ).with_columns(pl.lit(None, pl.String).alias("email"))
        )
        rows = []
        for key, cid, category, kind, priority, score, raised, expires in INSIGHTS:
            owner = CUSTOMERS[cid][0] if cid else "M"
            rows.append(
                {
                    "id": iid(key),
                    "customer_id": cid,
                    "customer_name": cid,
                    "user_id": owner,
                    "partition_date": raised,
                    "last_seen_date": raised,
                    "category": category,
                    "type": kind,
                    "subject": "",
                    "priority": priority,
                    "score": score,
                    "title": f"{kind} {key}",
                    "summary": "s",
                    "evidence": "[]",
                    "so_what": None,
                    "recommended_action": None,
                    "fingerprint": f"{cid}|{kind}|{key}",
                    "score_parts": None,
                    "expires_at": utc(expires) if expires else None,
                }
            )
        frame = pl.DataFrame(rows, infer_schema_length=None).with_columns(
            pl.col("expires_at").cast(pl.Datetime("us", "UTC")),
            pl.col("customer_id", "so_what", "recommended_action", "score_parts").cast(pl.String),
        )
        store.write_insights(frame, pl.DataFrame())
        for key, action, feedback, at, until in EVENTS:
            store.record_action(iid(key), "c1", action, feedback, until, at=at)
    finally:
        store.dispose()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            # created_at is the sink's wall clock; pin it to 06:00 of the day raised
            for key, *_rest, raised, _expires in INSIGHTS:
                conn.execute(
                    text("update insights set created_at = :at where id = :id"),
                    {"at": utc(raised, 6), "id": iid(key)},
                )
            conn.execute(text("drop table if exists test_accounts"))
            conn.execute(
                text("create table test_accounts (customer_id text, segment text, arr float)")
            )
            for cid, (_csm, seg, arr) in CUSTOMERS.items():
                conn.execute(
                    text("insert into test_accounts values (:c, :s, :a)"),
                    {"c": cid, "s": seg, "a": arr},
                )
    finally:
        engine.dispose()


OPEN_AT = """
with last_event as (
    select f.insight_id, f.action, f.snoozed_until,
        row_number() over (partition by f.insight_id order by f.created_at desc) as rn
    from insight_feedback as f
    where f.created_at <= :t
),
open_i as (
    select i.*
    from insights as i
    left join last_event as e on e.insight_id = i.id and e.rn = 1
    where i.customer_id is not null
        and i.partition_date <= :d
        and (i.expires_at is null or i.expires_at > :t)
        and not (
            case
                when e.action is null then coalesce(i.actioned_at <= :t, false)
                else e.action in ('dismiss', 'actioned')
                    or (e.action = 'snooze' and e.snoozed_until > :t)
            end
        )
)
"""


def sql(url: str, query: str, **params: Any) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query), params)]
    finally:
        engine.dispose()


def test_rollups_equal_direct_sql_counts(store_url: str, tmp_path: Path) -> None:
    write_source(tmp_path / "source")
    seed_store(store_url)
    res = resources(tmp_path / "source", store_url, tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [accounts, team.team_rollups],
            resources=res,
            tags=tags(D - timedelta(days=1), D),
            instance=instance,
        )
        assert result.success
    store = InsightStore(store_url)
    try:
        for day in (D - timedelta(days=1), D):
            check_day(store, store_url, day)
    finally:
        store.dispose()


def check_day(store: InsightStore, url: str, day: date) -> None:
    t, t0 = utc(day + timedelta(days=1)), utc(day + timedelta(days=1)) - timedelta(days=28)
    stored = {
        g: {
            (r["scope_id"], r["group_key"]): r
            for r in store.team_rollups(g, day=day).iter_rows(named=True)
        }
        for g in ("csm", "manager", "segment", "total")
    }
    assert all(r["rollup_date"] == day for rows in stored.values() for r in rows.values())
    assert set(store.team_rollups("csm", day=day).columns) == set(ROLLUP_COLUMNS)

    per_csm = dict(
        sql(url, OPEN_AT + "select user_id, count(*) from open_i group by user_id", d=day, t=t)
    )
    for csm in ("c1", "c2", "c3"):
        assert stored["csm"][("*", csm)]["open_insights"] == per_csm.get(csm, 0), (day, csm)
    (team_m,) = sql(
        url, OPEN_AT + "select count(*) from open_i where user_id in ('M', 'c1', 'c2')", d=day, t=t
    )[0]
    assert stored["manager"][("*", "M")]["open_insights"] == team_m
    (everyone,) = sql(url, OPEN_AT + "select count(*) from open_i", d=day, t=t)[0]
    assert stored["total"][("*", "*")]["open_insights"] == everyone
    by_priority = dict(
        sql(url, OPEN_AT + "select priority, count(*) from open_i group by priority", d=day, t=t)
    )
    total = stored["total"][("*", "*")]
    for level in ("high", "medium", "low"):
        assert total[f"open_{level}"] == by_priority.get(level, 0)

    at_risk = dict(
        sql(
            url,
            OPEN_AT
            + """, risk as (
                select customer_id, max(score) as s from open_i
                where category = 'risk' or type in ('usage_drop', 'going_dark')
                group by customer_id
            )
            select a.segment, sum(a.arr * r.s) from risk as r
            join test_accounts as a on a.customer_id = r.customer_id
            group by a.segment""",
            d=day,
            t=t,
        )
    )
    for segment in ("smb", "enterprise", "mid_market"):
        got = stored["segment"][("*", segment)]["arr_at_risk"]
        assert got == pytest.approx(float(at_risk.get(segment) or 0.0)), (day, segment)
    (expansion,) = sql(
        url,
        OPEN_AT + "select coalesce(sum(a.arr), 0) from test_accounts as a where a.customer_id in"
        " (select customer_id from open_i where category = 'opportunity')",
        d=day,
        t=t,
    )[0]
    assert total["expansion_arr"] == pytest.approx(float(expansion))

    acted, relevant, actioned = sql(
        url,
        """
        with w as (
            select f.insight_id, f.action, f.feedback,
                row_number() over (partition by f.insight_id order by f.created_at desc) as rn
            from insight_feedback as f
            join insights as i on i.id = f.insight_id
            where i.customer_id is not null and f.created_at <= :t and f.created_at > :t0
        )
        select
            count(distinct insight_id),
            sum(case when rn = 1 and not (action = 'dismiss' and coalesce(feedback, '') =
                'not_relevant') then 1 else 0 end),
            count(distinct case when action = 'actioned' or feedback = 'took_action'
                then insight_id end)
        from w
        """,
        t=t,
        t0=t0,
    )[0]
    assert (total["acted"], total["relevant"], total["actioned"]) == (acted, relevant, actioned)
    hours = [
        float(h)
        for (h,) in sql(
            url,
            "select extract(epoch from (actioned_at - created_at)) / 3600.0 from insights "
            "where customer_id is not null and actioned_at <= :t and actioned_at > :t0",
            t=t,
            t0=t0,
        )
    ]
    assert total["actions_timed"] == len(hours)
    if hours:
        assert total["median_hours_to_action"] == pytest.approx(
            float(pl.Series(hours).clip(lower_bound=0).median()), abs=0.01
        )
    # the team insight (dismissed, no customer) is in none of these numbers
    assert everyone < len([i for i in INSIGHTS if i[1] is not None])

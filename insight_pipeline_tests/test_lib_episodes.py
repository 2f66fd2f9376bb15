"""Noise control at the sink: one open insight per fingerprint, continuation within the TTL,
dismissal cooldown, stable ids, and a range planned exactly as day-by-day runs would."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from insight_pipeline.lib.ranking.episodes import episode_id, episode_ids, plan_episodes
from insight_pipeline.lib.settings import RankingSettings

S = RankingSettings()
D0 = date(2026, 3, 1)
EMPTY = pl.DataFrame(
    schema={
        "id": pl.String,
        "fingerprint": pl.String,
        "partition_date": pl.Date,
        "last_seen_date": pl.Date,
        "status": pl.String,
    }
)


def candidates(fingerprint: str, offsets: list[int], category: str = "usage") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "fingerprint": [fingerprint] * len(offsets),
            "partition_date": [D0 + timedelta(days=o) for o in offsets],
            "category": [category] * len(offsets),
            "title": [f"day {o}" for o in offsets],
        }
    )


def apply(existing: pl.DataFrame, upserts: pl.DataFrame, ext: pl.DataFrame) -> pl.DataFrame:
    """What the store would hold after the write (greatest last_seen on extension)."""
    rows = {r["id"]: dict(r) for r in existing.iter_rows(named=True)}
    for r in upserts.iter_rows(named=True):
        old = rows.get(r["id"])
        rows[r["id"]] = {
            "id": r["id"],
            "fingerprint": r["fingerprint"],
            "partition_date": min(r["partition_date"], old["partition_date"])
            if old
            else r["partition_date"],
            "last_seen_date": max(r["last_seen_date"], old["last_seen_date"])
            if old
            else r["last_seen_date"],
            "status": old["status"] if old else "new",
        }
    for r in ext.iter_rows(named=True):
        rows[r["id"]]["last_seen_date"] = max(rows[r["id"]]["last_seen_date"], r["last_seen_date"])
    return pl.DataFrame(list(rows.values()), schema=EMPTY.schema) if rows else EMPTY


def test_persisting_pattern_is_one_insight() -> None:
    upserts, ext = plan_episodes(candidates("c|usage_drop|dau", list(range(10))), EMPTY, S)
    assert upserts.height == 1
    assert upserts["last_seen_date"][0] == D0 + timedelta(days=9)
    assert upserts["title"][0] == "day 0"  # narrated once, from the first day
    assert upserts["id"][0] == episode_id("c|usage_drop|dau", D0)
    assert ext.height == 0


def test_gap_longer_than_ttl_opens_a_new_episode() -> None:
    ttl = S.ttl_days["usage"]
    upserts, _ = plan_episodes(candidates("f", [0, 1, 2 + ttl + 1]), EMPTY, S)
    assert upserts.height == 2


def test_a_timing_insight_expires_a_week_after_its_moment_ends() -> None:
    """A QBR due until the day before the renewal: its insight expires a week after that day,
    not a month into the new contract year (a risk insight keeps its month)."""
    days = list(range(20))
    for category, ttl in (("timing", 7), ("risk", 30)):
        upserts, _ = plan_episodes(candidates("c|qbr_due|x", days, category), EMPTY, S)
        expires = upserts["expires_at"][0]
        assert expires.date() == D0 + timedelta(days=19 + ttl), category


def test_range_equals_day_by_day() -> None:
    offsets = [0, 1, 2, 5, 30, 31, 60]
    frame = candidates("f", offsets)
    ranged_up, ranged_ext = plan_episodes(frame, EMPTY, S)
    store = apply(EMPTY, ranged_up, ranged_ext)
    daily = EMPTY
    for o in offsets:
        up, ext = plan_episodes(
            frame.filter(pl.col("partition_date") == D0 + timedelta(days=o)), daily, S
        )
        daily = apply(daily, up, ext)
    assert store.sort("id").equals(daily.sort("id"))
    assert store.height == 3


def test_rerun_of_same_day_changes_nothing() -> None:
    frame = candidates("f", [0, 1, 2])
    up, ext = plan_episodes(frame, EMPTY, S)
    store = apply(EMPTY, up, ext)
    up2, ext2 = plan_episodes(
        frame.filter(pl.col("partition_date") == D0 + timedelta(days=1)), store, S
    )
    assert up2.height == 0
    assert apply(store, up2, ext2).sort("id").equals(store.sort("id"))


def test_dismissed_insight_has_a_cooldown() -> None:
    up, ext = plan_episodes(candidates("f", [0]), EMPTY, S)
    store = apply(EMPTY, up, ext).with_columns(pl.lit("dismissed").alias("status"))
    ttl = S.ttl_days["usage"]
    later = ttl + 5  # past the TTL but inside the 30-day cooldown: stays folded in
    assert later < S.dismiss_cooldown_days
    up2, ext2 = plan_episodes(candidates("f", [later]), store, S)
    assert up2.height == 0 and ext2.height == 1
    store = apply(store, up2, ext2)
    much_later = later + S.dismiss_cooldown_days + 1
    up3, _ = plan_episodes(candidates("f", [much_later]), store, S)
    assert up3.height == 1


@given(
    st.lists(
        st.tuples(st.text(max_size=40), st.dates(date(1900, 1, 1), date(2200, 12, 31))),
        min_size=1,
        max_size=30,
    )
)
@settings(max_examples=50, deadline=None)
def test_vectorised_episode_ids_are_the_uuid5_of_each_pair(
    pairs: list[tuple[str, date]],
) -> None:
    """Ids are computed in bulk (DuckDB's SHA-1); each must be exactly `episode_id`, the
    RFC 4122 UUID-5 that earlier runs stored, or re-runs would duplicate every insight."""
    fingerprints = pl.Series([f for f, _ in pairs], dtype=pl.String)
    days = pl.Series([d for _, d in pairs], dtype=pl.Date)
    assert episode_ids(fingerprints, days).to_list() == [episode_id(f, d) for f, d in pairs]


def test_a_stored_part_is_planned_as_the_frame(tmp_path: Path) -> None:
    """A lazy frame (a stored part) gives the new episodes' rows of the frame itself: found by
    their keys (a repeated key's rows are new together), or by row number when a key is null."""
    frame = pl.concat(
        [
            candidates("a", [0, 1, 2, 40]),
            candidates("b", [3, 4, 80]),
            candidates("c", [0, 50], "risk"),
        ]
    )
    repeated = pl.concat([frame, frame.tail(1).with_columns(pl.lit("again").alias("title"))])
    null_key = pl.concat(
        [frame, candidates("x", [7]).with_columns(pl.lit(None).alias("fingerprint"))]
    )
    for rows in (frame, repeated, null_key):
        path = tmp_path / "part.parquet"
        rows.write_parquet(path)
        eager, _ = plan_episodes(rows, EMPTY, S)
        lazy, _ = plan_episodes(pl.scan_parquet(path), EMPTY, S)
        assert lazy.equals(eager)

"""Account shards: a run processed in several parts (to bound memory) writes exactly what one
part writes, and the date x shard graph of `insight_pipeline.sharded` - one run per shard - fills
the insights table with the rows of the daily graph (the union of the shards equals the unsharded
result), apart from the documented cross-account steps."""

from __future__ import annotations

import json
from datetime import UTC, date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import insight_pipeline.lib.sharding as sharding
from insight_pipeline.definitions import ALL_ASSETS
from insight_pipeline.defs.resources import (
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
    _as_parts,
    _write_parts,
)
from insight_pipeline.defs.sharding import PARTS_METADATA, FrameStream
from insight_pipeline.defs.sources.assets import window_parts
from insight_pipeline.lib.contract import ContractError, Source
from insight_pipeline.lib.sharding import in_part, in_shard, shard_of
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.sample import generate_sample
from insight_pipeline.sharded import build_defs, sharded_assets

END = date(2026, 6, 30)
FIRST = END - timedelta(days=9)
SHARDS = 3
# Cross-account, so not comparable shard by shard (README, "Scaling out"): peer cohorts, team
# patterns across accounts, and the per-CSM daily push cap and rank.
CROSS_ACCOUNT_TYPES = ["outperforming", "underperforming", "cross_account_pattern"]
CROSS_ACCOUNT_COLUMNS = ["pushed", "rank_in_day"]
WALL_CLOCK = ["created_at", "viewed_at", "actioned_at"]
FAMILIES = ["engagement_signals", "risk_signals", "opportunity_signals", "timing_signals"]


def _part(index: int, rows: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": [f"C{index}-{i}" for i in range(rows)],
            "value": [float(i) for i in range(rows)],
        }
    )


def test_parts_are_written_in_order_and_read_back_one_by_one(tmp_path: Path) -> None:
    """Each part lands in the file in order, in the first part's types (a part whose column
    holds only nulls has no type of its own), and reads back as its own slice."""
    nulls = pl.DataFrame({"customer_id": ["N-0"], "value": [None]})
    parts = [_part(0, 3), _part(1, 5), nulls, _part(3, 0), _part(4, 2)]
    path = tmp_path / "parts.parquet"
    assert _write_parts(path, FrameStream(iter(parts))) == 11
    read = list(_as_parts(path))
    assert [p.height for p in read] == [3, 5, 1, 0, 2]
    assert read[2].schema == parts[0].schema and read[2]["value"].is_null().all()
    for written, back in zip(parts, read, strict=True):
        assert back.equals(written.cast(parts[0].schema))


def test_a_part_that_fails_fails_the_write_with_its_own_error(tmp_path: Path) -> None:
    def parts():
        yield _part(0, 3)
        yield _part(1, 3)
        raise ContractError("table 'usage_daily', column 'value': value 'x' is not a valid Float64")

    with pytest.raises(ContractError, match="not a valid Float64"):
        _write_parts(tmp_path / "parts.parquet", FrameStream(parts()))


def test_an_interrupt_stops_the_parts_and_goes_on_up(tmp_path: Path) -> None:
    """Dagster interrupts a step in the main thread; the parts stop being produced (a long range
    would otherwise compute to the end first) and the interrupt is raised."""
    import _thread
    import time

    produced = []

    def parts():
        for index in range(50):
            produced.append(index)
            if index == 2:
                _thread.interrupt_main()  # as a terminated run's signal handler does
            if index >= 2:
                time.sleep(0.2)  # a slow part: ~10 s left for the main thread to react
            yield _part(index, 10)

    with pytest.raises(KeyboardInterrupt):
        _write_parts(tmp_path / "parts.parquet", FrameStream(parts()))
    assert len(produced) < 50


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, accounts=300, days=240, seed=5, end_date=END)
    return out


def resources(source: Path, db_url: str, work: Path) -> dict[str, object]:
    return {
        "source": SourceResource(location=str(source)),
        "store": StoreResource(url=db_url),
        "narrator": NarratorResource(use_claude=False),
        "settings": SettingsResource(),
        "io_manager": PolarsParquetIOManager(base_dir=str(work / "intermediate")),
    }


def run_range(
    assets: list, res: dict, first: str, last: str, instance
) -> dg.ExecuteInProcessResult:
    tags = {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }
    result = dg.materialize(assets, resources=res, tags=tags, instance=instance)
    assert result.success
    return result


def activity_validation(result: dg.ExecuteInProcessResult) -> dict:
    """The per-table validation report of the run's `activity_window`."""
    return result.asset_materializations_for_node("activity_window")[0].metadata["validation"].value  # type: ignore[return-value]


def table(db_url: str) -> pl.DataFrame:
    """The insights table without the columns stamped with the time of writing."""
    store = InsightStore(db_url)
    try:
        insights = store.get_insights().sort("id")
    finally:
        store.dispose()
    return insights.drop([c for c in WALL_CLOCK if c in insights.columns])


def validation(event: dg.EventLogEntry | None) -> dict:
    """The per-table validation report of an `activity_window` materialisation."""
    assert event is not None and event.asset_materialization is not None
    return event.asset_materialization.metadata["validation"].value  # type: ignore[return-value]


def test_shards_and_parts_are_disjoint_and_cover_every_customer() -> None:
    ids = pl.DataFrame({"customer_id": [f"C{i:06d}" for i in range(5000)] + [None]})
    for split in (in_shard, in_part):
        counts = [ids.filter(split(i, 4)).height for i in range(4)]
        assert sum(counts) == ids.height
        assert min(counts) > 1000  # roughly even
    # the two splits are independent: every shard divides into every part
    for shard in range(2):
        for part in range(2):
            assert ids.filter(in_shard(shard, 2) & in_part(part, 2)).height > 1000


def test_a_run_in_many_parts_writes_what_one_part_writes(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.instance_for_test() as instance:
        whole = f"duckdb:///{tmp_path / 'whole.duckdb'}"
        run_range(
            ALL_ASSETS, resources(sample_dir, whole, tmp_path / "a"), str(FIRST), str(END), instance
        )
        whole_events = instance.get_latest_materialization_event(dg.AssetKey("activity_window"))
        monkeypatch.setattr(sharding, "ROWS_PER_PART", 20_000)  # ~8 parts, read in 2 scans
        # 300 accounts x 10 days: 4 account parts; peers 2 days at a time, 5 spans
        monkeypatch.setattr(sharding, "ACCOUNT_DAYS_PER_PART", 800)
        parted = f"duckdb:///{tmp_path / 'parted.duckdb'}"
        run_range(
            ALL_ASSETS,
            resources(sample_dir, parted, tmp_path / "b"),
            str(FIRST),
            str(END),
            instance,
        )
        parted_events = instance.get_latest_materialization_event(dg.AssetKey("activity_window"))
        for asset in [*FAMILIES, "insight_candidates"]:
            materialization = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert materialization is not None
            parts = materialization.asset_materialization.metadata["account_parts"]  # type: ignore[union-attr]
            assert parts.value == 4, asset
        for asset in ("peer_benchmarks", "cross_account_patterns"):  # per day, across accounts
            spans = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert spans is not None
            assert spans.asset_materialization.metadata["day_spans"].value == 5  # type: ignore[union-attr]
    name = f"{FIRST}__{END}.parquet"
    for asset in [*FAMILIES, "peer_benchmarks", "insight_candidates"]:  # in part or span order
        one = pl.read_parquet(tmp_path / "a" / "intermediate" / asset / name)
        many = pl.read_parquet(tmp_path / "b" / "intermediate" / asset / name)
        keys = ["customer_id", "type", "subject", "partition_date"]
        assert one.height > 0, asset
        assert many.sort(keys, maintain_order=True).equals(one.sort(keys, maintain_order=True))
    for asset in ("usage_window", "usage_baselines"):
        one = pl.read_parquet(tmp_path / "a" / "intermediate" / asset / name)
        many = pl.read_parquet(tmp_path / "b" / "intermediate" / asset / name)
        keys = ["customer_id", "metric", "partition_date" if asset == "usage_baselines" else "date"]
        assert many.height == one.height
        assert many.sort(keys).equals(one.sort(keys))
    # the activity tables keyed by customer are read, validated and written a part at a time
    # when large: the same rows, the same validation counts
    bundle = f"{FIRST}__{END}"
    one_dir = tmp_path / "a" / "intermediate" / "activity_window" / bundle
    many_dir = tmp_path / "b" / "intermediate" / "activity_window" / bundle
    written_in_parts = set()
    for path in sorted(one_dir.glob("*.parquet")):
        one, many = pl.read_parquet(path), pl.read_parquet(many_dir / path.name)
        assert many.height == one.height, path.stem
        assert many.sort(one.columns).equals(one.sort(one.columns)), path.stem
        recorded = pl.read_parquet_metadata(many_dir / path.name).get(PARTS_METADATA)
        if recorded and len(json.loads(recorded)) > 1:
            written_in_parts.add(path.stem)
    assert {"feature_usage", "health"} <= written_in_parts
    assert not written_in_parts & {"meetings", "meeting_attendees", "communications", "contacts"}
    assert validation(whole_events) == validation(parted_events)
    assert validation(whole_events)["feature_usage_daily"]["rows_read"] > 0
    assert table(whole).height > 0
    assert table(parted).equals(table(whole))


def test_union_of_shard_runs_equals_the_unsharded_run(sample_dir: Path, tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        unsharded = f"duckdb:///{tmp_path / 'unsharded.duckdb'}"
        res = resources(sample_dir, unsharded, tmp_path / "u")
        whole = activity_validation(run_range(ALL_ASSETS, res, str(FIRST), str(END), instance))
        sharded = f"duckdb:///{tmp_path / 'sharded.duckdb'}"
        res = resources(sample_dir, sharded, tmp_path / "s")
        assets = sharded_assets(SHARDS)
        shards = [
            activity_validation(
                run_range(assets, res, f"{FIRST}|{shard}", f"{END}|{shard}", instance)
            )
            for shard in range(SHARDS)
        ]
    # each shard reads and validates its own accounts' activity rows: none is taken for an
    # unknown id, and together the shards keep what the unsharded run keeps
    assert whole["communications"]["rows_kept"] > 0
    for name, report in whole.items():
        for count in ("rows_read", "rows_kept", "unknown_ids"):
            assert sum(s[name][count] for s in shards) == report[count], (name, count)
    per_account = ~pl.col("type").is_in(CROSS_ACCOUNT_TYPES)
    expected = table(unsharded).filter(per_account)
    got = table(sharded).filter(per_account)
    cross = [c for c in CROSS_ACCOUNT_COLUMNS if c in expected.columns]
    expected, got = expected.drop(cross), got.drop(cross)
    assert expected.height > 20
    assert got.equals(expected)
    # each shard's intermediates hold only its own accounts, and together all of them
    folder = tmp_path / "s" / "intermediate" / "accounts"
    parts = [pl.read_parquet(folder / f"shard={s}" / f"{FIRST}__{END}.parquet") for s in range(3)]
    assert sum(p.height for p in parts) == pl.concat(parts)["customer_id"].n_unique() == 300


def test_attendees_without_a_meeting_of_the_table_are_counted_once_across_shards(
    sample_dir: Path, tmp_path: Path
) -> None:
    """meeting_attendees has no customer_id, so every shard reads all of it. An attendee of a
    meeting the table does not hold, or with no meeting id, is quarantined by one shard only
    (shard 0): the shards together count it once, as the unsharded run does."""
    import shutil

    source = Path(shutil.copytree(sample_dir, tmp_path / "source"))
    attendees = pl.read_parquet(source / "meeting_attendees.parquet")
    contact = attendees["contact_id"][0]
    bad = pl.DataFrame({"meeting_id": ["M-NOPE", None], "contact_id": [contact, contact]})
    pl.concat([attendees, bad]).write_parquet(source / "meeting_attendees.parquet")
    wanted = {"accounts", "activity_window"}

    def subset(assets: list) -> list:
        return [a for a in assets if {k.to_user_string() for k in a.keys} <= wanted]

    day = str(END)
    with dg.instance_for_test() as instance:
        res = resources(source, f"duckdb:///{tmp_path / 'u.duckdb'}", tmp_path / "u")
        whole = activity_validation(run_range(subset(ALL_ASSETS), res, day, day, instance))
        res = resources(source, f"duckdb:///{tmp_path / 's.duckdb'}", tmp_path / "s")
        assets = subset(sharded_assets(SHARDS))
        shards = [
            activity_validation(run_range(assets, res, f"{day}|{s}", f"{day}|{s}", instance))
            for s in range(SHARDS)
        ]
    counts = whole["meeting_attendees"]
    assert (counts["unknown_ids"], counts["null_keys"], counts["quarantined"]) == (1, 1, 2)
    for count in ("rows_read", "rows_kept", "unknown_ids", "null_keys", "quarantined"):
        assert sum(s["meeting_attendees"][count] for s in shards) == counts[count], count
    assert shards[0]["meeting_attendees"]["quarantined"] == 2


def test_sharded_definitions_load_with_a_schedule_per_shard() -> None:
    defs = build_defs(SHARDS)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {k.to_user_string() for a in ALL_ASSETS for k in a.keys}
    schedule = defs.resolve_schedule_def("sharded_insights_schedule")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=_utc(END + timedelta(days=1))
        )
        requests = schedule.evaluate_tick(context).run_requests or []
    assert sorted(r.partition_key for r in requests) == [f"{END}|{s}" for s in range(SHARDS)]


def _utc(day: date):
    from datetime import datetime

    return datetime(day.year, day.month, day.day, 5, 30, tzinfo=UTC)


def test_a_row_falls_in_one_part_whether_hashed_raw_or_typed() -> None:
    """A source scan picks a part's rows by their raw ids, the split after typing by the typed
    ones: padded, blank and integer ids must land in the same part both ways."""
    raw = pl.DataFrame({"customer_id": [" C1 ", "C1", "", None, "C2\t"]})
    typed = pl.DataFrame({"customer_id": ["C1", "C1", None, None, "C2"]})

    def parts(frame: pl.DataFrame, count: int, raw: bool = False) -> list[int]:
        return frame.select(shard_of(count, raw=raw)).to_series().to_list()

    for count in (2, 8):
        assert parts(raw, count, raw=True) == parts(typed, count)
    assert parts(raw, 8) != parts(typed, 8)  # why raw=True exists
    ints = pl.DataFrame({"customer_id": [17, 42]})
    assert parts(ints, 8, raw=True) == parts(ints.cast({"customer_id": pl.String}), 8)


def test_window_parts_of_padded_ids_keep_every_row(sample_dir: Path, tmp_path: Path) -> None:
    """More parts than one scan reads (two scans), ids padded on half the rows: every row comes
    out in exactly one part, and a customer's rows (padded or not) in the same part."""
    source = tmp_path / "source"
    source.mkdir()
    for path in sample_dir.iterdir():
        (source / path.name).symlink_to(path)
    table = "feature_usage_daily"
    (source / f"{table}.parquet").unlink()
    clean = pl.read_parquet(sample_dir / f"{table}.parquet")
    padded = clean.with_columns(
        pl.when(pl.int_range(pl.len()) % 2 == 0)
        .then(pl.concat_str(pl.lit(" "), pl.col("customer_id"), pl.lit("  ")))
        .otherwise(pl.col("customer_id"))
        .alias("customer_id")
    )
    padded.write_parquet(source / f"{table}.parquet")
    assert sharding.PARTS_PER_SCAN == 4  # 8 parts: two scans
    src = Source(str(source))
    clean_src = Source(str(sample_dir))
    try:
        assert clean_src.ids_typed_as_read(table)  # clean ids: the scans hash them as they are
        assert not src.ids_typed_as_read(table)
        whole = src.read(table)
        parts = list(window_parts(src, table, None, None, pl.lit(True), 8))
    finally:
        src.dispose()
        clean_src.dispose()
    assert whole is not None and whole.height == clean.height > 1000
    assert len(parts) == 8 and all(p.height for p in parts)
    assert sum(p.height for p in parts) == whole.height
    columns = whole.columns
    assert pl.concat(parts).sort(columns).equals(whole.sort(columns))
    owners = pl.concat(
        [
            p.select("customer_id").unique().with_columns(pl.lit(i).alias("part"))
            for i, p in enumerate(parts)
        ]
    )
    assert owners["customer_id"].is_unique().all()

"""The Dagster graph end to end on generated data: definitions load with the expected asset keys,
partitions materialise in-process into a real store, re-runs are idempotent and keep user
feedback, a range run equals day-by-day runs, planted usage patterns reach the insights table."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from insight_pipeline.definitions import ALL_ASSETS, defs
from insight_pipeline.defs.resources import (
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
)
from insight_pipeline.defs.sources.activity import BUNDLE_COLUMNS, DELIVERY_CHECK
from insight_pipeline.lib import sharding
from insight_pipeline.lib.contract import CONTRACT, Source
from insight_pipeline.lib.settings import Settings
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.sample import generate_sample

END = date(2026, 6, 30)
EXPECTED_KEYS = {
    "accounts",
    "usage_window",
    "activity_window",
    "engagement_signals",
    "risk_signals",
    "opportunity_signals",
    "timing_signals",
    "peer_benchmarks",
    "usage_baselines",
    "usage_anomalies",
    "usage_trends",
    "insight_candidates",
    "insight_outcome_rates",
    "insights",
    "insights_table",
    "team_directory",
    "user_preferences",
    "insight_quality",
    "cross_account_patterns",
    "team_insights_table",
    "team_rollups",
    "daily_digest",
}
USER_COLUMNS = ["id", "status", "feedback"]
CONTENT = ["id", "fingerprint", "partition_date", "last_seen_date", "score", "title", "status"]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, accounts=200, days=240, seed=3, end_date=END)
    return out


def resources(source: Path, db_url: str, work: Path) -> dict[str, object]:
    return {
        "source": SourceResource(location=str(source)),
        "store": StoreResource(url=db_url),
        "narrator": NarratorResource(use_claude=False),
        "settings": SettingsResource(),
        "io_manager": PolarsParquetIOManager(base_dir=str(work / "intermediate")),
    }


def run(res: dict[str, object], first: date, last: date, instance: dg.DagsterInstance) -> None:
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    result = dg.materialize(ALL_ASSETS, resources=res, tags=tags, instance=instance)
    assert result.success


def table(db_url: str) -> pl.DataFrame:
    store = InsightStore(db_url)
    try:
        return store.get_insights().sort("id")
    finally:
        store.dispose()


def source_with_usage(sample_dir: Path, directory: Path, usage: pl.DataFrame) -> Path:
    """The sample source with its usage table replaced by `usage`."""
    directory.mkdir(parents=True)
    for path in sample_dir.glob("*.parquet"):
        (directory / path.name).write_bytes(path.read_bytes())
    usage.write_parquet(directory / "usage_daily.parquet")
    return directory


def materialise_day(
    source: Path,
    work: Path,
    selection: list[str],
    day: date = END,
    settings: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """`selection` for one day on `source` (errors returned, not raised)."""
    res = resources(source, f"duckdb:///{work / 'i.duckdb'}", work)
    res["settings"] = SettingsResource(overrides=settings or {})
    with dg.instance_for_test() as instance:
        return dg.materialize(
            ALL_ASSETS,
            selection=selection,
            partition_key=day.isoformat(),
            resources=res,
            instance=instance,
            raise_on_error=False,
        )


def test_definitions_load_with_expected_assets() -> None:
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == EXPECTED_KEYS
    assert defs.resolve_job_def("daily_insights_job") is not None
    assert defs.resolve_schedule_def("daily_insights_schedule").cron_schedule == "30 5 * * *"


def test_baselines_or_trends_alone_equal_the_shared_step(sample_dir: Path, tmp_path: Path) -> None:
    """`usage_baselines` and `usage_trends` come from one step (one dense grid); selecting
    either alone materialises just that one, with the same rows."""
    day = END.isoformat()

    def materialise(work: Path, selection: list[str]) -> dict[str, dict]:
        res = resources(sample_dir, f"duckdb:///{work / 'i.duckdb'}", work)
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                ALL_ASSETS, selection=selection, partition_key=day, resources=res, instance=instance
            )
        assert result.success
        events = result.get_asset_materialization_events()
        assert {e.asset_key.to_user_string() for e in events} == set(selection)
        return {e.asset_key.to_user_string(): e.materialization.metadata for e in events}

    def stored(work: Path, asset: str) -> pl.DataFrame:
        return pl.read_parquet(work / "intermediate" / asset / f"{day}__{day}.parquet")

    sources = ["accounts", "usage_window"]
    both, alone = tmp_path / "both", tmp_path / "alone"
    metadata = materialise(both, [*sources, "usage_baselines", "usage_trends"])
    # counted from the rows' order (a run per series): the same as counting distinct pairs
    series = stored(both, "usage_baselines").select("customer_id", "metric").n_unique()
    assert series > 0
    assert metadata["usage_baselines"]["customer_metrics"].value == series
    materialise(alone, sources)
    materialise(alone, ["usage_trends"])
    assert not (alone / "intermediate" / "usage_baselines").exists()
    materialise(alone, ["usage_baselines"])
    for asset in ("usage_baselines", "usage_trends"):
        assert stored(both, asset).height > 0
        assert stored(alone, asset).equals(stored(both, asset))


def test_range_run_equals_daily_runs_and_reruns_are_idempotent(
    sample_dir: Path, tmp_path: Path
) -> None:
    first, last = END - timedelta(days=13), END
    with dg.instance_for_test() as instance:
        ranged_url = f"duckdb:///{tmp_path / 'ranged.duckdb'}"
        run(resources(sample_dir, ranged_url, tmp_path / "a"), first, last, instance)
        daily_url = f"duckdb:///{tmp_path / 'daily.duckdb'}"
        res = resources(sample_dir, daily_url, tmp_path / "b")
        for offset in range(14):
            day = first + timedelta(days=offset)
            run(res, day, day, instance)
        ranged, daily = table(ranged_url), table(daily_url)
        assert ranged.height > 0
        assert ranged.select(CONTENT).equals(daily.select(CONTENT))

        # A user acts on an insight; re-running the whole range changes nothing else.
        store = InsightStore(daily_url)
        target = daily["id"][0]
        store.set_status(target, "dismissed", feedback="not_relevant")
        store.dispose()
        before = table(daily_url)
        run(res, first, last, instance)
        run(res, last, last, instance)
        after = table(daily_url)
        assert after.height == before.height
        assert after.select(CONTENT).equals(before.select(CONTENT))
        kept = after.filter(pl.col("id") == target)
        assert kept["status"][0] == "dismissed" and kept["feedback"][0] == "not_relevant"


def test_planted_usage_patterns_reach_the_store(sample_dir: Path, tmp_path: Path) -> None:
    truth = pl.read_csv(sample_dir / "ground_truth.csv", try_parse_dates=True)
    first = END - timedelta(days=89)
    usage_truth = truth.filter(
        pl.col("type").is_in(["usage_drop", "usage_spike"])
        & (pl.col("start_date") >= first)
        & (pl.col("start_date") <= END - timedelta(days=7))
    )
    assert usage_truth.height >= 5, "the sample must plant usage events in the window"
    url = f"duckdb:///{tmp_path / 'planted.duckdb'}"
    with dg.instance_for_test() as instance:
        run(resources(sample_dir, url, tmp_path), first, END, instance)
    found = table(url)
    hits = usage_truth.join(
        found.select("customer_id", "type", "subject", "partition_date"),
        on=["customer_id", "type", "subject"],
        how="inner",
    ).filter(
        (pl.col("partition_date") >= pl.col("start_date"))
        & (pl.col("partition_date") <= pl.col("start_date") + pl.duration(days=7))
    )
    recall = hits.select("customer_id", "subject", "start_date").n_unique() / usage_truth.height
    assert recall >= 0.8, f"recall {recall:.2f} of {usage_truth.height} planted usage events"
    # Every stored insight explains its score, although the candidates (most of which only
    # extend an episode) are stored without the explanation: it is written for new episodes.
    candidates = tmp_path / "intermediate" / "insight_candidates" / f"{first}__{END}.parquet"
    assert "score_parts" not in pl.read_parquet_schema(candidates)
    parts = found["score_parts"].str.json_decode()
    assert parts.null_count() == 0
    assert {"severity", "impact", "novelty", "preference", "critical", "echo_of", "score"} <= {
        field.name for field in parts.dtype.fields
    }
    assert (parts.struct.field("score") == found["score"].round(4)).all()


def test_dagster_cli_validates_the_definitions() -> None:
    """`dagster definitions validate` (what a data engineer and CI run) accepts the module."""
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "insight_pipeline.definitions",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Validation successful" in result.stderr + result.stdout


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_outcome_rates_of_many_months_at_once_equal_each_months_own(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """A range run computes its uncached months' outcome rates together (the usage summed in
    one pass, each activity table read once, `rates_for_months`); every month's rates are those
    of its own computation. (Each window's rows are checked against its own read in
    test_lib_contract.py: the rates themselves do not change when a window holds a little more
    history at either end, by design - events are counted inside the history only.)"""
    from insight_pipeline.defs.insights.outcomes import rates_as_of, rates_for_months

    source = sample_dir
    if fmt == "csv":
        source = tmp_path / "csv"
        source.mkdir()
        for path in sample_dir.glob("*.parquet"):
            pl.read_parquet(path).write_csv(source / f"{path.stem}.csv")
    # a short history, so that the months' windows start inside the sample's 240 days and
    # differ at both ends
    s = replace(Settings().outcomes, history_months=3, horizon_days=30)
    months = [date(2026, 3, 1), date(2026, 4, 1), date(2026, 5, 1), date(2026, 6, 1)]
    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "together"))
    together = rates_for_months(Source(str(source)), months, s)
    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "apart"))
    apart = pl.concat([rates_as_of(Source(str(source)), m, s) for m in months])
    assert together.equals(apart)
    assert together["as_of"].unique().sort().to_list() == months
    assert together.filter(pl.col("n") > 0).height > 0


def test_a_months_cached_outcome_rates_outlive_new_days_but_not_a_changed_history(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rates as of a month's first day read only the history before it: a source that grows by
    a day (its files rewritten), or by a contact who has not left, keeps the month's cached
    rates, which a daily run would otherwise recompute every day; a row removed from the
    history, a churn date before the month, a contract start, an NPS score or a contact's
    departure changed in place computes them again."""
    from insight_pipeline.defs.insights.outcomes import _cache_path, rates_as_of

    source = tmp_path / "source"
    shutil.copytree(sample_dir, source)
    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "data"))
    s = replace(Settings().outcomes, history_months=3, horizon_days=30)
    month = date(2026, 5, 1)

    def cached() -> Path:
        return _cache_path(Source(str(source)), month, s)

    first = cached()
    rates_as_of(Source(str(source)), month, s)
    assert first.exists()
    with monkeypatch.context() as unchanged:  # no file rewritten: the last stamp, no scan
        unchanged.setattr(Source, "fingerprint_windows", lambda *a, **k: pytest.fail("scanned"))
        assert cached() == first
        # the data directory moved: the memo's keys lead into the new place
        shutil.copytree(tmp_path / "data", tmp_path / "moved")
        unchanged.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "moved"))
        assert cached() == tmp_path / "moved" / first.relative_to(tmp_path / "data")
    usage = pl.read_parquet(source / "usage_daily.parquet")
    newest = usage.filter(pl.col("date") == pl.col("date").max())
    grown = pl.concat([usage, newest.with_columns(pl.col("date") + timedelta(days=1))])
    grown.write_parquet(source / "usage_daily.parquet")
    tickets = pl.read_parquet(source / "support_tickets.parquet")
    tickets.head(tickets.height - 1).vstack(tickets.tail(1)).write_parquet(
        source / "support_tickets.parquet"
    )
    contacts = pl.read_parquet(source / "contacts.parquet")
    new_contact = contacts.head(1).with_columns(
        pl.lit("new-contact").alias("contact_id"), pl.lit(None, pl.Date).alias("left_on")
    )
    pl.concat([contacts, new_contact]).write_parquet(source / "contacts.parquet")
    assert cached() == first
    contacts.write_parquet(source / "contacts.parquet")

    usage.filter(pl.col("date") != date(2026, 4, 10)).write_parquet(source / "usage_daily.parquet")
    assert cached() != first
    usage.write_parquet(source / "usage_daily.parquet")
    assert cached() == first

    def first_row_set(frame: pl.DataFrame, column: str, value: date) -> pl.DataFrame:
        return frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 0)
            .then(pl.lit(value))
            .otherwise(pl.col(column))
            .alias(column)
        )

    # values the rates read, changed in place (row counts unchanged): each recomputes
    customers = pl.read_parquet(source / "customers.parquet")
    churned_later = first_row_set(customers, "churned_on", date(2026, 4, 20))
    started_later = customers.with_columns(pl.lit(date(2026, 3, 15)).alias("contract_start"))
    nps = pl.read_parquet(source / "nps_responses.parquet")
    contacts = pl.read_parquet(source / "contacts.parquet")
    left_earlier = first_row_set(contacts, "left_on", date(2026, 2, 10))
    for name, changed, original in (
        ("customers", churned_later, customers),
        ("customers", started_later, customers),
        ("nps_responses", nps.with_columns(pl.lit(0).cast(nps["score"].dtype).alias("score")), nps),
        ("contacts", left_earlier, contacts),
    ):
        changed.write_parquet(source / f"{name}.parquet")
        assert cached() != first, name
        original.write_parquet(source / f"{name}.parquet")
    assert cached() == first


def test_a_range_runs_memo_serves_each_of_its_months_alone(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The month -> key memo is kept per month: a day run after a range run takes its month's
    key from the range's memo, without scanning the source's history again, and finds the same
    key a scan gives."""
    from insight_pipeline.defs.insights.outcomes import _cache_path, _cache_paths

    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "data"))
    s = replace(Settings().outcomes, history_months=3, horizon_days=30)
    months = [date(2026, 4, 1), date(2026, 5, 1), date(2026, 6, 1)]
    paths = _cache_paths(Source(str(sample_dir)), months, s)
    with monkeypatch.context() as memoised:
        memoised.setattr(Source, "fingerprint_windows", lambda *a, **k: pytest.fail("scanned"))
        assert {m: _cache_path(Source(str(sample_dir)), m, s) for m in months} == paths
    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "fresh"))
    scanned = _cache_path(Source(str(sample_dir)), months[1], s)
    assert scanned == tmp_path / "fresh" / paths[months[1]].relative_to(tmp_path / "data")


@pytest.mark.parametrize("absent", ["communications", "meetings"])
def test_outcome_rates_with_one_of_meetings_and_communications_absent(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, absent: str
) -> None:
    """Many CRMs export meetings but not messages (or the reverse): both are optional, so the
    two-way contact events come from the one that is there, and the month without contact is
    still counted from it, instead of the run failing on the absent table's columns."""
    from insight_pipeline.defs.insights.outcomes import rates_as_of

    source = tmp_path / "source"
    shutil.copytree(sample_dir, source)
    (source / f"{absent}.parquet").unlink()
    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "data"))
    s = replace(Settings().outcomes, history_months=3, horizon_days=30)
    rates = rates_as_of(Source(str(source)), date(2026, 6, 1), s)
    dark = rates.filter(pl.col("family") == "dark")
    assert dark.height == 1 and dark["n"].item() > 0


def test_a_day_whose_usage_has_not_arrived_fails_naming_it(
    sample_dir: Path, tmp_path: Path
) -> None:
    """A late export reads as every account going idle (a flood of false drops): the run of a
    day past the source's last day of usage fails in `usage_window`, naming the day and the
    last day that has rows, before any detector or the store sees it; the days with data run."""
    usage = pl.read_parquet(sample_dir / "usage_daily.parquet")
    cut = END - timedelta(days=2)
    source = source_with_usage(sample_dir, tmp_path / "source", usage.filter(pl.col("date") <= cut))
    selection = ["accounts", "usage_window"]
    late = materialise_day(source, tmp_path / "late", selection)
    assert not late.success
    message = str(late.get_step_failure_events()[0].step_failure_data.error)
    assert f"{END} (0 rows against a usual" in message
    assert f"the last earlier day with rows is {cut}" in message
    on_time = materialise_day(source, tmp_path / "on_time", selection, day=cut)
    assert on_time.success
    meta = on_time.asset_materializations_for_node("usage_window")[0].metadata
    start = cut - timedelta(days=Settings().lookback_days)
    window = usage.filter(pl.col("date").is_between(start, cut))
    assert meta["metrics"].value == sorted(window["metric"].unique())
    assert meta["customers_with_usage"].value == window["customer_id"].n_unique()


def delivery_evaluation(
    source: Path, work: Path, first: date, last: date
) -> dg.AssetCheckEvaluation:
    """The optional tables' delivery check of one run over [first, last] of the source stage."""
    res = resources(source, f"duckdb:///{work / 'i.duckdb'}", work)
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            ALL_ASSETS,
            selection=["accounts", "usage_window", "activity_window"],
            resources=res,
            tags=tags,
            instance=instance,
        )
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == DELIVERY_CHECK
    ]
    return evaluation


def test_an_optional_export_that_stopped_or_comes_in_part_is_a_warning_naming_it(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages that stop arriving read as every account going dark; the run goes on (the
    detectors measure against everyone's contact) but the source stage's check warns, naming
    the table, its usual days without rows (not the quiet weekends) and the last day with
    rows. Feature usage of which a twentieth comes on each of the last five days is named for
    those days. The untouched sample passes over the last month and over the year-end holidays,
    when meetings stop for a day or two (the survey table's empty days included)."""
    for first, last in [(END - timedelta(days=30), END), (date(2025, 12, 1), date(2026, 1, 20))]:
        clean = delivery_evaluation(sample_dir, tmp_path / f"clean{first}", first, last)
        assert clean.passed, clean.metadata
    checked = clean.metadata["tables_checked"].value
    assert {"communications", "meetings", "feature_usage_daily", "nps_responses"} <= set(checked)  # type: ignore[arg-type]
    meetings = pl.read_parquet(sample_dir / "meetings.parquet")["start_at"].dt.date()
    assert not meetings.is_in([date(2025, 12, 24), date(2025, 12, 25)]).any()
    nps = pl.read_parquet(sample_dir / "nps_responses.parquet")
    recent = nps.filter(pl.col("responded_on") > END - timedelta(days=30))
    assert recent["responded_on"].n_unique() < 31, "the survey table must have empty days"

    source = tmp_path / "source"
    shutil.copytree(sample_dir, source)
    cut = END - timedelta(days=7)  # a Tuesday
    messages = pl.read_parquet(sample_dir / "communications.parquet")
    messages.filter(pl.col("sent_at").dt.date() <= cut).write_parquet(
        source / "communications.parquet"
    )
    features = pl.read_parquet(sample_dir / "feature_usage_daily.parquet")
    late_days = pl.col("date") > END - timedelta(days=5)
    partial = features.filter(late_days).gather_every(20)
    pl.concat([features.filter(~late_days), partial]).write_parquet(
        source / "feature_usage_daily.parquet"
    )
    monkeypatch.setattr(sharding, "ROWS_PER_PART", 20_000)  # feature usage read in parts
    broken = delivery_evaluation(source, tmp_path / "broken", END - timedelta(days=6), END)
    assert not broken.passed and broken.severity == dg.AssetCheckSeverity.WARN
    late = broken.metadata["undelivered"].value
    assert set(late) == {"communications", "feature_usage_daily"}, late  # type: ignore[arg-type]
    stopped = late["communications"]  # type: ignore[index]
    for day in [cut + timedelta(days=d) for d in (1, 2, 3, 6, 7)]:  # Wednesday to Tuesday
        assert f"{day} (0 rows against a usual" in stopped, stopped
    assert stopped.endswith(f"on that weekday); the last earlier day with rows is {cut}")
    weekend = [cut + timedelta(days=d) for d in (4, 5)]  # without messages as usual: not named
    assert [day.weekday() for day in weekend] == [5, 6]
    assert not any(f"{day} (" in stopped for day in [*weekend, cut])
    first_partial = END - timedelta(days=4)
    assert late["feature_usage_daily"].startswith(f"{first_partial} (")  # type: ignore[index]
    assert "communications on" in (broken.description or "")


def test_peer_benchmarks_say_why_when_the_source_has_no_benchmarked_metric(
    sample_dir: Path, tmp_path: Path
) -> None:
    """Metric names are free text: a source that calls its daily actives `active_users` gets
    no benchmark, and the asset says so (in its metadata and the run's log) naming the metric
    it looked for and the ones there are, instead of reporting 0 signals as if all were
    average; with the metric named in the run config, the accounts are benchmarked."""
    renamed = pl.read_parquet(sample_dir / "usage_daily.parquet").with_columns(
        pl.col("metric").replace("dau", "active_users")
    )
    source = source_with_usage(sample_dir, tmp_path / "source", renamed)
    selection = ["accounts", "usage_window", "activity_window", "peer_benchmarks"]

    def benchmark(work: Path, overrides: dict) -> dict:
        result = materialise_day(source, work, selection, settings=overrides)
        assert result.success
        return result.asset_materializations_for_node("peer_benchmarks")[0].metadata

    skipped = benchmark(tmp_path / "default", {})
    reason = skipped["skipped"].value
    assert "'dau'" in reason and "'active_users'" in reason and skipped["signals"].value == 0
    named = benchmark(tmp_path / "named", {"benchmark": {"metric": "active_users"}})
    assert "skipped" not in named and named["accounts_benchmarked"].value > 0


def test_activity_bundle_keeps_the_columns_its_detectors_read_after_validating_all(
    sample_dir: Path, tmp_path: Path
) -> None:
    """The bundle stores only the columns the detectors read of messages and tickets, yet
    every column is validated: a message id repeated and a ticket id repeated are still
    quarantined, and the detectors that read both tables run on what is stored."""
    source = Path(shutil.copytree(sample_dir, tmp_path / "source"))
    for name, date_column in (("communications", "sent_at"), ("support_tickets", "opened_at")):
        frame = pl.read_parquet(source / f"{name}.parquet")
        recent = frame.filter(pl.col(date_column).dt.date() > END - timedelta(days=30))
        repeat = recent.head(1)  # the same message (ticket) delivered twice
        pl.concat([frame, repeat]).write_parquet(source / f"{name}.parquet")
    selection = [
        "accounts",
        "usage_window",
        "activity_window",
        "engagement_signals",
        "risk_signals",
    ]
    result = materialise_day(source, tmp_path / "work", selection)
    assert result.success
    report = result.asset_materializations_for_node("activity_window")[0].metadata["validation"]
    bundle = tmp_path / "work" / "intermediate" / "activity_window" / f"{END}__{END}"
    for table in ("communications", "support_tickets"):  # bundle keys named as the tables
        assert report.value[table]["duplicates"] >= 1, table  # type: ignore[index]
        stored = pl.read_parquet(bundle / f"{table}.parquet")
        assert stored.columns == list(BUNDLE_COLUMNS[table])
        assert stored.height == report.value[table]["rows_kept"] > 0  # type: ignore[index]
    # tables not listed keep every contract column
    meetings = pl.read_parquet(bundle / "meetings.parquet")
    assert meetings.columns == list(CONTRACT["meetings"].columns)
    readers = {
        "engagement_signals": {"going_dark", "increased_activity"},
        "risk_signals": {"silent_account", "support_surge"},
    }
    for family, detectors in readers.items():
        ran = result.asset_materializations_for_node(family)[0].metadata["detectors_run"].value
        assert detectors <= set(ran), (family, ran)  # type: ignore[arg-type]


def test_a_day_at_the_start_of_the_history_runs_and_says_nothing(
    sample_dir: Path, tmp_path: Path
) -> None:
    """Three days into a source of the required tables only, no detector has what it needs,
    so there is no candidate: the whole graph still runs (the sink writes nothing) instead of
    failing on the empty frame."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("customers", "users", "usage_daily"):
        shutil.copy(sample_dir / f"{name}.parquet", source)
    first_usage = pl.scan_parquet(source / "usage_daily.parquet").select(pl.col("date").min())
    day = first_usage.collect().item() + timedelta(days=3)
    work = tmp_path / "work"
    result = materialise_day(source, work, ["*"], day=day)
    assert result.success
    candidates = result.asset_materializations_for_node("insight_candidates")[0].metadata
    assert candidates["rows"].value == 0
    assert table(f"duckdb:///{work / 'i.duckdb'}").height == 0


def test_a_feature_table_connected_days_ago_raises_no_discoveries(
    sample_dir: Path, tmp_path: Path
) -> None:
    """A source whose feature usage begins a few days before the run (a table just connected):
    every feature in use has no earlier day on record, and none is called newly discovered
    (the opportunity step passes where the table's record begins)."""
    source = Path(shutil.copytree(sample_dir, tmp_path / "source"))
    features = pl.read_parquet(source / "feature_usage_daily.parquet")
    connected = features.filter(pl.col("date") >= END - timedelta(days=5))
    assert connected.filter(pl.col("active_users") > 0).height > 0
    connected.write_parquet(source / "feature_usage_daily.parquet")
    work = tmp_path / "work"
    assert materialise_day(source, work, ["*"], day=END).success
    insights = table(f"duckdb:///{work / 'i.duckdb'}")
    assert insights.height > 0
    assert insights.filter(pl.col("type") == "feature_discovery").is_empty()


def test_an_accounts_open_insights_follow_it_to_its_new_csm(
    sample_dir: Path, tmp_path: Path
) -> None:
    """An account handed to another CSM between two daily runs: the next run's sink moves its
    insights still open to the new CSM (the feed, digest and team views go by user_id); those
    of other accounts stay where they were."""
    source = Path(shutil.copytree(sample_dir, tmp_path / "source"))
    work = tmp_path / "work"
    day = END - timedelta(days=1)
    assert materialise_day(source, work, ["*"], day=day).success
    url = f"duckdb:///{work / 'i.duckdb'}"
    before = table(url)
    moved = before.group_by("customer_id").len().sort("len", "customer_id").row(-1, named=True)
    customers = pl.read_parquet(source / "customers.parquet")
    old = customers.filter(pl.col("customer_id") == moved["customer_id"])["csm_user_id"][0]
    new = customers.filter(pl.col("csm_user_id") != old)["csm_user_id"][0]
    customers.with_columns(
        pl.when(pl.col("customer_id") == moved["customer_id"])
        .then(pl.lit(new))
        .otherwise("csm_user_id")
        .alias("csm_user_id")
    ).write_parquet(source / "customers.parquet")
    result = materialise_day(source, work, ["*"], day=END)
    assert result.success
    sink = result.asset_materializations_for_node("insights_table")[0].metadata
    after = table(url)
    theirs = after.filter(pl.col("customer_id") == moved["customer_id"])
    assert theirs.height >= moved["len"] > 0
    assert set(theirs["user_id"]) == {new}
    assert sink["reassigned"].value == moved["len"]
    others = before.filter(pl.col("customer_id") != moved["customer_id"]).select("id", "user_id")
    assert (
        others.join(after.select("id", "user_id"), on="id")
        .filter(pl.col("user_id") != pl.col("user_id_right"))
        .is_empty()
    )


def test_a_range_run_moves_to_a_new_csm_what_its_first_day_would(
    sample_dir: Path, tmp_path: Path
) -> None:
    """After a CSM change, a range run moves the account's insights open on its first day, as
    the first of its days run one by one would: not only those still open on its last day (an
    insight that lapsed within the range stayed with the old CSM, trial 6: 13 of 41)."""
    source = Path(shutil.copytree(sample_dir, tmp_path / "source"))
    start, work = END - timedelta(days=12), tmp_path / "work"
    first = start + timedelta(days=1)
    assert materialise_day(source, work, ["*"], day=start).success
    before = table(f"duckdb:///{work / 'i.duckdb'}")
    # which insights open on the first day lapse within the range (no CSM change yet)
    probe = Path(shutil.copytree(work, tmp_path / "probe"))
    with dg.instance_for_test() as instance:
        run(resources(source, f"duckdb:///{probe / 'i.duckdb'}", probe), first, END, instance)
    lapsed = (
        before.filter(pl.col("expires_at").dt.date() > first)
        .select("id", "customer_id")
        .join(table(f"duckdb:///{probe / 'i.duckdb'}").select("id", "expires_at"), on="id")
        .filter(pl.col("expires_at").dt.date() <= END)  # not open on the last day's start
    )
    assert lapsed.height > 0, "the sample must have an insight lapsing within the range"
    moved = lapsed["customer_id"][0]
    customers = pl.read_parquet(source / "customers.parquet")
    old = customers.filter(pl.col("customer_id") == moved)["csm_user_id"][0]
    new = customers.filter(pl.col("csm_user_id") != old)["csm_user_id"][0]
    customers.with_columns(
        pl.when(pl.col("customer_id") == moved)
        .then(pl.lit(new))
        .otherwise("csm_user_id")
        .alias("csm_user_id")
    ).write_parquet(source / "customers.parquet")
    days = Path(shutil.copytree(work, tmp_path / "days"))
    with dg.instance_for_test() as instance:
        run(resources(source, f"duckdb:///{work / 'i.duckdb'}", work), first, END, instance)
        by_days = resources(source, f"duckdb:///{days / 'i.duckdb'}", days)
        run(by_days, first, first, instance)
        run(by_days, first + timedelta(days=1), END, instance)
    ranged, daily = table(f"duckdb:///{work / 'i.duckdb'}"), table(f"duckdb:///{days / 'i.duckdb'}")
    theirs = ranged.filter(
        pl.col("id").is_in(lapsed.filter(pl.col("customer_id") == moved)["id"].implode())
    )
    assert theirs.height > 0 and set(theirs["user_id"]) == {new}
    assert ranged.select("id", "user_id").equals(daily.select("id", "user_id"))


def test_attendees_of_unknown_meetings_or_contacts_are_quarantined_not_dropped(
    sample_dir: Path, tmp_path: Path
) -> None:
    """An attendee of a meeting the table does not hold, of a meeting set aside (its customer is
    unknown), or of a contact the table does not hold is an unknown id: quarantined and
    counted. An attendee of a meeting outside the run's window is not needed: neither kept nor
    quarantined."""
    source = Path(shutil.copytree(sample_dir, tmp_path / "source"))
    meetings = pl.read_parquet(source / "meetings.parquet")
    attendees = pl.read_parquet(source / "meeting_attendees.parquet")
    recent = meetings.filter(pl.col("start_at").dt.date() > END - timedelta(days=30)).row(
        0, named=True
    )
    contact = attendees.filter(pl.col("meeting_id") == recent["meeting_id"])["contact_id"][0]
    long_ago = END - timedelta(days=Settings().engagement.history_days + 30)
    added_meetings = pl.DataFrame(
        [
            {**recent, "meeting_id": "M-ORPHAN", "customer_id": "nobody"},
            {
                **recent,
                "meeting_id": "M-OLD",
                "start_at": recent["start_at"].replace(
                    year=long_ago.year, month=long_ago.month, day=long_ago.day
                ),
            },
        ],
        schema=meetings.schema,
    )
    pl.concat([meetings, added_meetings]).write_parquet(source / "meetings.parquet")
    added = pl.DataFrame(
        {
            "meeting_id": ["M-NOPE", "M-ORPHAN", recent["meeting_id"], "M-OLD"],
            "contact_id": [contact, contact, "K-NOPE", contact],
        }
    )
    pl.concat([attendees, added]).write_parquet(source / "meeting_attendees.parquet")
    work = tmp_path / "work"
    result = materialise_day(source, work, ["accounts", "usage_window", "activity_window"])
    assert result.success
    report = result.asset_materializations_for_node("activity_window")[0].metadata["validation"]
    counts = report.value["meeting_attendees"]  # type: ignore[index]
    assert counts["unknown_ids"] == 3 and counts["quarantined"] == 3, counts
    assert counts["rows_read"] == counts["rows_kept"] + 3
    quarantined = pl.read_parquet(counts["quarantine_file"])
    assert sorted(quarantined["meeting_id"]) == sorted(["M-NOPE", "M-ORPHAN", recent["meeting_id"]])
    assert set(quarantined["quarantine_reason"]) == {"unknown_id"}
    bundle = work / "intermediate" / "activity_window" / f"{END}__{END}"
    kept = pl.read_parquet(bundle / "meeting_attendees.parquet")
    assert kept.height == counts["rows_kept"]
    assert not kept["meeting_id"].is_in(["M-NOPE", "M-ORPHAN", "M-OLD"]).any()
    assert not (kept["contact_id"] == "K-NOPE").any()
    # every other attendee of a meeting in the window is kept
    window = pl.read_parquet(bundle / "meetings.parquet")["meeting_id"]
    assert kept.height == attendees.filter(pl.col("meeting_id").is_in(window.implode())).height


def test_days_whose_usage_value_was_quarantined_raise_no_drop(
    sample_dir: Path, tmp_path: Path
) -> None:
    """A null or negative usage value is quarantined, and its day is unknown, not 0: three such
    days at the end of a busy series raise no usage_drop (and the asset counts them), while the
    same three days delivered as real zeros do raise one."""
    usage = pl.read_parquet(sample_dir / "usage_daily.parquet")
    busiest = (
        usage.filter(pl.col("date") > END - timedelta(days=28), pl.col("metric") == "events")
        .group_by("customer_id")
        .agg(pl.col("value").min())
        .sort("value", "customer_id", descending=[True, False])
        .row(0, named=True)
    )
    assert busiest["value"] > 20
    last_days = (pl.col("customer_id") == busiest["customer_id"]) & (pl.col("metric") == "events")
    last_days = last_days & (pl.col("date") > END - timedelta(days=3))

    def drops(name: str, value: float | None) -> tuple[pl.DataFrame, dict]:
        changed = usage.with_columns(
            pl.when(last_days).then(pl.lit(value, pl.Float64)).otherwise("value").alias("value")
        )
        work = tmp_path / name
        source = source_with_usage(sample_dir, work / "source", changed)
        selection = ["accounts", "usage_window", "usage_baselines", "usage_anomalies"]
        result = materialise_day(source, work, selection)
        assert result.success
        day = END.isoformat()
        signals = pl.read_parquet(
            work / "intermediate" / "usage_anomalies" / f"{day}__{day}.parquet"
        )
        meta = result.asset_materializations_for_node("usage_anomalies")[0].metadata
        mine = signals.filter(
            (pl.col("customer_id") == busiest["customer_id"]) & (pl.col("subject") == "events")
        )
        return mine, {k: v.value for k, v in meta.items()}

    zeros, zero_meta = drops("zeros", 0.0)
    assert zeros["type"].to_list() == ["usage_drop"] and zero_meta["unknown_usage_days"] == 0
    for name, value in (("negative", -5.0), ("null", None)):
        unknown, meta = drops(name, value)
        assert unknown.height == 0, name
        assert meta["unknown_usage_days"] == 3, name


def test_a_quarantine_file_is_that_of_the_latest_run_over_its_days(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Days whose values were quarantined are read back from the quarantine file of the same
    days (and account shard): a run over them that quarantines nothing - the source fixed -
    removes it, so no later detector takes a fixed day for unknown."""
    from insight_pipeline.defs.sources.assets import (
        shard_label,
        unknown_usage_days,
        write_quarantine,
    )

    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path))
    bad = pl.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2"],
            "date": [END, END, END],
            "metric": ["events", "events", "dau"],
            "value": [-1.0, -1.0, 3.0],
            "quarantine_reason": ["negative_value", "negative_value", "duplicate_key"],
        }
    )
    one_of_two = shard_label(0, 2)
    written = write_quarantine("usage_daily", bad, str(END), str(END), one_of_two)
    assert written is not None and one_of_two in written
    unknown = unknown_usage_days(END, END, one_of_two)
    assert unknown.rows() == [("C1", "events", END)]  # a duplicate's day is known
    assert unknown_usage_days(END, END).height == 0  # another shard's file is not this run's
    assert write_quarantine("usage_daily", bad.clear(), str(END), str(END), one_of_two) is None
    assert unknown_usage_days(END, END, one_of_two).height == 0


def test_a_short_usage_history_is_said_in_the_windows_metadata(
    sample_dir: Path, tmp_path: Path
) -> None:
    """A source whose usage begins 20 days before the run's day (a short extract, a source just
    connected) runs, and `usage_window` says from when its series are judged (trial 8: no
    usage rule could run, and nothing said why); a long history says nothing of the kind."""
    usage = pl.read_parquet(sample_dir / "usage_daily.parquet")
    began = END - timedelta(days=20)
    source = source_with_usage(
        sample_dir, tmp_path / "source", usage.filter(pl.col("date") >= began)
    )
    short = materialise_day(source, tmp_path / "short", ["accounts", "usage_window"])
    assert short.success
    meta = short.asset_materializations_for_node("usage_window")[0].metadata
    assert meta["history_days"].value == 20
    note = meta["short_history"].value
    assert f"begins on {began}, 20 days before the run's first day {END}" in note
    assert f"week against week from {began + timedelta(days=20)}" in note
    assert f"day by day from {began + timedelta(days=42)}" in note
    full = materialise_day(sample_dir, tmp_path / "full", ["accounts", "usage_window"])
    meta = full.asset_materializations_for_node("usage_window")[0].metadata
    assert meta["history_days"].value == Settings().lookback_days
    assert "short_history" not in meta

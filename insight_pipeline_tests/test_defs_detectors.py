"""Every insight type on generated data, through the real asset graph: each planted pattern is
found on the right account within its stated delay (evaluation.MAX_DELAY_DAYS), clean accounts
stay quiet, and a partition run on a source cut at D (contacts, churn and all activity as of D)
gives exactly the same insights as on the full source (no look-ahead)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from insight_pipeline.definitions import ALL_ASSETS
from insight_pipeline.defs.metadata import markdown_preview
from insight_pipeline.evaluation import detection_quality, false_alarm_rate
from insight_pipeline.lib.contract import CONTRACT, Source
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.sample import generate_sample
from insight_pipeline_tests.test_defs_pipeline import resources

END = date(2026, 6, 30)
FIRST = END - timedelta(days=149)

# Minimum recall per type on this sample (planted patterns found within their stated delay).
MIN_RECALL = {
    "usage_drop": 0.8,
    "usage_spike": 0.6,
    "adoption_trend": 0.8,
    "declining_usage": 0.7,
    "usage_pattern_change": 0.6,
    "feature_discovery": 0.8,
    "going_dark": 0.8,
    "stakeholder_shift": 0.8,
    "silent_account": 0.8,
    "champion_left": 0.9,
    "health_drop": 0.8,
    "support_surge": 0.8,
    "detractor_nps": 0.9,
    "entitlement_limit": 0.8,
    "case_study_candidate": 0.6,
    "referral_candidate": 0.6,
}


def run_range(source: Path, work: Path, first: date, last: date) -> pl.DataFrame:
    url = f"duckdb:///{work / 'insights.duckdb'}"
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            ALL_ASSETS, resources=resources(source, url, work), tags=tags, instance=instance
        )
    assert result.success
    store = InsightStore(url)
    try:
        return store.get_insights()
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Path]:
    root = tmp_path_factory.mktemp("detectors")
    generate_sample(root / "src", accounts=400, days=330, seed=5, end_date=END)
    return run_range(root / "src", root, FIRST, END), root / "src"


def test_every_planted_type_is_found_in_time(evaluated: tuple[pl.DataFrame, Path]) -> None:
    insights, src = evaluated
    truth = pl.read_csv(src / "ground_truth.csv", try_parse_dates=True)
    quality = detection_quality(insights, truth, FIRST, END, types=list(MIN_RECALL))
    failures = []
    for row in quality.iter_rows(named=True):
        if row["planted"] == 0:
            continue
        if row["recall"] < MIN_RECALL[row["type"]]:
            failures.append(f"{row['type']}: {row['found']}/{row['planted']}")
    assert not failures, f"recall below target: {failures}\n{quality}"
    assert quality.filter(pl.col("planted") > 0).height >= 12, "the sample must plant most types"


def test_clean_accounts_stay_quiet(evaluated: tuple[pl.DataFrame, Path]) -> None:
    insights, src = evaluated
    truth = pl.read_csv(src / "ground_truth.csv", try_parse_dates=True)
    customers = Source(str(src)).read("customers")
    assert customers is not None
    rate, clean = false_alarm_rate(insights, truth, customers, FIRST, END)
    assert clean >= 100
    assert rate < 1.0, f"{rate:.2f} pattern insights per clean account per quarter"


def test_no_insight_stays_open_past_its_customers_churn(
    evaluated: tuple[pl.DataFrame, Path],
) -> None:
    """An account that churned is no one's work: its insights raised before the churn expire on
    the churn day at the latest, so the feed, digests and rollups stop showing them."""
    insights, src = evaluated
    customers = Source(str(src)).read("customers")
    assert customers is not None
    churned = customers.filter(pl.col("churned_on") <= END).select("customer_id", "churned_on")
    theirs = insights.join(churned, on="customer_id")
    assert theirs.height > 20, "the sample must raise insights on accounts that later churn"
    still_open = theirs.filter(
        pl.col("expires_at").is_null() | (pl.col("expires_at").dt.date() > pl.col("churned_on"))
    )
    assert still_open.height == 0, still_open.select("customer_id", "type", "expires_at")


def test_every_type_has_evidence_and_a_narrative(evaluated: tuple[pl.DataFrame, Path]) -> None:
    insights, _ = evaluated
    assert insights["type"].n_unique() >= 18
    for column in ("title", "summary", "so_what", "recommended_action", "evidence"):
        text = insights[column].cast(pl.String)
        assert text.is_not_null().all(), column
        assert not text.str.contains(r"\bNone\b|\bnan\b").any(), column
    assert (insights["evidence"] != "[]").all()


def cut_source(src: Path, out: Path, day: date) -> Path:
    """The source as it looked at the end of `day`: nothing dated later, contacts and churn as of
    that day (renewal dates are contract facts known in advance, so they stay)."""
    out.mkdir(parents=True, exist_ok=True)
    source = Source(str(src))
    for table, spec in CONTRACT.items():
        frame = source.read(table)
        if frame is None:
            continue
        column = spec.date_column
        if column:
            value = pl.col(column)
            value = value.dt.date() if frame.schema[column] != pl.Date else value
            frame = frame.filter(value <= day)
        if table == "contacts":
            frame = frame.filter(
                pl.col("started_on").is_null() | (pl.col("started_on") <= day)
            ).with_columns(pl.when(pl.col("left_on") <= day).then(pl.col("left_on")))
        if table == "customers":
            frame = frame.with_columns(
                pl.when(pl.col("churned_on") <= day).then(pl.col("churned_on"))
            )
        if table == "support_tickets":
            frame = frame.with_columns(
                pl.when(pl.col("closed_at").dt.date() <= day).then(pl.col("closed_at"))
            )
        if table == "meeting_attendees":
            continue
        frame.write_parquet(out / f"{table}.parquet")
    attendees = source.read("meeting_attendees")
    meetings = pl.read_parquet(out / "meetings.parquet")
    assert attendees is not None
    attendees.filter(pl.col("meeting_id").is_in(meetings["meeting_id"].implode())).write_parquet(
        out / "meeting_attendees.parquet"
    )
    return out


def test_no_look_ahead_for_any_detector(
    evaluated: tuple[pl.DataFrame, Path], tmp_path: Path
) -> None:
    _, src = evaluated
    day = END - timedelta(days=45)
    full = run_range(src, tmp_path / "full", day, day)
    cut = run_range(cut_source(src, tmp_path / "cut", day), tmp_path / "cutrun", day, day)
    columns = [
        "customer_id",
        "type",
        "subject",
        "priority",
        "score",
        "title",
        "summary",
        "evidence",
    ]
    assert full.height > 20
    assert full.select(columns).sort(columns[:3]).equals(cut.select(columns).sort(columns[:3]))


def test_a_metadata_preview_says_how_many_rows_it_leaves_out() -> None:
    """Trial 11: `population_days` showed 20 of 349 rows without saying so."""
    frame = pl.DataFrame({"metric": ["dau"] * 25, "n": list(range(25))})
    shown = markdown_preview(frame, ["metric", "n"], rows=20).value
    assert shown.count("| dau |") == 20 and shown.endswith("_the first 20 of 25 rows_")
    whole = markdown_preview(frame.head(20), ["metric", "n"], rows=20).value
    assert "rows_" not in whole and whole.count("| dau |") == 20

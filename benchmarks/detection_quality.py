"""Detection-quality report: run the real asset graph over a range of generated data and score
the insights table against the ground truth (per type: recall, median delay, precision), plus
the false-alarm rate on clean accounts.

    .venv/bin/python benchmarks/detection_quality.py --accounts 600 --days 365 --range-days 270
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from insight_pipeline.definitions import ALL_ASSETS
from insight_pipeline.defs.resources import (
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
)
from insight_pipeline.evaluation import churn_lead_times, detection_quality, false_alarm_rate
from insight_pipeline.lib.contract import Source
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.sample import generate_sample


def run_pipeline(source: Path, work: Path, first: date, last: date) -> pl.DataFrame:
    url = f"duckdb:///{work / 'insights.duckdb'}"
    resources = {
        "source": SourceResource(location=str(source)),
        "store": StoreResource(url=url),
        "narrator": NarratorResource(use_claude=False),
        "settings": SettingsResource(),
        "io_manager": PolarsParquetIOManager(base_dir=str(work / "intermediate")),
    }
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(ALL_ASSETS, resources=resources, tags=tags, instance=instance)
    if not result.success:
        raise SystemExit("the pipeline run failed")
    store = InsightStore(url)
    try:
        return store.get_insights()
    finally:
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=600)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--range-days", type=int, default=270)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    end = date(2026, 10, 31)
    first = end - timedelta(days=args.range_days - 1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate_sample(
            work / "src", accounts=args.accounts, days=args.days, seed=args.seed, end_date=end
        )
        insights = run_pipeline(work / "src", work, first, end)
        truth = pl.read_csv(work / "src" / "ground_truth.csv", try_parse_dates=True)
        customers = Source(str(work / "src")).read("customers")
    assert customers is not None
    quality = detection_quality(insights, truth, first, end)
    rate, n_clean = false_alarm_rate(insights, truth, customers, first, end)
    with pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=200):
        print(quality)
    print(f"false alarms: {rate:.3f} insights per clean account per quarter ({n_clean} clean)")
    print(f"insights raised: {insights.height}")
    leads = churn_lead_times(insights, customers, first, end)
    warned = leads.filter(pl.col("lead_days").is_not_null())
    print(
        f"churned accounts in range: {leads.height}; warned: {warned.height}; "
        f"median lead {warned['lead_days'].median()} days; "
        f"warned 30+ days ahead: {warned.filter(pl.col('lead_days') >= 30).height}"
    )


if __name__ == "__main__":
    main()

"""`insight-pipeline simulate`: a short run of the real pipeline with simulated CSMs, through the
command line. Its reactions reach the store through the API's write path, quality metrics are
written, and the output ends with the data contract's line. The trend itself (relevance rising,
critical risks kept) is tested fast, on the same pieces in memory, in test_lib_ranking.py."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from insight_pipeline.cli import main
from insight_pipeline.lib.simulation import make_team
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.simulation import END_DATE

LAST_LINE = re.compile(
    r"^relevance=(\d\.\d{3}|nan) action=(\d\.\d{3}|nan) critical_recall=(\d\.\d{3}|nan)$"
)


def test_simulate_command_runs_the_loop_and_prints_the_contract_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    days = 8
    keep = tmp_path / "sim"
    code = main(["simulate", "--days", str(days), "--accounts", "100", "--keep", str(keep)])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert LAST_LINE.match(out[-1]), out[-1]
    assert out[0].startswith("week")
    assert len([line for line in out if re.match(r"^\s+\d+\s+\d{4}-", line)]) == 2  # 1 + 7 days

    first = END_DATE - timedelta(days=days - 1)
    store = InsightStore(f"duckdb:///{keep / 'insights.duckdb'}")
    try:
        events = store.feedback_events()
        quality = store.quality(first, END_DATE, window_days=28, scope="overall")
    finally:
        store.dispose()
    summary = re.search(r"(\d+) reactions", "\n".join(out))
    assert summary is not None
    reactions = int(summary.group(1))
    assert events.height == reactions > 0
    acted_days = events["created_at"].dt.date().unique()
    assert acted_days.min() >= first and acted_days.max() <= END_DATE
    csms = pl.read_parquet(keep / "source" / "users.parquet").filter(pl.col("role") == "csm")
    assert set(events["user_id"]) <= set(csms["user_id"])
    assert quality.height == days
    assert quality["acted"][-1] == events["insight_id"].n_unique()


def test_team_tastes_are_reproducible_and_differ_by_archetype() -> None:
    users = [f"U{i:04d}" for i in range(8)]
    team = make_team(users, seed=7)
    assert team.equals(make_team(users, seed=7))
    assert team["archetype"].n_unique() == 4
    assert team.group_by("user_id").len()["len"].n_unique() == 1
    spread = team.group_by("type").agg(pl.col("relevance").max() - pl.col("relevance").min())
    assert spread["relevance"].max() > 0.5  # some types split the team

"""The CSM feedback simulation behind `insight-pipeline simulate --days N`.

It answers "does the feedback loop make the insights more useful, without losing the churn
risks?" with the real pipeline, not a model of it:

1. generate sample data (300 accounts, fixed seed) with its ground truth, in a temp directory;
2. run the detection assets once for the whole window (signals do not depend on feedback),
   plus a warm-up fortnight of the ranking chain, so the first simulated week is not the
   backlog of every pattern already open;
3. for each simulated day D: materialise the ranking chain (`user_preferences`,
   `insight_candidates`, `insights`, `insights_table`) for D alone, in-process, as the daily
   schedule would; each simulated CSM (lib/simulation.py) then reads what they were pushed on D
   (`InsightStore.pushed_insights`) and reacts through `InsightStore.record_action`, the API's
   write path, at 10:00 on D, so D + 1 learns from it and D does not (no look-ahead);
4. materialise `insight_quality` for the window and report relevance and action rates by week
   and the recall of planted critical risks pushed within 7 days.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from insight_pipeline.definitions import ALL_ASSETS
from insight_pipeline.defs.partitions import daily_partitions
from insight_pipeline.defs.resources import (
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
)
from insight_pipeline.lib.settings import Settings
from insight_pipeline.lib.simulation import critical_recall, make_team, react, weekly_quality
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.sample import generate_sample

END_DATE = date(2026, 6, 30)
"""Last simulated day: fixed, so the same arguments always give the same table."""
CHAIN = ("user_preferences", "insight_candidates", "insights", "insights_table")
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
READ_HOUR = 9
"""Simulated CSMs read what they were pushed at 09:00 UTC (after the morning run)."""


@dataclass(frozen=True)
class SimulationResult:
    """What the simulation measured; `weekly` has week, first_day, last_day, acted, relevance,
    action (see lib/ranking/quality.py for the definitions)."""

    weekly: pl.DataFrame
    critical_recall: float | None
    critical_planted: int
    critical_pushed: int
    pushed: int
    reactions: int
    team: pl.DataFrame
    seconds: float

    @property
    def relevance(self) -> float | None:
        """Relevance rate of the last simulated week."""
        return self.weekly["relevance"][-1] if self.weekly.height else None

    @property
    def action(self) -> float | None:
        """Action rate of the last simulated week."""
        return self.weekly["action"][-1] if self.weekly.height else None


def run_simulation(
    days: int = 60,
    *,
    accounts: int = 300,
    seed: int = 7,
    warmup_days: int = 14,
    overrides: dict[str, Any] | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Simulate `days` days of a CSM team reacting to the pipeline's pushes (see the module
    docstring); deterministic for given arguments. `overrides` are settings overrides as the
    `settings` resource takes them (to try other ranking parameters); `workdir` keeps the files
    (else a temp dir)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    args = (days, accounts, seed, warmup_days, overrides or {})
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return _simulate(*args, workdir, progress)
    with tempfile.TemporaryDirectory(prefix="insight-sim-") as tmp:
        return _simulate(*args, Path(tmp), progress)


def _simulate(
    days: int,
    accounts: int,
    seed: int,
    warmup_days: int,
    overrides: dict[str, Any],
    work: Path,
    progress: Callable[[str], None] | None,
) -> SimulationResult:
    say = progress or (lambda _message: None)
    started = time.monotonic()
    settings = Settings.from_dict(overrides)
    last = END_DATE
    first = last - timedelta(days=days - 1)
    warm_first = first - timedelta(days=warmup_days)
    # the detectors need `lookback_days` of history before the first partition they judge
    history = max(240, days + warmup_days + settings.lookback_days + 14)
    source = work / "source"
    say(f"sample: {accounts} accounts x {history} days (seed {seed}) -> {source}")
    generate_sample(source, accounts=accounts, days=history, seed=seed, end_date=last)
    url = f"duckdb:///{work / 'insights.duckdb'}"
    defs = _definitions(source, url, work, overrides)
    store = InsightStore(url)
    store.migrate()
    try:
        # an in-memory instance: run history of a throwaway simulation is not worth a file
        with dg.DagsterInstance.ephemeral() as instance:

            def run(job: str, lo: date, hi: date) -> None:
                result = defs.resolve_job_def(job).execute_in_process(
                    instance=instance,
                    run_config=QUIET_LOGS,
                    tags={
                        "dagster/asset_partition_range_start": lo.isoformat(),
                        "dagster/asset_partition_range_end": hi.isoformat(),
                    },
                    raise_on_error=True,
                )
                if not result.success:
                    raise RuntimeError(f"simulation run {job} {lo}...{hi} failed")

            say(f"detection assets for {warm_first}...{last} (one run)")
            run("sim_detection", warm_first, last)
            if warmup_days:
                say(f"warm-up ranking for {warm_first}...{first - timedelta(days=1)} (one run)")
                run("sim_ranking", warm_first, first - timedelta(days=1))
            users = pl.read_parquet(source / "users.parquet")
            csms = users.filter(pl.col("role") == "csm")["user_id"].to_list()
            team = make_team(csms, seed)
            rng = np.random.default_rng(seed)
            log: list[pl.DataFrame] = []
            reactions = 0
            for offset in range(days):
                day = first + timedelta(days=offset)
                run("sim_ranking", day, day)
                read_at = datetime(day.year, day.month, day.day, READ_HOUR, tzinfo=UTC)
                pushed = store.pushed_insights(day, as_of=read_at)
                log.append(pushed.with_columns(pl.lit(day).alias("day")))
                for r in react(pushed, team, day, rng):
                    store.record_action(
                        r.insight_id, r.user_id, r.action, r.feedback, r.snooze_until, r.at
                    )
                    reactions += 1
                if offset % 7 == 6 or offset == days - 1:
                    say(f"simulated {offset + 1}/{days} days ({time.monotonic() - started:.0f}s)")
            run("sim_quality", first, last)
        events = store.feedback_events()
    finally:
        store.dispose()
    truth = pl.read_csv(source / "ground_truth.csv", try_parse_dates=True)
    pushed_log = pl.concat(log) if log else pl.DataFrame()
    recall, planted, hits = critical_recall(
        truth, pushed_log, first, last, settings.risk.silent_days
    )
    return SimulationResult(
        weekly=weekly_quality(events, first, last),
        critical_recall=recall,
        critical_planted=planted,
        critical_pushed=hits,
        pushed=pushed_log.height,
        reactions=reactions,
        team=team,
        seconds=time.monotonic() - started,
    )


def _definitions(source: Path, url: str, work: Path, overrides: dict[str, Any]) -> dg.Definitions:
    """The project's assets with three jobs: detection (everything feedback cannot change),
    the ranking chain that feedback steers, and the quality metrics."""
    chain = dg.AssetSelection.assets(*CHAIN)
    quality = dg.AssetSelection.assets("insight_quality")
    jobs = [
        dg.define_asset_job(name, selection=selection, partitions_def=daily_partitions)
        for name, selection in (
            ("sim_detection", dg.AssetSelection.all() - chain - quality),
            ("sim_ranking", chain),
            ("sim_quality", quality),
        )
    ]
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=jobs,
        resources={
            "source": SourceResource(location=str(source)),
            "store": StoreResource(url=url),
            "narrator": NarratorResource(use_claude=False),
            "settings": SettingsResource(overrides=overrides),
            "io_manager": PolarsParquetIOManager(base_dir=str(work / "intermediate")),
        },
        executor=dg.in_process_executor,
    )


def format_result(result: SimulationResult) -> list[str]:
    """The report `insight-pipeline simulate` prints; the LAST line is the data contract's
    `relevance=<r> action=<a> critical_recall=<c>`."""

    def pct(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.1%}"

    lines = ["week  days                     acted  relevance  action"]
    lines += [
        f"{row['week']:>4}  {row['first_day']}..{row['last_day']}  {row['acted']:>6}"
        f"     {pct(row['relevance'])}  {pct(row['action'])}"
        for row in result.weekly.iter_rows(named=True)
    ]
    lines.append(
        f"pushed {result.pushed} items, {result.reactions} reactions; critical risks planted "
        f"{result.critical_planted}, pushed within 7 days {result.critical_pushed}; "
        f"{result.seconds:.0f}s"
    )

    def num(value: float | None) -> str:
        return "nan" if value is None else f"{value:.3f}"

    lines.append(
        f"relevance={num(result.relevance)} action={num(result.action)} "
        f"critical_recall={num(result.critical_recall)}"
    )
    return lines

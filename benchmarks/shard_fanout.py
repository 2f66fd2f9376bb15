"""A day fanned out by account shard, run here by Dagster itself, checked against one run.

    .venv/bin/python benchmarks/shard_fanout.py --accounts 10000 --shards 4

1. One run of the daily graph (`insight_pipeline.definitions`, in-process executor) for the day.
2. The same day through `insight_pipeline.sharded` (date x shard partitions): `dagster job
   backfill` submits one run per shard; the instance's DefaultRunCoordinator and
   DefaultRunLauncher start them at once as separate processes, and each run uses the
   multiprocess executor (independent steps - the detector families - in parallel processes).
   This script only waits for the runs (reading the instance), it schedules nothing itself.
3. Both write to PostgreSQL (Dagster's storage and the insights store: several runs write at
   once), and the two insights tables are compared: the union of the shards equals the single
   run, apart from the cross-account parts (peer benchmarks, the per-CSM push rank; README,
   "Scaling out").

On 2 cores the shards compete for the same CPUs, so this shows the mechanics and the fixed cost
per run, not a speed-up; on a cluster (dagster-k8s, dagster-celery) each run gets its own node.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Postgres, gb, measure, sample_dir

DAGSTER = str(Path(sys.executable).parent / "dagster")
DAY = date(2026, 10, 31)
INSTANCE_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
storage:
  postgres:
    postgres_db:
      username: {user}
      password: "{password}"
      hostname: {host}
      db_name: {db}
      port: 5432
      scheme: postgresql+psycopg2
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
run_launcher:
  module: dagster._core.launcher
  class: DefaultRunLauncher
"""
PER_ACCOUNT = ~pl.col("type").is_in(["outperforming", "underperforming", "cross_account_pattern"])
NOT_COMPARED = ["pushed", "rank_in_day", "created_at", "viewed_at", "actioned_at"]


def setup(work: Path, name: str, postgres: Postgres, source: Path) -> dict[str, str]:
    """A DAGSTER_HOME on PostgreSQL and an insights store database, both fresh."""
    home = work / name / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    dagster_db = postgres.create(f"fanout_{name}_dagster")
    store_db = postgres.create(f"fanout_{name}_store")["DAGSTER_PG_DB"]
    (home / "dagster.yaml").write_text(
        INSTANCE_YAML.format(
            user=dagster_db["DAGSTER_PG_USERNAME"],
            password=dagster_db["DAGSTER_PG_PASSWORD"],
            host=dagster_db["DAGSTER_PG_HOST"],
            db=dagster_db["DAGSTER_PG_DB"],
        )
    )
    store_url = postgres.url.replace("postgresql://", "postgresql+psycopg://", 1)
    store_url = store_url.rsplit("/", 1)[0] + f"/{store_db}"
    return dict(
        os.environ,
        DAGSTER_HOME=str(home),
        INSIGHTS_SOURCE=str(source),
        INSIGHTS_DATA_DIR=str(work / name / "data"),
        INSIGHTS_DATABASE_URL=store_url,
        PYTHONWARNINGS="ignore",
    )


def wait_for_backfill(env: dict[str, str], backfill_id: str, runs: int) -> list[dict]:
    """Poll the instance until the backfill's runs have all finished; their start/end times."""
    probe = (
        "import json, dagster as dg\n"
        "from dagster._core.storage.dagster_run import RunsFilter\n"
        "inst = dg.DagsterInstance.get()\n"
        f"rs = inst.get_run_records(RunsFilter(tags={{'dagster/backfill': '{backfill_id}'}}))\n"
        "print(json.dumps([{'status': r.dagster_run.status.value, 'start': r.start_time,"
        " 'end': r.end_time, 'partition': r.dagster_run.tags.get('dagster/partition'),"
        " 'run_id': r.dagster_run.run_id} for r in rs]))\n"
    )
    while True:
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        records = json.loads(out.stdout.strip().splitlines()[-1])
        done = [r for r in records if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        if len(records) == runs and len(done) == runs:
            return records
        time.sleep(2)


def failures(env: dict[str, str], run_ids: list[str]) -> str:
    """The error messages of the failed steps of `run_ids`, from the instance's event log."""
    probe = (
        "import dagster as dg\n"
        "inst = dg.DagsterInstance.get()\n"
        f"for run_id in {run_ids!r}:\n"
        "    for e in inst.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):\n"
        "        err = e.dagster_event.step_failure_data.error\n"
        "        print(run_id, e.step_key, err.message if err else '')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    return out.stdout or out.stderr[-2000:]


def insights(url: str) -> pl.DataFrame:
    from insight_pipeline.lib.store import InsightStore

    store = InsightStore(url)
    try:
        frame = store.get_insights().sort("id")
    finally:
        store.dispose()
    return frame.filter(PER_ACCOUNT).drop([c for c in NOT_COMPARED if c in frame.columns])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1/postgres")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "fanout")
    args = parser.parse_args()
    source = sample_dir(ROOT / "benchmarks" / ".work", args.accounts)
    postgres = Postgres(args.postgres_url)
    if not postgres.available():
        raise SystemExit("needs PostgreSQL (several runs write at once)")
    work = args.work.resolve()
    try:
        env = setup(work, "single", postgres, source)
        single = measure(
            [
                DAGSTER,
                "asset",
                "materialize",
                "-m",
                "insight_pipeline.definitions",
                "--select",
                "*",
                "--partition",
                DAY.isoformat(),
            ],
            env,
            work / "single.log",
        )
        if single.outcome != "ok":
            raise SystemExit(f"the single run {single.outcome}: {work / 'single.log'}")
        single_url = env["INSIGHTS_DATABASE_URL"]
        print(f"one run, daily graph: {single.seconds:.1f} s, peak {gb(single.peak_rss):.2f} GB")

        env = setup(work, "sharded", postgres, source)
        env["INSIGHTS_SHARDS"] = str(args.shards)
        partitions = ",".join(f"{DAY}|{s}" for s in range(args.shards))
        started = time.time()
        launched = measure(
            [
                DAGSTER,
                "job",
                "backfill",
                "-m",
                "insight_pipeline.sharded",
                "-j",
                "sharded_insights_job",
                "--partitions",
                partitions,
                "--noprompt",
            ],
            env,
            work / "backfill.log",
        )
        if launched.outcome != "ok":
            raise SystemExit(f"dagster job backfill {launched.outcome}: {work / 'backfill.log'}")
        backfill_id = re.findall(
            r"Launched backfill job `([^`]+)`", (work / "backfill.log").read_text()
        )[0]
        records = wait_for_backfill(env, backfill_id, args.shards)
        wall = max(r["end"] for r in records) - started
        print(
            f"{args.shards} shard runs launched by `dagster job backfill` "
            f"({launched.seconds:.1f} s to submit), all finished after {wall:.1f} s:"
        )
        for r in sorted(records, key=lambda r: r["partition"]):
            print(f"  {r['partition']}: {r['status']}, {r['end'] - r['start']:.1f} s")
        if any(r["status"] != "SUCCESS" for r in records):
            print(failures(env, [r["run_id"] for r in records if r["status"] != "SUCCESS"]))
            raise SystemExit("a shard run failed")
        expected, got = insights(single_url), insights(env["INSIGHTS_DATABASE_URL"])
        print(
            f"insights (per-account types): one run {expected.height}, shards {got.height}; "
            f"identical: {got.equals(expected)}"
        )
    finally:
        postgres.drop_all()


if __name__ == "__main__":
    main()

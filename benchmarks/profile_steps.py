"""Where a run's time goes: every step's wall time in one in-process materialisation, and
optionally a pyinstrument profile of the whole run (profile before optimising).

    DAGSTER_HOME=... INSIGHTS_SOURCE=... INSIGHTS_DATA_DIR=... INSIGHTS_DATABASE_URL=... \\
        .venv/bin/python benchmarks/profile_steps.py 2026-10-31 [2026-10-31] [--profile out.txt]

Runs the whole daily graph over the given day (or range, as one run) on the instance and
resources the environment names, then prints each step's duration (from Dagster's own
STEP_START / STEP_SUCCESS events), longest first.

The run goes through `dg.execute_job`, as `dagster asset materialize` does, not
`execute_in_process`: the latter keeps every step's returned value in memory until the run ends
(for `output_for_node`), which would hold the whole activity bundle and misstate memory.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dagster as dg


def step_durations(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, str]]:
    """(seconds, step key) per step of the run, longest first."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = record.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            ends[event.step_key] = record.timestamp
    return sorted(((ends[k] - starts[k], k) for k in starts if k in ends), reverse=True)


def asset_job() -> dg.JobDefinition:
    """Every asset and check, as `--select '*'` (reconstructable: `execute_job` loads it by
    reference)."""
    from insight_pipeline.definitions import defs

    job = dg.define_asset_job(
        "profile_all_assets", selection=dg.AssetSelection.all(), executor_def=dg.in_process_executor
    )
    return job.resolve(asset_graph=defs.resolve_asset_graph())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="first partition day (YYYY-MM-DD)")
    parser.add_argument("last", nargs="?", help="last partition day (default: first)")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile here")
    args = parser.parse_args()
    last = args.last or args.first

    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        tags = {
            "dagster/asset_partition_range_start": args.first,
            "dagster/asset_partition_range_end": last,
        }
        result = dg.execute_job(
            dg.reconstructable(asset_job), instance=instance, tags=tags, raise_on_error=False
        )
        wall = time.perf_counter() - started
        durations = step_durations(instance, result.run_id)
    if profiler is not None:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=True, color=False))
        if profiler.last_session is not None:  # re-render later: pyinstrument --load=...
            profiler.last_session.save(str(args.profile.with_suffix(".pyisession")))
    for seconds, key in durations:
        print(f"{seconds:7.2f} s  {key}")
    print(
        f"{sum(s for s, _ in durations):7.2f} s  all steps; {wall:.2f} s wall with imports "
        f"({'success' if result.success else 'FAILED'})"
    )
    if profiler is not None:
        print(f"profile: {args.profile}")


if __name__ == "__main__":
    main()

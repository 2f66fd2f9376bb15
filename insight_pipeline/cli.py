"""`insight-pipeline`: the command line of the product (see the data contract's command table)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date, timedelta
from pathlib import Path

from insight_pipeline.lib.paths import PROJECT_ROOT, data_dir, default_database_url


def _run_range(first: date, last: date) -> bool:
    """Materialises every asset of the daily job for [first, last] as ONE run."""
    import dagster as dg

    from insight_pipeline.definitions import defs

    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(PROJECT_ROOT)
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("daily_insights_job")
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        raise_on_error=False,
    )
    return result.success


def cmd_sample(args: argparse.Namespace) -> int:
    from insight_pipeline.sample import generate_sample

    end = date.fromisoformat(args.end_date) if args.end_date else None
    counts = generate_sample(
        Path(args.out),
        accounts=args.accounts,
        days=args.days,
        seed=args.seed,
        end_date=end,
        fmt=args.format,
    )
    for table, rows in counts.items():
        print(f"{table:22s} {rows:>12,d} rows")
    print(f"wrote {args.out} (ground truth in ground_truth.csv)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from insight_pipeline.lib.store import InsightStore
    from insight_pipeline.sample import generate_sample

    sample_dir = Path(os.environ.get("INSIGHTS_SOURCE") or data_dir() / "sample")
    end = date.today() - timedelta(days=1)
    if args.regenerate or not (sample_dir / "customers.parquet").exists():
        print(
            f"generating sample data: {args.accounts} accounts x {args.days} days -> {sample_dir}"
        )
        generate_sample(
            sample_dir, accounts=args.accounts, days=args.days, seed=args.seed, end_date=end
        )
    os.environ.setdefault("INSIGHTS_SOURCE", str(sample_dir))
    first = end - timedelta(days=args.partitions - 1)
    print(f"materialising partitions {first}...{end} as one run ...")
    if not _run_range(first, end):
        print("the run failed; open the Dagster UI (`dagster dev`) to see which step and why")
        return 1
    store = InsightStore(default_database_url())
    top = store.query_insights(limit=args.top, as_of=None)
    total = store.count_insights()
    store.dispose()
    print(f"\n{total} insights in the store. Top {min(args.top, top.height)} open insights:\n")
    for row in top.iter_rows(named=True):
        print(f"[{row['priority']:>6}] {row['score']:.2f}  {row['customer_name']}: {row['title']}")
        print(f"         {row['summary']}")
    print(
        "\nWhere to look next:\n"
        f"  insights store : {default_database_url()}\n"
        f"  sample source  : {sample_dir} (ground_truth.csv lists the planted patterns)\n"
        "  Dagster UI     : DAGSTER_HOME=$PWD .venv/bin/dagster dev  (then http://127.0.0.1:3000)\n"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="insight-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="sample data, recent partitions, top insights printed")
    demo.add_argument("--accounts", type=int, default=300)
    demo.add_argument("--days", type=int, default=365)
    demo.add_argument("--partitions", type=int, default=60, help="recent days to materialise")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--top", type=int, default=10)
    demo.add_argument("--regenerate", action="store_true", help="rewrite the sample data")
    demo.set_defaults(func=cmd_demo)

    sample = sub.add_parser("sample", help="write a sample source directory with ground truth")
    sample.add_argument("--out", required=True)
    sample.add_argument("--accounts", type=int, default=200)
    sample.add_argument("--days", type=int, default=365)
    sample.add_argument("--seed", type=int, default=7)
    sample.add_argument("--end-date", default=None, help="last day (default: yesterday)")
    sample.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    sample.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

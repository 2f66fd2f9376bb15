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
        # The terminal shows the insights; step-by-step logs stay in the Dagster UI.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        raise_on_error=False,
    )
    return result.success


def iso_day(text: str) -> date:
    """A day argument as YYYY-MM-DD: anything else is a usage error naming it (exit 2), not a
    traceback (exit 1 is a failed delivery)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day as YYYY-MM-DD") from None


def cmd_sample(args: argparse.Namespace) -> int:
    from insight_pipeline.sample import generate_sample

    end = args.end_date
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


def cmd_digest(args: argparse.Namespace) -> int:
    """Deliver day D's digests by hand: the asset's code path, so it is just as idempotent."""
    from insight_pipeline.defs.digest.assets import deliver_days
    from insight_pipeline.defs.digest.resources import DigestResource, EmailResource
    from insight_pipeline.defs.resources import SettingsResource, SourceResource, StoreResource

    day = args.date
    run = deliver_days(
        day,
        day,
        store=StoreResource(),
        source=SourceResource(),
        settings=SettingsResource(),
        email=EmailResource(),
        digest=DigestResource(),
        max_age_days=None,
    )
    counts = run.report.counts()
    print(f"digests of {day} via {run.transport} (users from the {run.directory}):")
    print(
        f"  sent={counts['sent']} already_sent={counts['already_sent']} "
        f"in_flight={counts['in_flight']} failed={counts['failed']} "
        f"nothing_to_send={run.nothing_to_send}"
    )
    for failure in run.report.failed:
        print(
            f"  FAILED {failure.kind} for {failure.user_id} after {failure.attempts} "
            f"attempt(s): {failure.error}"
        )
    return 1 if run.report.failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The API and web feed over INSIGHTS_DATABASE_URL (charts read INSIGHTS_SOURCE)."""
    import uvicorn

    print(f"serving {default_database_url()} on http://{args.host}:{args.port}/feed", flush=True)
    uvicorn.run(
        "insight_pipeline.api.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=not args.no_access_log,
        log_level=args.log_level,
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Create, list or revoke API tokens; `create` prints only the token on stdout."""
    from datetime import UTC, datetime

    from insight_pipeline.lib.access import directory_from_source
    from insight_pipeline.lib.paths import default_source
    from insight_pipeline.lib.store import InsightStore

    store = InsightStore(default_database_url())
    try:
        store.migrate()
        if args.token_command == "revoke":
            if not store.revoke_token(args.token_id):
                print(f"no token {args.token_id!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.token_id}", file=sys.stderr)
            return 0
        if store.get_user(args.user_id) is None:
            # the team_directory asset normally keeps users current; before its first run,
            # take the directory from the source so a fresh install can log in
            users, _report = directory_from_source(default_source())
            store.sync_users(users)
        if args.token_command == "list":
            for row in store.list_tokens(args.user_id).iter_rows(named=True):
                state = "revoked" if row["revoked_at"] else "active"
                print(
                    f"{row['token_id']}  {state:8s} created {row['created_at']:%Y-%m-%d}  "
                    f"expires {row['expires_at'] or 'never'}  {row['label'] or ''}"
                )
            return 0
        expires = None
        if args.expires_days:
            expires = datetime.now(UTC) + timedelta(days=args.expires_days)
        try:
            token_id, token = store.create_token(args.user_id, expires_at=expires, label=args.label)
        except LookupError as exc:
            print(f"{exc}; is the user in the source's users table?", file=sys.stderr)
            return 1
        print(token)
        print(
            f"token {token_id} for {args.user_id}, expires {expires or 'never'}; it is shown "
            f"once (only its hash is stored). Revoke: insight-pipeline token revoke {token_id}",
            file=sys.stderr,
        )
        return 0
    finally:
        store.dispose()


def cmd_simulate(args: argparse.Namespace) -> int:
    """The CSM feedback simulation; progress on stderr, the weekly table on stdout, and the
    data contract's `relevance=<r> action=<a> critical_recall=<c>` as the last line."""
    from insight_pipeline.simulation import format_result, run_simulation

    result = run_simulation(
        args.days,
        accounts=args.accounts,
        seed=args.seed,
        workdir=Path(args.keep) if args.keep else None,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print("\n".join(format_result(result)))
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
    sample.add_argument(
        "--end-date", type=iso_day, default=None, help="last day (default: yesterday)"
    )
    sample.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    sample.set_defaults(func=cmd_sample)

    digest = sub.add_parser(
        "digest",
        help="build and deliver the digests of day D (what the sensor triggers); idempotent",
        description="Build and deliver every digest of day D once: sent ones are never sent "
        "again, failed ones are retried. SMTP from INSIGHTS_SMTP_URL, else .eml files in "
        "INSIGHTS_OUTBOX_DIR. Exits 1 when a digest failed.",
    )
    digest.add_argument("--date", type=iso_day, required=True, help="the day D (YYYY-MM-DD)")
    digest.set_defaults(func=cmd_digest)

    serve = sub.add_parser("serve", help="the API and web feed (FastAPI on uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--no-access-log", action="store_true")
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="API tokens: create USER_ID | list USER_ID | revoke ID")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="print a new bearer token for USER_ID")
    create.add_argument("user_id")
    create.add_argument("--expires-days", type=float, default=None, help="default: never")
    create.add_argument("--label", default=None, help="what the token is for")
    listing = token_sub.add_parser("list", help="a user's tokens (ids and dates, never secrets)")
    listing.add_argument("user_id")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    token.set_defaults(func=cmd_token)

    simulate = sub.add_parser(
        "simulate",
        help="simulated CSMs react to the pipeline day by day; relevance and action by week",
        description="Generates sample data, runs the real pipeline one day at a time while a "
        "team of simulated CSMs with hidden preferences reacts to what they are pushed "
        "(through the API's write path), and prints relevance and action rates by week. The "
        "last line is `relevance=<r> action=<a> critical_recall=<c>` (last week; planted "
        "critical risks pushed within 7 days).",
    )
    simulate.add_argument("--days", type=int, default=60, help="simulated days (default 60)")
    simulate.add_argument("--accounts", type=int, default=300)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--keep", default=None, help="keep the data and store in this folder")
    simulate.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""What the source stage of one daily run would cost if settled history were carried from the
previous day's run instead of re-read: measured before building it.

    .venv/bin/python benchmarks/settled_history.py SOURCE_DIR [--day 2026-10-31] [--settled 7]

Today a daily run reads, types, quarantines and writes every source table's whole look-back
(112 days of usage, a year of messages, ...) so that a corrected source day is always seen. The
design step written down in the README (*What the remaining targets would take*) treats days
older than `--settled` as final: their validated rows come from the previous run's output and
only the newest days are read from the source. For each source table with a date column that a
daily run reads, this times, in one process, alternating, median of `--repeats`:

- *now*: the window read from the source, typed, quarantined, written (lz4), as the run does;
- *settled*: the window's settled days read back from a validated file (standing in for the
  previous run's output; `now`'s output restricted to those days holds the same rows), the
  newest days read, typed and quarantined from the source, the two written as one file;
- *appended*: only the newest days read, typed, quarantined and written, as a store of
  validated days that is never rewritten would do (its readers then scan many files).

None splits the rows into account parts or records metadata, as the run does, so all are a
little under a run's figures; what counts is the difference. The two settled variants do less
than the run in one more way, which favours them: a key without a date (a message, meeting or
ticket id) is checked for duplicates only among the newest days, and a ticket closed after its
settled day keeps its old `closed_at`, so a real design would have to check those ids against
the carried ones (or re-read tickets whole) and the figures are its lower bound. Tables
without a date column (contacts, entitlements, meeting attendees) are read whole either way and
left out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from insight_pipeline.defs.sources.activity import ACTIVITY_TABLES, bundled, history_days
from insight_pipeline.defs.sources.assets import validated_customers
from insight_pipeline.lib.contract import CONTRACT, Source, quarantine
from insight_pipeline.lib.settings import Settings


def windows(settings: Settings) -> dict[str, tuple[str, int]]:
    """table -> (bundle key, days read before the run's day) for the dated tables a day reads."""
    out = {"usage_daily": ("usage_daily", settings.lookback_days)}
    for key, table in ACTIVITY_TABLES.items():
        if CONTRACT[table].date_column:
            out[table] = (key, history_days(table, settings))
    return out


def validated(src: Source, table: str, key: str, first: date, last: date, known: pl.Series):
    """The table's rows of [first, last] as a run keeps them: typed, quarantined, bundled."""
    frame = src.read(table, date_from=first, date_to=last)
    assert frame is not None, f"{table} is missing from the source"
    clean, _bad, _report = quarantine(CONTRACT[table], frame, {"customers": known})
    return bundled(key, clean)


def day_of(table: str, frame: pl.DataFrame | pl.LazyFrame) -> pl.Expr:
    column = CONTRACT[table].date_column
    dtype = frame.collect_schema()[column]
    return pl.col(column) if dtype == pl.Date else pl.col(column).dt.date()


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(
    src: Source,
    table: str,
    key: str,
    days: int,
    day: date,
    fresh_from: date,
    known: pl.Series,
    repeats: int,
    tmp: str,
) -> tuple[str, float, float, float, int, int]:
    """(table, now, settled and appended seconds, rows in the window, rows re-read)."""
    first = day - timedelta(days=days)
    previous = Path(tmp) / f"{table}.previous.parquet"
    out = Path(tmp) / f"{table}.parquet"

    def now() -> None:
        validated(src, table, key, first, day, known).write_parquet(out, compression="lz4")

    def settled() -> None:
        carried = pl.scan_parquet(previous)
        carried = carried.filter(day_of(table, carried) < fresh_from).collect()
        new = validated(src, table, key, fresh_from, day, known)
        pl.concat([carried, new]).write_parquet(out, compression="lz4")

    def appended() -> None:
        validated(src, table, key, fresh_from, day, known).write_parquet(out, compression="lz4")

    validated(src, table, key, first, day, known).write_parquet(previous, compression="lz4")
    times_now, times_settled, times_appended = [], [], []
    for _ in range(repeats):
        times_now.append(timed(now))
        times_settled.append(timed(settled))
        times_appended.append(timed(appended))
    whole = pl.scan_parquet(previous)
    counts = whole.select(pl.len(), (day_of(table, whole) >= fresh_from).sum()).collect()
    return (
        table,
        statistics.median(times_now),
        statistics.median(times_settled),
        statistics.median(times_appended),
        int(counts.item(0, 0)),
        int(counts.item(0, 1)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a contract source directory")
    parser.add_argument("--day", type=date.fromisoformat, default=date(2026, 10, 31))
    parser.add_argument("--settled", type=int, default=7, help="days re-read from the source")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    settings, day = Settings(), args.day
    src = Source(str(args.source))
    known = validated_customers(src, day).customers["customer_id"]
    fresh_from = day - timedelta(days=args.settled - 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for table, (key, days) in windows(settings).items():
            if src.has(table):
                rows.append(
                    measure(src, table, key, days, day, fresh_from, known, args.repeats, tmp)
                )
                print(f"{table}: {rows[-1][1:4]} s now, settled, appended", flush=True)

    print(
        f"\nSource {args.source}, day {day}, days older than {args.settled} carried; "
        f"median of {args.repeats}, alternating\n"
    )
    print("| table | rows in the window | rows re-read | now (s) | settled (s) | appended (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for table, t_now, t_settled, t_appended, total, fresh in rows:
        print(
            f"| {table} | {total:,} | {fresh:,} | {t_now:.2f} | {t_settled:.2f} "
            f"| {t_appended:.2f} |"
        )
    sums = [sum(r[i] for r in rows) for i in (1, 2, 3)]
    print(f"| all | | | {sums[0]:.2f} | {sums[1]:.2f} | {sums[2]:.2f} |")


if __name__ == "__main__":
    main()

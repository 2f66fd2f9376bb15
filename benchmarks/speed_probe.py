"""How fast this machine is against the one issue 4's targets were set on, by that issue's own
yardstick: "polars computes a last-day 28-day baseline for 24M rows (10k accounts x 20 metrics x
120 days) in ~0.3 s".

    .venv/bin/python benchmarks/speed_probe.py        # prints the median seconds of 7 runs

The machines this benchmark runs on differ by 2-4x from session to session (and drift within
an hour), so `run.py` measures this probe before and after its runs and reports the absolute
targets also at the reference speed: a run's seconds divided by (probe seconds / 0.3). It is a
rough scale (the probe is multi-threaded polars; a run also spends time in single-threaded
Python), printed next to the raw verdicts, never instead of them.
"""

from __future__ import annotations

import statistics
import time
from datetime import date, timedelta

import numpy as np
import polars as pl

REFERENCE_SECONDS = 0.3
"""The probe's time on the machine issue 4's targets were set on (the issue's figure)."""

ACCOUNTS, METRICS, DAYS, WINDOW = 10_000, 20, 120, 28
LAST = date(2026, 10, 31)


def probe_frame(seed: int = 0) -> pl.DataFrame:
    """24M rows: every account x metric x day of 120 days, gamma-distributed values."""
    rows = ACCOUNTS * METRICS * DAYS
    first = (LAST - timedelta(days=DAYS - 1) - date(1970, 1, 1)).days
    epoch_days = np.tile(np.arange(first, first + DAYS, dtype=np.int32), ACCOUNTS * METRICS)
    return pl.DataFrame(
        {
            "customer_id": np.repeat(np.arange(ACCOUNTS, dtype=np.int32), METRICS * DAYS),
            "metric": np.tile(np.repeat(np.arange(METRICS, dtype=np.int16), DAYS), ACCOUNTS),
            "date": pl.Series(epoch_days).cast(pl.Date),
            "value": np.random.default_rng(seed).gamma(2.0, 50.0, rows),
        }
    )


def last_day_baseline(frame: pl.DataFrame) -> pl.DataFrame:
    """The yardstick: per account x metric, the median and spread of the 28 days before the
    last day."""
    window = pl.col("date").is_between(LAST - timedelta(days=WINDOW), LAST, closed="left")
    return (
        frame.lazy()
        .filter(window)
        .group_by("customer_id", "metric")
        .agg(pl.col("value").median().alias("baseline"), pl.col("value").std().alias("spread"))
        .collect()
    )


def probe_seconds(repeats: int = 7) -> float:
    """Median seconds of `last_day_baseline` over `repeats` runs (the frame built once)."""
    frame = probe_frame()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        last_day_baseline(frame)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    print(f"{probe_seconds():.3f}")

"""Account shards: customers split into N disjoint groups by a hash of `customer_id`.

Every per-account computation (the usage baselines, anomalies and trends, the engagement, risk,
opportunity and timing detectors) gives the same rows for a customer whatever other customers are
in the frame, so running it shard by shard and concatenating the parts gives exactly the rows of
one run over everything. (What is measured across accounts for them - a day's whole-population
move, the metrics that hold a level, everyone's contact - is measured on a fixed sample of all
accounts, which a shard run reads from the source: `defs/sources/assets.py::sample_from_source`.)
Two independent splits use this:

- *deployment shards* (`SHARD_SEED`): a day fans out over N runs, one per shard, on as many
  workers (the date x shard partitions of `insight_pipeline.sharded`);
- *parts* (`PART_SEED`): inside one run, a large input (a long backfill of many accounts) is
  processed one part at a time to bound memory. A different seed keeps the two independent, so a
  deployment shard still splits evenly into parts.

The hash is polars' own with fixed seeds: stable for a given polars version, which every process
of one deployment shares (intermediates are rewritten by each run, never read across versions).
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import polars as pl

from insight_pipeline.lib.contract import as_typed_text

SHARD_SEED = 0x5A4D
PART_SEED = 0x9A27
SAMPLE_SEED = 0x3C91
ROWS_PER_PART = 5_000_000
"""Usage rows processed at once: about 1-1.5 GB of working memory for the usage detectors (their
frames carry ~25 columns per row). A daily partition of 10k accounts (4.5M rows) is one part;
100k accounts x 365 days (150M rows) are thirty."""
ACCOUNT_DAYS_PER_PART = 4_000_000
"""Accounts x run days the activity detectors (engagement, risk, opportunity, timing) take at
once: 10k accounts over a year (or 100k over a month) is one part, ~3 GB of working memory at
most; 100k accounts over a year are ten, a day of up to 4M accounts one."""
PARTS_PER_SCAN = 4
"""Parts read from the source with one scan of its file, then split in memory: fewer passes over
a large file, at most ~20M rows held at once."""


def shard_of(
    count: int, column: str = "customer_id", seed: int = SHARD_SEED, *, raw: bool = False
) -> pl.Expr:
    """The shard (0..count-1) of each row's customer; a null id falls in shard 0.

    Typed ids are hashed as they are. `raw=True` hashes a source's raw values as the contract
    types them (text, trimmed, blank = null), so that a scan's filter on them agrees with the
    typed ids: " C1 " and "C1", an integer id and its text, fall in the same shard (slower: a
    trimmed copy of every id)."""
    ids = as_typed_text(pl.col(column)) if raw else pl.col(column)
    return (ids.hash(seed) % max(count, 1)).fill_null(0)


def in_shard(
    index: int, count: int, column: str = "customer_id", seed: int = SHARD_SEED
) -> pl.Expr:
    """True for the rows whose customer belongs to shard `index` of `count`."""
    if count <= 1:
        return pl.lit(True)
    return shard_of(count, column, seed) == index


def in_part(index: int, count: int, column: str = "customer_id") -> pl.Expr:
    """True for the rows whose customer belongs to in-run part `index` of `count`."""
    return in_shard(index, count, column, PART_SEED)


def in_sample(accounts: int, size: int, column: str = "customer_id") -> pl.Expr:
    """True for a fixed hash sample of about `size` of `accounts` customers (all of them when
    there are fewer): the same customers whatever the run's days or parts."""
    return in_shard(0, accounts // max(size, 1), column, SAMPLE_SEED)


def account_part_count(accounts: int, days: int) -> int:
    """How many parts the activity detectors take for `accounts` over `days` run days."""
    return part_count(accounts * days, ACCOUNT_DAYS_PER_PART)


def day_spans(first: date, last: date, accounts: int) -> list[tuple[date, date]]:
    """[first, last] cut into consecutive spans of at most ACCOUNT_DAYS_PER_PART account-days,
    for a cross-account computation that is independent per day (peer percentiles): a long run
    over many accounts goes a span at a time. One span for a daily run."""
    length = max(1, ACCOUNT_DAYS_PER_PART // max(accounts, 1))
    spans = []
    start = first
    while start <= last:
        end = min(last, start + timedelta(days=length - 1))
        spans.append((start, end))
        start = end + timedelta(days=1)
    return spans


def part_count(rows: int, rows_per_part: int | None = None) -> int:
    """How many parts keep each under `rows_per_part` (default ROWS_PER_PART) rows."""
    limit = ROWS_PER_PART if rows_per_part is None else rows_per_part
    return max(1, math.ceil(rows / max(limit, 1)))

"""The daily partitions every asset shares (UTC days)."""

import os

import dagster as dg

DEFAULT_PARTITIONS_START = "2024-01-01"


def partitions_start() -> str:
    """`INSIGHTS_PARTITIONS_START`: the first day that can be materialised or backfilled."""
    return os.environ.get("INSIGHTS_PARTITIONS_START") or DEFAULT_PARTITIONS_START


daily_partitions = dg.DailyPartitionsDefinition(start_date=partitions_start(), timezone="UTC")
backfill_policy = dg.BackfillPolicy.single_run()

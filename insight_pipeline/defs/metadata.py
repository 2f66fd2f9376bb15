"""Small helpers shared by assets: the partition days of a run and metadata formatting."""

from datetime import date, timedelta

import dagster as dg
import polars as pl


def partition_days(context: dg.AssetExecutionContext) -> tuple[date, date]:
    """First and last day covered by this run (one day, or a whole range in a backfill); also
    for the date x shard partitions of `insight_pipeline.sharded` (the date dimension)."""
    window = context.partition_time_window
    return window.start.date(), (window.end - timedelta(days=1)).date()


def counts_by(frame: pl.DataFrame, column: str) -> dict[str, int]:
    if frame.height == 0 or column not in frame.columns:
        return {}
    return {str(k): int(v) for k, v in frame.group_by(column).len().sort(column).iter_rows()}


SIGNAL_PREVIEW = ["customer_id", "type", "subject", "partition_date", "severity", "confidence"]


def signal_metadata(frame: pl.DataFrame) -> dict:
    """What a detector asset reports: signal count, by type, customers, the strongest ones."""
    return {
        "signals": frame.height,
        "by_type": counts_by(frame, "type"),
        "customers": frame["customer_id"].n_unique() if frame.height else 0,
        "preview": markdown_preview(frame.sort("severity", descending=True), SIGNAL_PREVIEW),
    }


def markdown_preview(frame: pl.DataFrame, columns: list[str], rows: int = 10) -> dg.MetadataValue:
    """A markdown table of the first rows, as a data engineer wants to see it in the UI, saying
    how many there are when it shows fewer."""
    present = [c for c in columns if c in frame.columns]
    if frame.height == 0 or not present:
        return dg.MetadataValue.md("_no rows_")
    head = frame.head(rows).select(present)
    lines = ["| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    for row in head.iter_rows():
        cells = [_cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    if frame.height > rows:
        lines.append(f"\n_the first {rows} of {frame.height:,} rows_")
    return dg.MetadataValue.md("\n".join(lines))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")[:80]

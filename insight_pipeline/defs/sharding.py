"""Account shards in the asset graph: large outputs written part by part, and the shard of a run.

*Parts* bound memory inside one run. An asset whose input or output would not fit in memory at
once (a 365-day range over 100k accounts holds ~150M usage rows) declares its large inputs as
`pl.LazyFrame` (the IO manager then scans the stored file instead of reading it) and returns a
`FrameStream`: a generator of parts, one per group of accounts (`lib/sharding.py`), that the IO
manager writes to one Parquet file as they come. Downstream assets read that file as usual. Small
runs are one part, so the default path costs nothing extra.

*Shards* spread a day over several runs: in `insight_pipeline.sharded` every asset is partitioned
by date x shard, and the source assets keep only the accounts of the run's shard.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import polars as pl

from insight_pipeline.lib.sharding import in_part, part_count

SHARD_DIMENSION = "shard"
"""Name of the account-shard dimension of the date x shard partitions."""


@dataclass
class FrameStream:
    """An output produced in parts and written part by part by the IO manager.

    `metadata` is filled while the parts are produced (the producing code runs as the IO manager
    consumes `parts`); the IO manager reports it with the materialization. `schema` describes the
    output when there are no parts at all.
    """

    parts: Iterable[pl.DataFrame]
    schema: pl.Schema | dict[str, pl.DataType] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def run_shard(context: dg.AssetExecutionContext) -> tuple[int, int]:
    """(index, count) of the account shard this run covers: (0, 1) for the daily graph, the
    `shard` key of the partition for the date x shard graph."""
    partitions = context.assets_def.partitions_def
    if not isinstance(partitions, dg.MultiPartitionsDefinition):
        return 0, 1
    if SHARD_DIMENSION not in partitions.partition_dimension_names:
        return 0, 1
    shards = partitions.get_partitions_def_for_dimension(SHARD_DIMENSION).get_partition_keys()
    keys = {
        partitions.get_partition_key_from_str(key).keys_by_dimension[SHARD_DIMENSION]
        for key in context.partition_keys
    }
    if len(keys) != 1:
        raise dg.DagsterInvariantViolationError(
            f"a run covers one account shard at a time, not {sorted(keys)}"
        )
    return shards.index(keys.pop()), len(shards)


def parts_of(frame: pl.LazyFrame, rows_per_part: int | None = None) -> int:
    """How many parts to process a stored frame in (its row count is in the file footer)."""
    return part_count(int(frame.select(pl.len()).collect().item()), rows_per_part)


def by_part(
    frame: pl.LazyFrame, count: int, column: str = "customer_id"
) -> Iterator[tuple[int, pl.DataFrame]]:
    """(index, rows of the customers in part `index`) for each of `count` parts."""
    if count <= 1:
        yield 0, frame.collect()
        return
    for index in range(count):
        yield index, frame.filter(in_part(index, count, column)).collect()


def concat_by_part(
    compute: Callable[[pl.DataFrame], pl.DataFrame],
    frame: pl.LazyFrame,
    count: int | None = None,
    column: str = "customer_id",
) -> pl.DataFrame:
    """`compute` over each part of `frame`, concatenated: for a per-account computation with a
    small result (signals) this equals `compute(frame.collect())` in bounded memory."""
    count = parts_of(frame) if count is None else count
    results = [compute(part) for _, part in by_part(frame, count, column)]
    return results[0] if len(results) == 1 else pl.concat(results, how="vertical_relaxed")

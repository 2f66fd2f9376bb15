"""Account shards in the asset graph: large outputs written part by part, and the shard of a run.

*Parts* bound memory inside one run. An asset whose input or output would not fit in memory at
once (a 365-day range over 100k accounts holds ~150M usage rows) returns a `FrameStream`: a
generator of parts, one per group of whole accounts (`lib/sharding.py`), that the IO manager
writes to one Parquet file as they come, recording where each part lies. A consumer that wants it
part by part declares the input as `FrameParts` (and reads each part's slice of the file); one
that keeps few of its rows declares `pl.LazyFrame` and filters the scan (`usage_anomalies`); one
that declares `pl.DataFrame` reads the whole file as usual. Small runs are one part, so the
default path costs nothing extra.

*Shards* spread a day over several runs: in `insight_pipeline.sharded` every asset is partitioned
by date x shard, and the source assets keep only the accounts of the run's shard.
"""

from collections.abc import Iterable, Iterator
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


@dataclass
class TableStream:
    """A bundle of frames (one file per key) produced one frame at a time: the IO manager writes
    each as it comes and drops it, so only one table is in memory at once (the activity bundle
    of a 100k-account day holds ~60M rows in all); a table given as a `FrameStream` is written
    part by part. `metadata` is filled while the tables are produced, as for `FrameStream`."""

    tables: Iterable[tuple[str, pl.DataFrame | FrameStream]]
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


PARTS_METADATA = "insight_pipeline.parts"
"""Parquet key-value metadata of a `FrameStream` output: the row count of each part, in order."""


@dataclass
class FrameParts:
    """A stored frame read one part (a group of whole accounts) at a time: an input annotated
    `FrameParts` gets this from the IO manager instead of the frame.

    A `FrameStream` output is stored as consecutive parts, so a part is a slice of the file (the
    row groups around it are read). A frame written whole is cut into parts by a hash of
    customer_id.
    """

    scan: pl.LazyFrame
    heights: list[int] | None = None
    where: pl.Expr | None = None

    @property
    def rows(self) -> int:
        if self.heights is not None:
            return sum(self.heights)
        return int(self.scan.select(pl.len()).collect().item())

    def __iter__(self) -> Iterator[pl.DataFrame]:
        for part in self.lazy_parts():
            yield part.collect()

    def lazy_parts(self) -> Iterator[pl.LazyFrame]:
        """The parts, left lazy: a reader that needs a few columns of every row and every column
        of a few rows can collect them separately."""
        if self.heights is not None:
            offset = 0
            for height in self.heights:
                yield self._restrict(self.scan.slice(offset, height))
                offset += height
            return
        count = part_count(self.rows)
        for index in range(count):
            yield self._restrict(
                self.scan if count == 1 else self.scan.filter(in_part(index, count))
            )

    def lazy(self) -> pl.LazyFrame:
        """The whole frame, lazily."""
        return self._restrict(self.scan)

    def _restrict(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame if self.where is None else frame.filter(self.where)

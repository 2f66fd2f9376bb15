"""The same asset graph, partitioned by day x account shard: the layout past one machine.

Every asset of `insight_pipeline.definitions` keeps its code; only its partitions change, from
days to (day, shard) pairs (a `MultiPartitionsDefinition`). The source assets keep the accounts
whose `hash(customer_id) % N` is the run's shard (`defs/sharding.run_shard`), so one run is one
day (or a range of days, as one run) of one shard, and everything downstream follows. Runs of
different shards are independent: the run coordinator launches them side by side (local
processes here, pods with dagster-k8s, Celery workers with dagster-celery), and inside a run the
multiprocess executor runs independent steps (the detector families) in parallel. The sink
upserts by insight id, so the shards' runs fill one insights table.

Load it as its own code location instead of `insight_pipeline.definitions` (the daily graph stays
the default and unchanged); `INSIGHTS_SHARDS` sets the number of shards (default 4), read when
the code location loads, like `INSIGHTS_PARTITIONS_START`:

    dagster dev -m insight_pipeline.sharded
    dagster job backfill -m insight_pipeline.sharded -j sharded_insights_job \\
        --partitions '2026-10-31|0,2026-10-31|1,2026-10-31|2,2026-10-31|3' --noprompt

See README, "Scaling out", for what changes in a deployment (PostgreSQL for Dagster and the
store, object storage for intermediates) and for the two cross-account steps.
"""

import os
import warnings

import dagster as dg

from insight_pipeline.definitions import ALL_ASSETS, resources
from insight_pipeline.defs.partitions import daily_partitions
from insight_pipeline.defs.sharding import SHARD_DIMENSION

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

DEFAULT_SHARDS = 4


def shard_count_from_env() -> int:
    """`INSIGHTS_SHARDS`: how many account shards a day fans out over."""
    return int(os.environ.get("INSIGHTS_SHARDS") or DEFAULT_SHARDS)


def sharded_partitions(shards: int) -> dg.MultiPartitionsDefinition:
    """Days (the daily graph's) x account shards "0".."N-1"; keys look like "2026-10-31|3"."""
    return dg.MultiPartitionsDefinition(
        {
            "date": daily_partitions,
            SHARD_DIMENSION: dg.StaticPartitionsDefinition([str(i) for i in range(shards)]),
        }
    )


def sharded_assets(shards: int) -> list[dg.AssetsDefinition]:
    """The daily graph's assets (same keys, code and checks), partitioned by day x shard.

    A dependency with a partition mapping (a look-back over days) keeps it on the date and
    stays within its own shard."""
    partitions = sharded_partitions(shards)

    def within_shard(mapping: dg.PartitionMapping | None) -> dg.PartitionMapping | None:
        if mapping is None:
            return None
        return dg.MultiPartitionMapping(
            {
                "date": dg.DimensionPartitionMapping("date", mapping),
                SHARD_DIMENSION: dg.DimensionPartitionMapping(
                    SHARD_DIMENSION, dg.IdentityPartitionMapping()
                ),
            }
        )

    def reshard(spec: dg.AssetSpec) -> dg.AssetSpec:
        deps = [
            dg.AssetDep(dep.asset_key, partition_mapping=within_shard(dep.partition_mapping))
            for dep in spec.deps
        ]
        return spec.replace_attributes(partitions_def=partitions, deps=deps)

    return dg.map_asset_specs(reshard, ALL_ASSETS)


def build_defs(shards: int) -> dg.Definitions:
    assets = sharded_assets(shards)
    partitions = sharded_partitions(shards)
    job = dg.define_asset_job(
        "sharded_insights_job",
        selection=dg.AssetSelection.assets(*assets),
        partitions_def=partitions,
    )
    return dg.Definitions(
        assets=assets,
        jobs=[job],
        schedules=[
            dg.build_schedule_from_partitioned_job(
                job, hour_of_day=5, minute_of_hour=30, name="sharded_insights_schedule"
            )
        ],
        resources=resources(),
        executor=dg.multiprocess_executor,
    )


defs = build_defs(shard_count_from_env())

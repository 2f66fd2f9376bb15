"""The team directory: the source's users table synced into the store's users table.

The API decides who sees what from this table (roles, and teams through manager_id), so it is
refreshed with every daily run. A user gone from the source is deactivated (their API tokens
stop working) but kept, so insights and feedback history still name them. The directory has no
history in the source, so every partition syncs the current one: re-running is harmless.
"""

import dagster as dg

from insight_pipeline.defs.metadata import counts_by
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SourceResource, StoreResource
from insight_pipeline.lib.access import directory_from_source
from insight_pipeline.lib.paths import default_source

GROUP = "sink"


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars", "duckdb", "postgres"},
)
def team_directory(
    context: dg.AssetExecutionContext, source: SourceResource, store: StoreResource
) -> dg.MaterializeResult:
    """Syncs the source's users (user_id, name, email, role, manager_id) into the store's users
    table, in one transaction: new users added, known ones updated, missing ones deactivated.
    Rows failing the contract (null or duplicate ids, unknown roles) are left out and counted."""
    users, validation = directory_from_source(source.location or default_source())
    with store.session() as db:
        written = db.sync_users(users)
    context.log.info(f"team directory: {written} ({users.height} valid users)")
    return dg.MaterializeResult(
        metadata={
            **{k: int(v) for k, v in written.items()},
            "users": users.height,
            "by_role": counts_by(users, "role"),
            "validation": validation,
        }
    )

"""The one Definitions of the code location: every domain's assets, the resources, the schedule.

Domains live under `defs/` in the order data flows; this module only gathers them and sets the
global policies (in-process executor: Dagster's per-run fixed cost dominates a vectorised run).
"""

from __future__ import annotations

import dagster as dg

from insight_pipeline.defs.baselines import assets as baselines
from insight_pipeline.defs.benchmarks import assets as benchmarks
from insight_pipeline.defs.detectors import assets as detectors
from insight_pipeline.defs.detectors import families
from insight_pipeline.defs.digest import assets as digest
from insight_pipeline.defs.digest.resources import DigestResource, EmailResource
from insight_pipeline.defs.digest.sensors import daily_digest_sensor
from insight_pipeline.defs.insights import assets as insights
from insight_pipeline.defs.insights import outcomes
from insight_pipeline.defs.partitions import daily_partitions
from insight_pipeline.defs.ranking import assets as ranking
from insight_pipeline.defs.resources import (
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
)
from insight_pipeline.defs.sink import assets as sink
from insight_pipeline.defs.sink import directory
from insight_pipeline.defs.sources import activity
from insight_pipeline.defs.sources import assets as sources
from insight_pipeline.defs.team import assets as team

ALL_ASSETS = dg.load_assets_from_modules(
    [
        sources,
        activity,
        baselines,
        detectors,
        families,
        benchmarks,
        outcomes,
        ranking,
        insights,
        sink,
        directory,
        team,
    ]
)
# The digest sends email: materialised by its sensor (or by hand), not by the daily job.
DIGEST_ASSETS = dg.load_assets_from_modules([digest])

daily_insights_job = dg.define_asset_job(
    "daily_insights_job",
    selection=dg.AssetSelection.groups(
        "sources", "baselines", "detectors", "benchmarks", "ranking", "insights", "sink", "team"
    ),
    partitions_def=daily_partitions,
)

daily_insights_schedule = dg.build_schedule_from_partitioned_job(
    daily_insights_job, hour_of_day=5, minute_of_hour=30, name="daily_insights_schedule"
)


def resources() -> dict[str, object]:
    return {
        "source": SourceResource(),
        "store": StoreResource(),
        "narrator": NarratorResource(),
        "settings": SettingsResource(),
        "io_manager": PolarsParquetIOManager(),
        "email": EmailResource(),
        "digest": DigestResource(),
    }


defs = dg.Definitions(
    assets=[*ALL_ASSETS, *DIGEST_ASSETS],
    jobs=[daily_insights_job],
    schedules=[daily_insights_schedule],
    sensors=[daily_digest_sensor],
    resources=resources(),
    executor=dg.in_process_executor,
)

"""An EMPTY graph of the same shape as insight_pipeline's: the floor under every benchmark.

Same asset keys, dependencies, groups, asset checks (blocking), daily partitions, single-run
backfill policy and in-process executor as `insight_pipeline.definitions`, but every body does
nothing (it only reports its materialisations and passing checks). A whole-process run of this
graph costs what Dagster itself costs: interpreter start, `import dagster`, loading the code
location, SQLite run/event storage, one materialisation event per asset and day.

The shape is not copied by hand (it would drift as detectors are added): `benchmarks/run.py`
reads it from the real definitions and passes it as JSON in `INSIGHTS_BENCH_GRAPH_SHAPE`, so this
module imports only dagster, not polars or the project. Without that variable the shape is
derived on the spot (importing the project, which makes the floor a little higher).

    dagster asset materialize -f benchmarks/empty_graph.py --select '*' --partition 2026-10-31
"""

import json
import os
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

SHAPE_ENV = "INSIGHTS_BENCH_GRAPH_SHAPE"


def shape_of(defs: dg.Definitions) -> dict[str, Any]:
    """The graph's shape as JSON-able data: one entry per assets definition (multi-assets stay
    multi-assets), with deps, groups, checks, partitions start and backfill policy."""
    graph = defs.resolve_asset_graph()
    nodes = []
    start = None
    for assets_def in graph.assets_defs:
        if not assets_def.is_executable:
            continue
        partitions = assets_def.partitions_def
        if isinstance(partitions, dg.TimeWindowPartitionsDefinition):
            start = partitions.start.strftime("%Y-%m-%d")
        nodes.append(
            {
                "specs": [
                    {
                        "key": spec.key.to_user_string(),
                        "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
                        "group": spec.group_name,
                    }
                    for spec in assets_def.specs
                ],
                "checks": [
                    {"name": c.name, "asset": c.asset_key.to_user_string(), "blocking": c.blocking}
                    for c in assets_def.check_specs
                ],
                "partitioned": partitions is not None,
                "single_run_backfill": assets_def.backfill_policy is not None
                and assets_def.backfill_policy.max_partitions_per_run is None,
                "can_subset": assets_def.can_subset,
            }
        )
    nodes.sort(key=lambda n: n["specs"][0]["key"])
    return {"partitions_start": start, "nodes": nodes}


def _load_shape() -> dict[str, Any]:
    path = os.environ.get(SHAPE_ENV)
    if path:
        return json.loads(Path(path).read_text())
    from insight_pipeline.definitions import defs as real_defs

    return shape_of(real_defs)


def _empty_node(node: dict[str, Any], partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            dg.AssetKey.from_user_string(s["key"]),
            deps=[dg.AssetKey.from_user_string(d) for d in s["deps"]],
            group_name=s["group"],
        )
        for s in node["specs"]
    ]
    checks = [
        dg.AssetCheckSpec(
            c["name"], asset=dg.AssetKey.from_user_string(c["asset"]), blocking=c["blocking"]
        )
        for c in node["checks"]
    ]
    name = "empty__" + specs[0].key.to_python_identifier()

    @dg.multi_asset(
        name=name,
        specs=specs,
        check_specs=checks,
        partitions_def=partitions if node["partitioned"] else None,
        backfill_policy=dg.BackfillPolicy.single_run() if node["single_run_backfill"] else None,
        can_subset=node["can_subset"],
    )
    def _body(context: dg.AssetExecutionContext):
        for key in context.selected_asset_keys:
            yield dg.MaterializeResult(asset_key=key)
        for check in context.selected_asset_check_keys:
            yield dg.AssetCheckResult(asset_key=check.asset_key, check_name=check.name, passed=True)

    return _body


def build_defs(shape: dict[str, Any]) -> dg.Definitions:
    partitions = dg.DailyPartitionsDefinition(
        start_date=shape["partitions_start"] or "2024-01-01", timezone="UTC"
    )
    return dg.Definitions(
        assets=[_empty_node(node, partitions) for node in shape["nodes"]],
        executor=dg.in_process_executor,
    )


defs = build_defs(_load_shape())

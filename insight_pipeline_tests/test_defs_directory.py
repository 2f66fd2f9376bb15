"""The `team_directory` asset on DuckDB and the real PostgreSQL: a partition syncs the source's
users into the store (bad rows left out and counted), a re-run changes nothing, a user gone
from the source is deactivated and loses API access."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from insight_pipeline.api.auth import authenticate
from insight_pipeline.defs.resources import SourceResource, StoreResource
from insight_pipeline.defs.sink.directory import team_directory
from insight_pipeline.lib.store import InsightStore
from insight_pipeline_tests.api_data import USERS


def materialize(source: Path, store_url: str) -> dict[str, object]:
    """One run on an ephemeral instance of its own, closed before it returns."""
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [team_directory],
            partition_key="2026-06-30",
            resources={
                "source": SourceResource(location=str(source)),
                "store": StoreResource(url=store_url),
            },
            instance=instance,
        )
    assert result.success
    event = result.get_asset_materialization_events()[0]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_team_directory_syncs_users(store_url: str, tmp_path: Path) -> None:
    bad = pl.DataFrame(
        {
            "user_id": [None, "c1"],
            "name": ["No id", "Second c1"],
            "email": [None, None],
            "role": ["csm", "csm"],
            "manager_id": [None, None],
        },
        schema=USERS.schema,
    )
    pl.concat([USERS, bad]).write_parquet(tmp_path / "users.parquet")
    first = materialize(tmp_path, store_url)
    assert (first["inserted"], first["updated"], first["deactivated"]) == (8, 0, 0)
    assert first["by_role"] == {"csm": 4, "leader": 1, "manager": 3}
    assert (first["validation"]["null_keys"], first["validation"]["duplicates"]) == (1, 1)
    again = materialize(tmp_path, store_url)
    assert (again["inserted"], again["updated"], again["deactivated"]) == (0, 8, 0)

    store = InsightStore(store_url)
    try:
        token = store.create_token("c4")[1]
        assert authenticate(store, token) is not None
        USERS.filter(pl.col("user_id") != "c4").write_parquet(tmp_path / "users.parquet")
        assert materialize(tmp_path, store_url)["deactivated"] == 1
        assert authenticate(store, token) is None
        assert store.get_user("c4")["active"] is False
    finally:
        store.dispose()

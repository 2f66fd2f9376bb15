"""Faults around a whole partition run (the real Dagster graph, in process, on a small sample).

- A bad day on PostgreSQL: Claude unreachable (the narrator pointed at a closed port) and the
  store terminating the sink's backend in the middle of its first attempt. The run completes:
  template narratives for every new insight, the metadata says why (`narration_fallbacks`,
  `narration_fallback_reasons`), and the sink's retry policy runs the step again so the table
  is whole.
- Claude black-holed (connections accepted, never answered - a dead proxy, a firewall that
  drops): the narrator stops asking after a few consecutive failures, so the run costs a few
  timeouts, not timeout x retries x every insight.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from sqlalchemy import create_engine, text

from insight_pipeline.definitions import ALL_ASSETS
from insight_pipeline.defs.resources import (
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
)
from insight_pipeline.lib.insights.claude import ClaudeNarrator, ClaudeSettings
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.sample import generate_sample
from insight_pipeline_tests.api_data import empty_database
from insight_pipeline_tests.test_lib_claude import FACTS, item

DAY = date(2026, 6, 30)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, accounts=30, days=120, seed=3, end_date=DAY)
    return out


@pytest.fixture(autouse=True)
def no_real_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resources(source: Path, db_url: str, work: Path, narrator: NarratorResource) -> dict:
    return {
        "source": SourceResource(location=str(source)),
        "store": StoreResource(url=db_url),
        "narrator": narrator,
        "settings": SettingsResource(),
        "io_manager": PolarsParquetIOManager(base_dir=str(work / "io")),
    }


def materialize(res: dict[str, Any], target: str) -> dg.ExecuteInProcessResult:
    """One partition of `target` and everything upstream of it (the rest of the graph - team
    rollups, digests - is not what these faults are about)."""
    with dg.instance_for_test() as instance:
        return dg.materialize(
            ALL_ASSETS,
            selection=dg.AssetSelection.assets(target).upstream(),
            resources=res,
            partition_key=DAY.isoformat(),
            instance=instance,
            raise_on_error=False,
        )


def test_a_bad_day_claude_unreachable_and_the_sink_dropped_the_run_still_completes(
    sample_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One partition run on PostgreSQL where both go wrong (one run: the graph's fixed cost is
    most of the time): Claude's port is closed, and the sink's first attempt loses its server
    mid-transaction. Templates narrate every new insight and the metadata says why; the sink's
    retry policy runs the step again and the table is whole."""
    db_url = empty_database("postgres", request, tmp_path_factory)
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    original = InsightStore._upsert
    attempts: list[int] = []

    def dropped_once(self: InsightStore, conn: Any) -> None:
        attempts.append(1)
        if len(attempts) == 1:  # the first attempt loses its server mid-transaction
            pid = conn.connection.driver_connection.info.backend_pid
            with admin.connect() as a:
                a.execute(text("select pg_terminate_backend(:p, 5000)"), {"p": pid})
        original(self, conn)

    monkeypatch.setattr(InsightStore, "_upsert", dropped_once)
    narrator = NarratorResource(
        api_key="sk-test",
        base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        max_retries=1,
        timeout_seconds=2,
    )
    try:
        result = materialize(resources(sample_dir, db_url, tmp_path, narrator), "insights_table")
    finally:
        admin.dispose()
    assert result.success

    # Claude: every new insight got its template, and the run says why
    insights_meta = result.asset_materializations_for_node("insights")[0].metadata
    meta = {k: v.value for k, v in insights_meta.items()}
    assert meta["narration_narrator"] == "claude"
    items = meta["narration_items"]
    assert items > 0, "the sample must raise new insights on the day"
    assert meta["narration_claude_narratives"] == 0
    assert meta["narration_fallbacks"] == items
    reasons = meta["narration_fallback_reasons"]
    assert sum(reasons.values()) == items
    assert set(reasons) <= {"connection_error", "api_down"} and reasons.get("connection_error")

    # the sink: retried once, then whole
    assert len(attempts) == 2
    kinds = [e.event_type_value for e in result.all_events if e.step_key == "insights_table"]
    assert kinds.count("STEP_UP_FOR_RETRY") == 1 and kinds.count("STEP_RESTARTED") == 1
    sink_meta = result.asset_materializations_for_node("insights_table")[0].metadata
    store = InsightStore(db_url)
    try:
        table = store.get_insights()
    finally:
        store.dispose()
    assert table.height == sink_meta["table_rows"].value == sink_meta["inserted"].value >= items
    assert table.select(pl.col("id").n_unique()).item() == table.height
    assert table["title"].str.len_chars().min() > 0  # every insight has its narrative


class BlackHole:
    """A TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.listener.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def test_a_black_holed_api_costs_a_few_timeouts_not_one_per_insight(
    black_hole: BlackHole,
) -> None:
    settings = ClaudeSettings(timeout_seconds=0.4, max_retries=1, concurrency=4)
    narrator = ClaudeNarrator(
        settings, api_key="test-key", base_url=f"http://127.0.0.1:{black_hole.port}"
    )
    # distinct facts, so 40 distinct prompts (identical ones are asked once)
    items = [item("usage_drop", {**FACTS["usage_drop"], "value": 50.0 + i}) for i in range(40)]
    out = narrator.narrate(items)
    stats = narrator.last_stats
    assert len(out) == 40 and all(o["title"] for o in out)
    assert stats["fallbacks"] == 40 and stats["claude_narratives"] == 0
    # without the breaker: 40 requests, 80 connections, 12.6 s here (40 / 4 threads x (2
    # attempts x 0.4 s + the SDK's backoff)); with production settings (30 s timeout, 3
    # retries) that is about 2 minutes per insight: hours for a backfill
    assert stats["api_calls"] <= settings.give_up_after + settings.concurrency, stats
    assert stats["fallback_reasons"].get("api_down", 0) >= 40 - stats["api_calls"], stats
    # counted at the black hole, not timed: at most the calls the breaker let through, each
    # with its retries, where without it all 80 connections would be made and waited out
    attempts = settings.max_retries + 1
    assert black_hole.accepted <= attempts * stats["api_calls"] < attempts * 40, black_hole.accepted

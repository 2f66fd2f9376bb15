"""Screenshot of the leader view for docs/: docs/leader-view.png (the leader of a sample team).

Self-contained, in a temporary folder: a generated sample (300 accounts), the whole pipeline for
the last 45 days through Dagster, then the team assets (cross-account patterns, team insights,
rollups) for the same days, served by uvicorn and driven by headless Chromium (Playwright,
/usr/bin/chromium or $CHROMIUM), signing in through the login form like a person would.

Two things are staged, so that the page shows every part of itself, and said here so nobody
mistakes them for findings:
- the sample plants patterns account by account, never across accounts, so one cross-account
  drop is planted in the candidates before the team assets run: api_calls usage drops on six
  fintech accounts in the last ten days (the team asset still has to find it, test it and write
  it);
- nobody has acted on the sample's insights, so a simple simulated team does: each insight is
  left alone, dismissed, snoozed or actioned at random a few hours to days after it was raised.
  The pipeline stamps created_at with the wall clock of the run, which for a backfill is "now";
  to make time-to-action readable the script sets created_at to 05:30 UTC on the morning after
  each insight's day, what a daily run would have stamped (one UPDATE in this script, never in
  the product, where only the store runs SQL).

    .venv/bin/python scripts/leader_screenshot.py
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import uvicorn
from playwright.sync_api import sync_playwright
from sqlalchemy import create_engine, text

from insight_pipeline.api.app import create_app
from insight_pipeline.definitions import ALL_ASSETS
from insight_pipeline.defs.resources import (
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
)
from insight_pipeline.defs.team import assets as team
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.sample import generate_sample

DOCS = Path(__file__).resolve().parents[1] / "docs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DAYS = 45


def run(assets: list, selection: object, res: dict, first: date, last: date) -> None:
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            assets, selection=selection, resources=res, tags=tags, instance=instance
        )
    if not result.success:
        raise RuntimeError("pipeline run failed")


def plant_pattern(work: Path, first: date, last: date) -> None:
    """Six fintech accounts with an api_calls usage drop in the last ten days (see above)."""
    path = work / "intermediate" / "insight_candidates" / f"{first}__{last}.parquet"
    candidates = pl.read_parquet(path)
    template = candidates.filter(pl.col("type") == "usage_drop").head(1)
    customers = pl.read_parquet(work / "sample" / "customers.parquet").filter(
        (pl.col("industry") == "fintech") & pl.col("churned_on").is_null()
    )
    if template.height == 0 or customers.height < 6:
        return
    rng = random.Random(8)
    rows = []
    for account in rng.sample(customers.to_dicts(), 6):
        day = last - timedelta(days=rng.randrange(10))
        rows.append(
            template.with_columns(
                pl.lit(account["customer_id"]).alias("customer_id"),
                pl.lit(account["name"]).alias("customer_name"),
                pl.lit(account["csm_user_id"]).alias("user_id"),
                pl.lit(account["segment"]).alias("segment"),
                pl.lit(account["industry"]).alias("industry"),
                pl.lit(account["arr"]).alias("arr"),
                pl.lit("api_calls").alias("subject"),
                pl.lit(day).alias("partition_date"),
                pl.lit(f"{account['customer_id']}|usage_drop|api_calls").alias("fingerprint"),
            )
        )
    pl.concat([candidates, *rows], how="vertical_relaxed").write_parquet(path)


def simulate_team(url: str) -> None:
    """Each account insight: left alone, dismissed, snoozed or actioned (see above)."""
    store = InsightStore(url)
    rng = random.Random(11)
    now = datetime.now(UTC)
    try:
        insights = store.get_insights().filter(pl.col("customer_id").is_not_null())
        mornings = {}
        for row in insights.sort("id").iter_rows(named=True):
            morning = datetime.combine(
                row["partition_date"] + timedelta(days=1), datetime.min.time(), tzinfo=UTC
            ) + timedelta(hours=5, minutes=30)
            mornings[row["id"]] = morning
            at = morning + timedelta(hours=rng.uniform(1, 80))
            if at >= now:
                continue
            draw = rng.random()
            if draw < 0.35:
                continue
            if draw < 0.50:
                store.record_action(row["id"], row["user_id"], "dismiss", "not_relevant", at=at)
            elif draw < 0.60:
                store.record_action(row["id"], row["user_id"], "dismiss", "already_knew", at=at)
            elif draw < 0.70:
                until = at + timedelta(days=7)
                store.record_action(row["id"], row["user_id"], "snooze", None, until, at=at)
            else:
                store.record_action(row["id"], row["user_id"], "actioned", "took_action", at=at)
    finally:
        store.dispose()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for insight_id, morning in mornings.items():
                conn.execute(
                    text("update insights set created_at = :at where id = :id"),
                    {"at": morning, "id": insight_id},
                )
    finally:
        engine.dispose()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="leader-shot-"))
    last = datetime.now(UTC).date() - timedelta(days=1)
    first = last - timedelta(days=DAYS - 1)
    url = f"duckdb:///{work / 'insights.duckdb'}"
    try:
        generate_sample(work / "sample", accounts=300, days=240, seed=7, end_date=last)
        res = {
            "source": SourceResource(location=str(work / "sample")),
            "store": StoreResource(url=url),
            "narrator": NarratorResource(use_claude=False),
            "settings": SettingsResource(),
            "io_manager": PolarsParquetIOManager(base_dir=str(work / "intermediate")),
        }
        loaded = {k for a in ALL_ASSETS for k in a.keys}
        extra = [a for a in dg.load_assets_from_modules([team]) if not set(a.keys) & loaded]
        everything = [*ALL_ASSETS, *extra]
        run(
            everything, dg.AssetSelection.all() - dg.AssetSelection.groups("team"), res, first, last
        )
        plant_pattern(work, first, last)
        simulate_team(url)
        run(everything, dg.AssetSelection.groups("team"), res, first, last)
        return shoot(url)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def shoot(url: str) -> int:
    store = InsightStore(url)
    users = store.list_users()
    leader = users.filter(pl.col("role") == "leader")["user_id"][0]
    token = store.create_token(leader, label="screenshot")[1]
    app = create_app(store=store, source="")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    DOCS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1180, "height": 1400})
            page.goto(f"{base}/feed/login?next=/feed/leader")
            page.fill("#token", token)
            page.click("button:has-text('Sign in')")
            page.wait_for_url(f"{base}/feed/leader")
            page.screenshot(path=str(DOCS / "leader-view.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        store.dispose()
    print(f"wrote {DOCS / 'leader-view.png'} (leader {leader})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of the web feed for docs/: feed.png (a CSM's feed) and feed-team.png (a manager).

Works on a COPY of the demo store (run `insight-pipeline demo` first), so the demo's own data
is left as it was: the busiest CSM gets one insight shared by a colleague (to show the banner),
the app is served by uvicorn and driven by headless Chromium (Playwright, /usr/bin/chromium or
$CHROMIUM), signing in through the login form like a person would.

    .venv/bin/python scripts/feed_screenshot.py
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from insight_pipeline.api.app import create_app
from insight_pipeline.lib.access import FeedFilters, directory_from_source, resolve_viewer
from insight_pipeline.lib.paths import data_dir, default_source
from insight_pipeline.lib.store import InsightStore

DOCS = Path(__file__).resolve().parents[1] / "docs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def main() -> int:
    demo = data_dir() / "insights.duckdb"
    if not demo.exists():
        print("no demo store: run `insight-pipeline demo` first", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="feed-shot-"))
    shutil.copy(demo, work / "insights.duckdb")
    store = InsightStore(f"duckdb:///{work / 'insights.duckdb'}")
    store.migrate()
    store.sync_users(directory_from_source(default_source())[0])
    users = store.list_users()
    csms = [u for u, r in zip(users["user_id"], users["role"], strict=True) if r == "csm"]
    totals = {u: store.feed(resolve_viewer(store, store.get_user(u))).total for u in csms}
    csm = max(totals, key=lambda u: (totals[u], u))
    manager = store.get_user(csm)["manager_id"]
    other = next(u for u in sorted(totals, key=totals.get, reverse=True) if u != csm)
    shared = store.feed(resolve_viewer(store, store.get_user(other)), FeedFilters(), limit=1)
    if shared.rows.height:
        store.share_insight(
            shared.rows["id"][0], other, [csm], note="Same pattern as at your account last month?"
        )
    token = {u: store.create_token(u, label="screenshot")[1] for u in (csm, manager)}

    app = create_app(store=store)
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
            page = browser.new_page(viewport={"width": 1180, "height": 1500})
            for user, path, shot in ((csm, "/feed", "feed.png"), (manager, "/feed/team", None)):
                page.context.clear_cookies()
                page.goto(f"{base}/feed/login")
                page.fill("#token", token[user])
                page.click("button:has-text('Sign in')")
                page.wait_for_url(f"{base}/feed")
                if shot:
                    menus = page.locator("[data-testid=dismiss]")
                    if menus.count() > 1:
                        menus.nth(1).click()  # show the dismiss reasons on the second card
                    page.screenshot(path=str(DOCS / shot))
                else:
                    page.goto(f"{base}{path}")
                    page.screenshot(path=str(DOCS / "feed-team.png"))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        store.dispose()
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {DOCS / 'feed.png'} ({csm}) and {DOCS / 'feed-team.png'} ({manager})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The web feed in headless Chromium (Playwright), served by uvicorn over the real PostgreSQL.

A CSM signs in with a token, sees their unread count and cards (a usage card with its inline
SVG chart from the source), filters by category, dismisses a card with a reason and watches it
leave the feed (and stay gone after a reload, with the feedback recorded); a customer name made
of HTML shows as text and never runs.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from insight_pipeline.api.app import create_app
from insight_pipeline.lib.store import InsightStore
from insight_pipeline_tests.api_data import ID, USERS, XSS_NAME, seed, tokens
from insight_pipeline_tests.synthetic import usage_series

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


def source_dir(root: Path) -> Path:
    """A contract source with 200 days of dau for account A1 (the chart's data)."""
    end = datetime.now(UTC).date() - timedelta(days=2)
    usage = usage_series(1, 200, end, level=80.0).with_columns(pl.lit("A1").alias("customer_id"))
    usage.write_parquet(root / "usage_daily.parquet")
    USERS.write_parquet(root / "users.parquet")
    return root


@pytest.fixture
def served(
    store: InsightStore, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str], InsightStore]]:
    seed(store)
    app = create_app(store=store, source=str(source_dir(tmp_path)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # a wait, not a timing: generous for a loaded machine
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", tokens(store), store
    finally:
        server.should_exit = True
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/feed")
    expect(page).to_have_url(f"{base}/feed/login?next=/feed")
    page.fill("#token", token)
    page.click("button:has-text('Sign in')")
    expect(page).to_have_url(f"{base}/feed")


def test_load_filter_dismiss_with_a_reason(
    served: tuple[str, dict[str, str], InsightStore], browser: Browser, tmp_path: Path
) -> None:
    base, token_of, store = served
    page = browser.new_page(viewport={"width": 1100, "height": 1200})
    sign_in(page, base, token_of["c1"])
    cards = page.locator("[data-testid=insight-card]")
    expect(cards).to_have_count(3)
    expect(page.locator("[data-unread]")).to_have_text("3")
    card_a = page.locator(f"#insight-{ID['a']}")
    expect(card_a.locator("svg polyline.value")).to_have_count(1)  # the usage chart
    expect(card_a.locator("svg polygon.band")).to_have_count(1)

    page.select_option("select[name=category]", "risk")
    expect(page).to_have_url(f"{base}/feed?category=risk&priority=&period=all")
    expect(cards).to_have_count(1)
    expect(page.locator(f"#insight-{ID['c']}")).to_be_visible()
    page.select_option("select[name=category]", "")
    expect(cards).to_have_count(3)

    card_a = page.locator(f"#insight-{ID['a']}")
    card_a.locator("[data-testid=dismiss]").click()
    card_a.locator("button:has-text('Not relevant')").click()
    expect(card_a).to_have_count(0)
    expect(cards).to_have_count(2)
    expect(page.locator("[data-unread]")).to_have_text("2")
    page.screenshot(path=str(tmp_path / "feed.png"))
    page.reload()
    expect(cards).to_have_count(2)
    expect(page.locator(f"#insight-{ID['a']}")).to_have_count(0)
    row = store.get_insights([ID["a"]]).row(0, named=True)
    assert (row["status"], row["feedback"]) == ("dismissed", "not_relevant")
    events = store.feedback_events()
    assert events.select("user_id", "action", "feedback").rows() == [
        ("c1", "dismiss", "not_relevant")
    ]
    page.close()


def test_html_in_customer_names_is_shown_not_run(
    served: tuple[str, dict[str, str], InsightStore], browser: Browser
) -> None:
    base, token_of, _ = served
    page = browser.new_page()
    sign_in(page, base, token_of["c4"])
    link = page.locator(f"#insight-{ID['i']} a.account")
    expect(link).to_have_text(XSS_NAME)
    assert page.locator("img[src=x]").count() == 0
    assert page.evaluate("window.__xss") is None
    page.goto(f"{base}/feed/accounts/D1")
    expect(page.locator("h1")).to_have_text(XSS_NAME)
    assert page.evaluate("window.__xss") is None
    page.close()

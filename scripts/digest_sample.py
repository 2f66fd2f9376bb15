"""Render the sample digest in docs/: digest-sample.html and a screenshot, digest-sample.png.

The sample is a player-coach manager (own accounts and a team) on a busy day, so one picture
shows every part of the email: the three groups with counts, the cap ("+N more"), "new" badges,
the team section, and a customer name that must be escaped. The PNG comes from headless
Chromium (Playwright driving /usr/bin/chromium, or $CHROMIUM).

    .venv/bin/python scripts/digest_sample.py
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from insight_pipeline.lib.digest import build_digests, digest_window
from insight_pipeline.lib.email import render_parts, subject_for

DOCS = Path(__file__).resolve().parents[1] / "docs"
DAY = date(2026, 11, 24)

USERS = pl.DataFrame(
    {
        "user_id": ["U1", "U2", "U3", "U4"],
        "name": ["Maya Okafor", "Jonas Berg", "Priya Nair", "Tom Alvarez"],
        "email": ["maya@example.com", "jonas@example.com", "priya@example.com", "tom@example.com"],
        "role": ["manager", "csm", "csm", "csm"],
        "manager_id": [None, "U1", "U1", "U1"],
    }
)

# (user, customer, priority, score, category, type, days ago raised, title, action)
ROWS = [
    ("U1", "Northwind Health", "high", 0.91, "risk", "champion_left", 0,
     "Champion Dana Ruiz left Northwind Health",
     "Introduce yourself to the new admin and confirm who owns the renewal (in 48 days)."),
    ("U1", "Smith & <Sons> Ltd", "high", 0.84, "usage", "usage_drop", 0,
     "Daily active users down 46% at Smith & <Sons> Ltd",
     "Call the account owner this week: the drop started after Tuesday's SSO change."),
    ("U1", "Brightbridge Clinics", "high", 0.78, "risk", "support_surge", 2,
     "Support tickets 4x the usual, 2 urgent",
     "Join the escalation call and agree a fix date with support."),
    ("U1", "Vistastone Components", "medium", 0.62, "opportunity", "entitlement_limit", 0,
     "Seats at 94% of the contract", "Propose a seat expansion before they hit the limit."),
    ("U1", "Firststone Academy", "medium", 0.55, "usage", "adoption_trend", 3,
     "API calls up 72% over 3 weeks",
     "Congratulate them and ask which teams drive it: an opening for expansion."),
    ("U1", "Harbor Freight Labs", "low", 0.31, "opportunity", "referral_candidate", 1,
     "Promoter NPS (10) from the VP of Operations",
     "Ask for a reference call or a case study."),
    ("U1", "Goldenwave Learning", "medium", 0.58, "usage", "declining_usage", 4,
     "Logins declining over 8 weeks", "Book a health check before the renewal in 60 days."),
    ("U1", "Pacificbridge Logistics", "medium", 0.49, "engagement", "going_dark", 0,
     "No two-way contact for 41 days (usually 12)", "Send a short check-in with one useful tip."),
    ("U1", "Beaconworks Software", "low", 0.28, "benchmark", "underperforming", 5,
     "Feature adoption in the bottom 10% of its peers",
     "Offer a 30-minute enablement session."),
    ("U1", "Oakline Retail", "low", 0.25, "timing", "qbr_due", 6,
     "QBR due: renewal in 95 days, last QBR 130 days ago", "Schedule the QBR."),
    ("U1", "Redrock Media", "low", 0.22, "usage", "usage_pattern_change", 6,
     "Weekend usage shifted to weekdays", "No action needed; worth a mention at the next call."),
    ("U1", "Silverline Bank", "low", 0.18, "engagement", "stakeholder_shift", 6,
     "A new executive joined the last two meetings", "Add the new executive to your plan."),
    ("U2", "Crestview Foods", "high", 0.88, "risk", "detractor_nps", 0,
     "Detractor NPS (3) from the executive sponsor", "Call the sponsor within 24 hours."),
    ("U2", "Lumen Dental", "medium", 0.52, "usage", "usage_drop", 1,
     "Events down 38%", "Check for an integration failure."),
    ("U3", "Quarry Analytics", "high", 0.74, "usage", "declining_usage", 0,
     "Seats used declining over 8 weeks", "Review seat usage with the admin."),
    ("U3", "Meadow Energy", "low", 0.30, "opportunity", "case_study_candidate", 2,
     "Sustained growth with healthy sentiment", "Ask for a case study."),
    ("U4", "Tidewater Ports", "medium", 0.57, "engagement", "going_dark", 0,
     "No two-way contact for 30 days (usually 9)", "Send a check-in."),
]  # fmt: skip


def candidates() -> pl.DataFrame:
    records = []
    for user, customer, prio, score, category, type_, ago, title, action in ROWS:
        raised = DAY - timedelta(days=ago)
        records.append(
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}/{customer}/{type_}")),
                "customer_id": customer[:6],
                "customer_name": customer,
                "user_id": user,
                "partition_date": raised,
                "last_seen_date": DAY,
                "category": category,
                "type": type_,
                "priority": prio,
                "score": score,
                "title": title,
                "summary": "",
                "recommended_action": json.dumps({"description": action}),
                "status": "new",
            }
        )
    return pl.DataFrame(records)


def main() -> int:
    window = digest_window("daily", DAY)
    (digest,) = build_digests(window, USERS, candidates(), ["U1"], cap=10)
    text, html = render_parts(digest, feed_url="http://127.0.0.1:8000/feed")
    DOCS.mkdir(exist_ok=True)
    (DOCS / "digest-sample.html").write_text(html, encoding="utf-8")
    (DOCS / "digest-sample.txt").write_text(f"Subject: {subject_for(digest)}\n\n{text}", "utf-8")

    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), headless=True
        )
        page = browser.new_page(viewport={"width": 680, "height": 800}, device_scale_factor=2)
        page.set_content(html, wait_until="load")
        page.screenshot(path=str(DOCS / "digest-sample.png"), full_page=True)
        browser.close()
    sys.stdout.write(f"wrote {DOCS}/digest-sample.{{html,txt,png}}: {subject_for(digest)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GET /api/team/rollups (+ /history) and the leader view, on DuckDB and the real PostgreSQL.

The organisation of api_data.py (L1 <- M1 <- M3, L1 <- M2; c1, c2 -> M1, c3 -> M3, c4 -> M2)
with its insights, one cross-account pattern for M1, and the rollups of today computed by
lib/team.py from the store itself. Checked: CSMs get 403 (and no token 401); a manager sees
only the rows of their team - CSMs and managers in it, segments and a total computed over it,
never a number that counts an account outside it - and a scope outside their team is 404; a
leader sees everything; the numbers are those of the seeded insights; the leader page renders
its charts and the team insight, and only for managers and leaders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from fastapi.testclient import TestClient

from insight_pipeline.api.app import create_app
from insight_pipeline.api.auth import COOKIE
from insight_pipeline.lib.settings import TeamSettings
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.lib.team import rollup_frame
from insight_pipeline_tests.api_data import SPECS, TEAM, USERS, empty_database, seed, tokens

SEGMENT = {"A1": "smb", "A2": "smb", "B1": "enterprise", "B2": "mid_market", "C1": "smb"}
SEGMENT["D1"] = "enterprise"
ARR = {"A1": 10_000.0, "A2": 20_000.0, "B1": 40_000.0, "B2": 80_000.0, "C1": 160_000.0}
ARR["D1"] = 320_000.0
CSM_OF = {"A1": "c1", "A2": "c1", "B1": "c2", "B2": "c2", "C1": "c3", "D1": "c4"}
PATTERN_TITLE = "3 smb accounts saw usage drop"


@dataclass
class Org:
    kind: str
    store: InsightStore
    client: TestClient
    tokens: dict[str, str]

    def get(self, path: str, user: str | None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        response = self.client.get(path, headers=headers)
        return response.status_code, response.json()


def team_insight() -> pl.DataFrame:
    now = datetime.now(UTC)
    return pl.DataFrame(
        [
            {
                "id": "6f1c8f7e-0000-4000-8000-000000000001",
                "customer_id": None,
                "customer_name": "Smb accounts",
                "user_id": "M1",
                "partition_date": now.date(),
                "last_seen_date": now.date(),
                "category": "team",
                "type": "cross_account_pattern",
                "subject": "usage_drop:|segment=smb",
                "priority": "high",
                "score": 0.8,
                "title": PATTERN_TITLE,
                "summary": "3 of 3 smb accounts saw usage drop in the last 14 days.",
                "evidence": '[{"metric": "member_arr", "value": 10000.0, '
                '"comparison": "USD ARR, Acme Health (A1)", "source": "accounts"}]',
                "so_what": "One cause, one answer.",
                "recommended_action": '{"type": "Review the pattern", "description": '
                '"Review them together.", "quick_action_id": "review_account"}',
                "fingerprint": "team|cross_account_pattern|usage_drop||segment=smb",
                "score_parts": '{"significance": 1.0}',
                "expires_at": now + timedelta(days=14),
            }
        ]
    ).with_columns(
        pl.col("customer_id").cast(pl.String),
        pl.col("expires_at").cast(pl.Datetime("us", "UTC")),
    )


def accounts() -> pl.DataFrame:
    ids = sorted(SEGMENT)
    return pl.DataFrame(
        {
            "customer_id": ids,
            "csm_user_id": [CSM_OF[c] for c in ids],
            "segment": [SEGMENT[c] for c in ids],
            "arr": [ARR[c] for c in ids],
        }
    )


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def org(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    store = InsightStore(empty_database(request.param, request, tmp_path_factory))
    store.migrate()
    seed(store)
    store.write_insights(team_insight(), pl.DataFrame())
    today = datetime.now(UTC).date()
    first = today - timedelta(days=2)
    frame = rollup_frame(
        store.rollup_insights(first, today, lookback_days=35),
        store.feedback_events(),
        accounts(),
        USERS,
        first,
        today,
        TeamSettings(),
    )
    store.write_team_rollups(frame, first, today)
    try:
        with TestClient(create_app(store=store, source="")) as client:
            yield Org(request.param, store, client, tokens(store))
    finally:
        store.dispose()


def open_keys(owners: set[str] | None) -> list:
    """The seeded account insights open now for these owners (None = everyone)."""
    return [s for s in SPECS if not s.expired and (owners is None or s.owner in owners)]


def test_csms_are_refused_and_strangers_unauthorised(org: Org) -> None:
    for path in ("/api/team/rollups", "/api/team/rollups/history"):
        assert org.get(path, "c1")[0] == 403
        assert org.get(path, None)[0] == 401
    org.client.cookies.set(COOKIE, org.tokens["c1"])
    try:
        assert org.client.get("/feed/leader").status_code == 403
    finally:
        org.client.cookies.clear()


@pytest.mark.parametrize("manager", ["M1", "M2", "M3"])
def test_managers_see_only_their_team(org: Org, manager: str) -> None:
    team = TEAM[manager]
    assert team is not None
    for group_by in ("csm", "manager", "segment", "total"):
        code, body = org.get(f"/api/team/rollups?group_by={group_by}", manager)
        assert code == 200, body
        rows = body["rows"]
        if group_by in ("csm", "manager"):
            assert rows and {r["group_key"] for r in rows} <= team, (manager, group_by)
        if group_by == "segment":
            assert rows and {r["scope_id"] for r in rows} == {manager}
            customers = [c for c in SEGMENT if CSM_OF[c] in team]
            assert sum(r["accounts"] for r in rows) == len(customers)
            assert sum(r["open_insights"] for r in rows) == len(open_keys(team))
        if group_by == "total":
            (total,) = rows
            assert total["group_by"] == "total" and total["group_key"] == manager
            assert total["open_insights"] == len(open_keys(team))
    # a team's total never includes what is outside it
    outsiders = {u for u in TEAM if u not in team}
    _code, body = org.get("/api/team/rollups?group_by=csm", manager)
    assert not {r["group_key"] for r in body["rows"]} & outsiders


def test_scopes_outside_the_team_look_like_nothing(org: Org) -> None:
    assert org.get("/api/team/rollups?group_by=segment&scope=M1", "M2")[0] == 404
    assert org.get("/api/team/rollups?group_by=csm&scope=nobody", "L1")[0] == 404
    assert org.get("/api/team/rollups/history?scope=M2", "M1")[0] == 404
    code, body = org.get("/api/team/rollups?group_by=csm&scope=M3", "M1")
    assert code == 200 and {r["group_key"] for r in body["rows"]} <= {"M3", "c3"}


def test_a_leader_sees_everything_and_the_numbers_add_up(org: Org) -> None:
    _code, body = org.get("/api/team/rollups?group_by=csm", "L1")
    by_csm = {r["group_key"]: r for r in body["rows"]}
    assert {"c1", "c2", "c3", "c4"} <= set(by_csm)
    for csm in ("c1", "c2", "c3", "c4"):
        assert by_csm[csm]["open_insights"] == len(open_keys({csm}))
    _code, body = org.get("/api/team/rollups?group_by=total", "L1")
    (total,) = body["rows"]
    assert total["group_key"] == "*" and total["open_insights"] == len(open_keys(None))
    # open risk insights (risk category, or a usage drop) by account, at their highest score
    risk = {"A1": 0.90, "B1": 0.80, "D1": 0.70, "A2": 0.30, "B2": 0.95}
    assert total["arr_at_risk"] == pytest.approx(sum(ARR[c] * s for c, s in risk.items()))
    assert total["expansion_arr"] == pytest.approx(ARR["D1"])  # the referral candidate
    _code, body = org.get("/api/team/rollups?group_by=segment", "L1")
    assert {r["scope_id"] for r in body["rows"]} == {"*"}
    assert sum(r["accounts"] for r in body["rows"]) == len(SEGMENT)
    _code, body = org.get("/api/team/rollups?group_by=manager", "L1")
    assert {r["group_key"] for r in body["rows"]} == {"L1", "M1", "M2", "M3"}


def test_history_is_the_total_day_by_day(org: Org) -> None:
    code, body = org.get("/api/team/rollups/history?days=7", "L1")
    assert code == 200 and body["group_by"] == "total"
    assert len(body["points"]) == 3  # the three days written
    assert body["points"][-1]["open_insights"] == len(open_keys(None))
    _code, body = org.get("/api/team/rollups/history?days=7", "M2")
    assert body["group_key"] == "M2"
    assert body["points"][-1]["open_insights"] == len(open_keys(TEAM["M2"]))


def test_team_insights_are_in_the_feed_of_whom_they_are_for(org: Org) -> None:
    for user, sees in (("M1", True), ("L1", True), ("M2", False), ("c1", False)):
        _code, body = org.get("/api/insights?category=team", user)
        titles = [i["title"] for i in body["insights"]]
        assert (PATTERN_TITLE in titles) == sees, user
        if sees:
            (pattern,) = body["insights"]
            assert pattern["customer_id"] is None and pattern["type"] == "cross_account_pattern"


@pytest.mark.parametrize("user", ["L1", "M1"])
def test_the_leader_page_renders_charts_and_patterns(org: Org, user: str) -> None:
    org.client.cookies.set(COOKIE, org.tokens[user])
    try:
        html = org.client.get("/feed/leader").text
        scoped = org.client.get("/feed/leader?scope=M3")
    finally:
        org.client.cookies.clear()
    assert 'data-testid="open-trend"' in html and "<polyline" in html
    assert 'data-testid="arr-by-segment"' in html and "<rect" in html
    assert PATTERN_TITLE in html and "/feed/accounts/None" not in html
    assert "cdn" not in html.lower() and '<script src="http' not in html
    assert scoped.status_code == 200

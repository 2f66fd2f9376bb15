"""Access control, on DuckDB and the real PostgreSQL: who sees and acts on what, and who gets in.

The table of rules (tests/api_data.py): a CSM sees their own insights and those shared with
them, a manager their team's (transitively), a leader all. Checked for every user, through the
store and through HTTP: by id (404 for anything outside scope, exactly like an unknown id, for
reads, actions and shares, and nothing changes), by filter and by paging (never another's row,
never a count that includes one), the account and team views, the web feed's pages; and every
way a token can be wrong (missing, malformed, unknown, wrong secret, expired, revoked, user
deactivated) answers the same 401. One seeded store per backend serves the whole module; the
few writes come last or restore what they change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from insight_pipeline.api.app import create_app
from insight_pipeline.api.auth import COOKIE
from insight_pipeline.lib.access import ANY_INSIGHT, FeedFilters, Viewer, resolve_viewer
from insight_pipeline.lib.store import InsightStore
from insight_pipeline_tests.api_data import (
    BY_KEY,
    ID,
    KEY_OF,
    SPECS,
    TEAM,
    USERS,
    empty_database,
    seed,
    tokens,
    visible_keys,
)

USER_IDS = list(USERS["user_id"])


@dataclass
class Org:
    kind: str
    store: InsightStore
    client: TestClient
    tokens: dict[str, str]

    @property
    def thorough(self) -> bool:
        """DuckDB opens its file on every store call (~17 ms each), so the HTTP-heavy loops
        sample there and run in full on PostgreSQL."""
        return self.kind == "postgres"

    def auth(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user_id]}"}

    def viewer(self, user_id: str) -> Viewer:
        user = self.store.get_user(user_id)
        assert user is not None
        return resolve_viewer(self.store, user)


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def org(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    store = InsightStore(empty_database(request.param, request, tmp_path_factory))
    app = create_app(store=store, source="")
    seed(store)
    with TestClient(app) as client:
        yield Org(request.param, store, client, tokens(store))
    store.dispose()


def keys_of(body: dict) -> list[str]:
    return [KEY_OF[i["id"]] for i in body["insights"]]


# ---------------------------------------------------------------------------- store level


def test_store_scope_is_the_rule_table(org: Org) -> None:
    for user_id in USER_IDS:
        v = org.viewer(user_id)
        assert v.sees_all == (TEAM[user_id] is None)
        page = org.store.feed(v, limit=100)
        assert {KEY_OF[i] for i in page.rows["id"]} == visible_keys(user_id), user_id
        assert page.total == len(visible_keys(user_id))
        every = org.store.feed(v, FeedFilters(**ANY_INSIGHT), limit=100)
        assert {KEY_OF[i] for i in every.rows["id"]} == visible_keys(user_id, include_expired=True)


def test_store_order_filters_and_paging(org: Org) -> None:
    def keys(user_id: str, filters: FeedFilters | None = None) -> list[str]:
        page = org.store.feed(org.viewer(user_id), filters, limit=100)
        return [KEY_OF[i] for i in page.rows["id"]]

    assert keys("L1") == ["f", "a", "e", "i", "b", "g", "c", "h"]  # priority, score, newest
    assert keys("c1", FeedFilters(category="risk")) == ["c"]
    assert keys("c1", FeedFilters(priority="medium")) == ["b"]
    assert keys("L1", FeedFilters(type="usage_drop")) == ["a", "e", "i"]
    assert keys("L1", FeedFilters(customer_id="A1")) == ["a", "b"]
    today = datetime.now(UTC).date()
    window = FeedFilters(date_from=today - timedelta(days=4), date_to=today - timedelta(days=2))
    assert keys("L1", window) == ["f", "a", "i", "g"]
    assert keys("c1", FeedFilters(include_expired=True)) == ["a", "b", "d", "c"]
    v = org.viewer("L1")
    pages = [org.store.feed(v, limit=3, offset=o) for o in (0, 3, 6, 9)]
    assert [p.total for p in pages] == [8, 8, 8, 8]
    assert [p.rows.height for p in pages] == [3, 3, 2, 0]
    assert [KEY_OF[i] for p in pages for i in p.rows["id"]] == keys("L1")
    ghost = Viewer(user_id="ghost", role="csm", owner_ids=("ghost",))
    nothing = org.store.feed(ghost, FeedFilters(**ANY_INSIGHT))
    assert (nothing.total, nothing.unread, nothing.rows.height) == (0, 0, 0)


# ----------------------------------------------------------------------------- HTTP reads


def test_list_paging_and_totals_stay_in_scope(org: Org) -> None:
    for user_id in USER_IDS:
        expected = visible_keys(user_id)
        body = org.client.get("/api/insights?limit=200", headers=org.auth(user_id)).json()
        assert set(keys_of(body)) == expected, user_id
        assert body["total"] == len(expected) and body["unread"] == len(expected)
        paged: list[str] = []
        for offset in range(0, 12 if org.thorough else 0, 2):
            page = org.client.get(
                f"/api/insights?limit=2&offset={offset}", headers=org.auth(user_id)
            ).json()
            assert page["total"] == len(expected)
            paged += keys_of(page)
        assert not org.thorough or sorted(paged) == sorted(expected), user_id
        wide = org.client.get(
            "/api/insights?limit=200&include_expired=true&include_snoozed=true&status=new",
            headers=org.auth(user_id),
        ).json()
        assert set(keys_of(wide)) == visible_keys(user_id, include_expired=True)


@pytest.mark.parametrize(
    ("user_id", "query"),
    [
        ("c2", "customer_id=A1"),  # c1's account
        ("c2", "customer_id=D1&include_expired=true"),
        ("c3", "type=usage_drop"),  # c3 has none; others do
        ("M2", "category=risk"),  # only M1's team has risks
        ("c4", "status=new&customer_id=A2&include_expired=true"),
        ("M3", "priority=high"),
    ],
)
def test_filters_never_reach_outside_scope(org: Org, user_id: str, query: str) -> None:
    body = org.client.get(f"/api/insights?{query}", headers=org.auth(user_id)).json()
    assert (body["insights"], body["total"], body["unread"]) == ([], 0, 0)


def test_ids_outside_scope_look_unknown_and_change_nothing(org: Org) -> None:
    unknown = str(uuid.uuid4())
    reference = org.client.get(f"/api/insights/{unknown}", headers=org.auth("c1"))
    assert reference.status_code == 404
    before = org.store.get_insights().select("id", "status", "feedback").sort("id")
    for user_id in USER_IDS:
        hidden = sorted({s.key for s in SPECS} - visible_keys(user_id, include_expired=True))
        for key in hidden if org.thorough else hidden[:1]:
            path = f"/api/insights/{ID[key]}"
            got = org.client.get(path, headers=org.auth(user_id))
            assert (got.status_code, got.json()) == (404, reference.json()), (user_id, key)
            acted = org.client.post(
                f"{path}/action", json={"action": "dismiss"}, headers=org.auth(user_id)
            )
            assert acted.status_code == 404, (user_id, key)
            shared = org.client.post(
                f"{path}/share", json={"user_ids": [user_id]}, headers=org.auth(user_id)
            )
            assert shared.status_code == 404, (user_id, key)
    after = org.store.get_insights().select("id", "status", "feedback").sort("id")
    assert after.equals(before)
    assert org.store.feedback_events().height == 0


def test_account_and_team_views_respect_scope(org: Org) -> None:
    assert org.client.get("/api/accounts/A1/insights", headers=org.auth("c2")).status_code == 404
    mine = org.client.get("/api/accounts/A1/insights", headers=org.auth("c1")).json()
    assert set(keys_of(mine)) == {"a", "b"}
    assert org.client.get("/api/accounts/D1/insights", headers=org.auth("M1")).status_code == 404
    assert org.client.get("/api/team/insights", headers=org.auth("c1")).status_code == 403
    for manager in ("M1", "M2", "M3", "L1"):
        body = org.client.get("/api/team/insights", headers=org.auth(manager)).json()
        owners = {row["key"] for row in body["by_csm"]}
        scope = TEAM[manager]
        expected_owners = {s.owner for s in SPECS if scope is None or s.owner in scope}
        assert owners == expected_owners, manager
        assert body["totals"]["insights"] == sum(
            1 for s in SPECS if scope is None or s.owner in scope
        )
        assert {KEY_OF[i["id"]] for i in body["top"]} <= visible_keys(manager)


def test_feed_pages_respect_scope(org: Org) -> None:
    client = org.client
    client.cookies.set(COOKIE, org.tokens["c2"])
    try:
        page = client.get("/feed")
        assert page.status_code == 200
        for key in visible_keys("c2"):
            assert ID[key] in page.text
        for key in {s.key for s in SPECS} - visible_keys("c2"):
            assert ID[key] not in page.text and BY_KEY[key].customer_name not in page.text
        assert client.get(f"/feed/insights/{ID['a']}").status_code == 404
        assert client.get("/feed/accounts/A1").status_code == 404
        assert client.get("/feed/team").status_code == 403
    finally:
        client.cookies.clear()
    assert client.get("/feed", follow_redirects=False).status_code == 303


# ---------------------------------------------------------------------------- authentication


def test_every_bad_token_gets_the_same_401(org: Org) -> None:
    store = org.store
    good = org.tokens["c1"]
    token_id = good.split("_")[1]
    expired = store.create_token("c1", expires_at=datetime.now(UTC) - timedelta(seconds=1))[1]
    revoked_id, revoked = store.create_token("c1")
    store.revoke_token(revoked_id)
    leaver = store.create_token("c4")[1]
    store.sync_users(USERS.filter(USERS["user_id"] != "c4"))
    try:
        cases = {
            "none": {},
            "basic scheme": {"Authorization": f"Basic {good}"},
            "empty": {"Authorization": "Bearer "},
            "malformed": {"Authorization": "Bearer not-a-token"},
            "unknown id": {"Authorization": f"Bearer ipt_{'0' * 16}_{good.split('_', 2)[2]}"},
            "wrong secret": {"Authorization": f"Bearer ipt_{token_id}_{'A' * 43}"},
            "expired": {"Authorization": f"Bearer {expired}"},
            "revoked": {"Authorization": f"Bearer {revoked}"},
            "deactivated user": {"Authorization": f"Bearer {leaver}"},
        }
        for name, headers in cases.items():
            for method, path in [
                ("GET", "/api/insights"),
                ("GET", f"/api/insights/{ID['a']}"),
                ("POST", f"/api/insights/{ID['a']}/action"),
                ("GET", "/api/team/insights"),
            ]:
                response = org.client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (name, path)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json() == {"detail": "missing, invalid, expired or revoked token"}
        assert org.client.get("/api/me", headers=org.auth("c1")).json()["user_id"] == "c1"
    finally:
        store.sync_users(USERS)
    assert (
        org.client.get("/api/me", headers={"Authorization": f"Bearer {leaver}"}).status_code == 200
    )


def test_opening_an_insight_marks_it_viewed_for_its_reader(org: Org) -> None:
    """Last: it writes (the owner's status; a manager's read receipt)."""
    by_owner = org.client.get(f"/api/insights/{ID['e']}", headers=org.auth("c2")).json()
    assert (by_owner["status"], by_owner["unread"]) == ("viewed", False)
    by_manager = org.client.get(f"/api/insights/{ID['g']}", headers=org.auth("M1")).json()
    assert (by_manager["status"], by_manager["unread"]) == ("new", False)
    feed = org.client.get("/api/insights", headers=org.auth("c3")).json()
    assert [(KEY_OF[i["id"]], i["unread"]) for i in feed["insights"]] == [("g", True)]

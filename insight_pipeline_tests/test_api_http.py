"""The HTTP API's behaviour on the real PostgreSQL: actions, snoozes, shares, unread, the team
rollup, 422s that say what is wrong, the published OpenAPI document, and customer data escaped
in the web feed's HTML. (Scope and authentication: test_api_access.py; fuzzing:
test_api_schema.py; the feed in a browser: test_api_feed_browser.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from insight_pipeline.api.app import create_app
from insight_pipeline.api.auth import COOKIE
from insight_pipeline.lib.store import InsightStore
from insight_pipeline.lib.tokens import csrf_token
from insight_pipeline_tests.api_data import ID, KEY_OF, XSS_NAME, seed, tokens

pytestmark = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)


@dataclass
class Api:
    store: InsightStore
    client: TestClient
    tokens: dict[str, str]

    def get(self, user: str, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self.auth(user), **kw)

    def post(self, user: str, path: str, body: Any = None) -> Any:
        return self.client.post(path, headers=self.auth(user), json=body)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


@pytest.fixture
def api(store: InsightStore) -> Iterator[Api]:
    seed(store)
    with TestClient(create_app(store=store, source="")) as client:
        yield Api(store, client, tokens(store))


def in_hours(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


def test_actions_change_the_insight_and_feed_the_history(api: Api) -> None:
    path = f"/api/insights/{ID['a']}/action"
    done = api.post("c1", path, {"action": "dismiss", "feedback": "already_knew"})
    assert done.status_code == 200
    body = done.json()
    assert (body["insight"]["status"], body["insight"]["feedback"]) == ("dismissed", "already_knew")
    assert [KEY_OF[i["id"]] for i in api.get("c1", "/api/insights").json()["insights"]] == [
        "b",
        "c",
    ]
    acted = api.post("M1", f"/api/insights/{ID['b']}/action", {"action": "actioned"}).json()
    assert acted["insight"]["actioned_at"] is not None
    events = api.store.feedback_events()
    assert events.select("id", "insight_id", "user_id", "action", "feedback").rows() == [
        (body["event_id"], ID["a"], "c1", "dismiss", "already_knew"),
        (acted["event_id"], ID["b"], "M1", "actioned", None),
    ]
    dismissed = api.get("c1", "/api/insights?status=dismissed").json()
    assert [KEY_OF[i["id"]] for i in dismissed["insights"]] == ["a"]


def test_snooze_hides_until_it_ends(api: Api) -> None:
    until = in_hours(0.001)  # a few seconds
    snoozed = api.post(
        "c1", f"/api/insights/{ID['a']}/action", {"action": "snooze", "snooze_until": until}
    )
    assert snoozed.json()["insight"]["snoozed_until"] is not None
    assert "a" not in {KEY_OF[i["id"]] for i in api.get("c1", "/api/insights").json()["insights"]}
    shown = api.get("c1", "/api/insights?include_snoozed=true").json()
    assert "a" in {KEY_OF[i["id"]] for i in shown["insights"]}
    # when snoozed_until passes, it is back in the feed by itself
    api.store.record_action(
        ID["b"], "c1", "snooze", snooze_until=datetime.now(UTC) + timedelta(milliseconds=50)
    )
    time.sleep(0.1)
    back = api.get("c1", "/api/insights").json()
    assert "b" in {KEY_OF[i["id"]] for i in back["insights"]}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"action": "snooze"}, "snooze_until is required"),
        ({"action": "snooze", "snooze_until": "2001-01-01T00:00:00Z"}, "must be in the future"),
        ({"action": "dismiss", "snooze_until": "2999-01-01T00:00:00Z"}, "only allowed when"),
        ({"action": "archive"}, "'dismiss', 'snooze' or 'actioned'"),
        ({"action": "dismiss", "feedback": "meh"}, "not_relevant"),
        ({"action": "dismiss", "why": "x"}, "Extra inputs are not permitted"),
        ({}, "Field required"),
    ],
)
def test_bad_action_bodies_get_a_clear_422(api: Api, body: dict, fragment: str) -> None:
    response = api.post("c1", f"/api/insights/{ID['a']}/action", body)
    assert response.status_code == 422
    assert fragment in str(response.json()["detail"])
    assert api.store.feedback_events().height == 0


@pytest.mark.parametrize(
    "query",
    ["from=2026-02-01&to=2026-01-01", "limit=0", "limit=201", "offset=-1", "priority=urgent"],
)
def test_bad_queries_get_a_422(api: Api, query: str) -> None:
    response = api.get("c1", f"/api/insights?{query}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]


def test_unread_views_and_mark_all_read(api: Api) -> None:
    assert api.get("c1", "/api/insights").json()["unread"] == 3
    assert api.get("c1", f"/api/insights/{ID['a']}").json()["status"] == "viewed"
    assert api.get("c1", "/api/insights").json()["unread"] == 2
    assert api.post("c1", "/api/insights/mark-all-read").json() == {"marked": 3}
    assert api.get("c1", "/api/insights").json()["unread"] == 0
    assert api.get("M1", "/api/insights").json()["unread"] == 6
    api.post("M1", "/api/insights/mark-all-read")
    assert api.get("M1", "/api/insights").json()["unread"] == 0


def test_sharing_shows_who_and_why(api: Api) -> None:
    shared = api.post("c1", f"/api/insights/{ID['a']}/share", {"user_ids": ["c3"], "note": "FYI"})
    assert shared.status_code == 200 and shared.json()["shared_with"] == ["c3"]
    feed = api.get("c3", "/api/insights").json()
    row = next(i for i in feed["insights"] if i["id"] == ID["a"])
    assert row["shared"]["by_user_id"] == "c1" and row["shared"]["by_name"] == "Cara One"
    assert row["shared"]["note"] == "FYI" and row["unread"]
    assert feed["total"] == 2  # g (own) and a (shared)
    # the recipient may act on it too; the history says who did
    api.post("c3", f"/api/insights/{ID['a']}/action", {"action": "actioned"})
    assert api.store.feedback_events()["user_id"].to_list() == ["c3"]
    unknown = api.post("c1", f"/api/insights/{ID['b']}/share", {"user_ids": ["ghost"]})
    assert unknown.status_code == 422 and "ghost" in str(unknown.json()["detail"])


def test_team_rollup_over_http(api: Api) -> None:
    api.post("c1", f"/api/insights/{ID['a']}/action", {"action": "dismiss"})
    api.post("c2", f"/api/insights/{ID['e']}/action", {"action": "actioned"})
    api.post("c2", f"/api/insights/{ID['f']}/action", {"action": "actioned"})
    body = api.get("M1", "/api/team/insights").json()
    assert body["totals"]["insights"] == 7
    assert body["totals"]["relevance_rate"] == pytest.approx(1 - 1 / 3, abs=1e-4)
    assert body["totals"]["action_rate"] == pytest.approx(2 / 7, abs=1e-4)
    by_csm = {r["key"]: r for r in body["by_csm"]}
    assert by_csm["c1"]["label"] == "Cara One" and by_csm["c1"]["relevance_rate"] == 0.0
    assert by_csm["c2"]["action_rate"] == 1.0
    assert {r["key"] for r in body["by_category"]} == {"usage", "risk", "timing"}
    assert [r["key"] for r in body["by_priority"]] == ["high", "medium", "low"]
    assert [KEY_OF[i["id"]] for i in body["top"]] == ["b", "g", "c"]
    narrow = api.get("M1", "/api/team/insights?from=2000-01-01&to=2000-01-02").json()
    assert narrow["totals"]["insights"] == 0 and narrow["by_csm"] == []


def test_openapi_documents_the_behaviour(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    expected = {
        ("/api/insights", "get"): {"200", "401", "422"},
        ("/api/insights/{insight_id}", "get"): {"200", "401", "404", "422"},
        ("/api/insights/{insight_id}/action", "post"): {"200", "401", "404", "422"},
        ("/api/insights/{insight_id}/share", "post"): {"200", "401", "404", "422"},
        ("/api/insights/mark-all-read", "post"): {"200", "401"},
        ("/api/team/insights", "get"): {"200", "401", "403", "422"},
        ("/api/accounts/{customer_id}/insights", "get"): {"200", "401", "404", "422"},
    }
    for (path, method), codes in expected.items():
        operation = paths[path][method]
        assert codes <= set(operation["responses"]), (path, method)
        assert operation["security"] == [{"bearer": []}]
    assert not any(p.startswith("/feed") for p in paths)  # the HTML feed is not the API


def test_openapi_documents_the_503_of_every_store_backed_operation(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    operations = {(p, m): op for p, ops in paths.items() for m, op in ops.items()}
    # every operation but the health check authenticates, so reads the store's tokens at least
    store_backed = {key for key in operations if key[0] != "/api/health"}
    assert {
        ("/api/me", "get"),
        ("/api/insights", "get"),
        ("/api/insights/{insight_id}", "get"),
        ("/api/insights/{insight_id}/action", "post"),
        ("/api/insights/{insight_id}/share", "post"),
        ("/api/insights/mark-all-read", "post"),
        ("/api/accounts/{customer_id}/insights", "get"),
        ("/api/team/insights", "get"),
        ("/api/team/rollups", "get"),
        ("/api/team/rollups/history", "get"),
    } <= store_backed
    for key in sorted(store_backed):
        operation = operations[key]
        assert operation["security"] == [{"bearer": []}], key
        unavailable = operation["responses"].get("503")
        assert unavailable is not None, key
        assert "store is unreachable" in unavailable["description"], key
        assert unavailable["headers"]["Retry-After"]["schema"]["type"] == "integer", key
        schema = unavailable["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorOut"}, key
    assert "503" not in operations[("/api/health", "get")]["responses"]  # never reads the store


def test_customer_data_is_escaped_in_the_feed(api: Api) -> None:
    api.store.share_insight(ID["i"], "c4", ["c1"], note="<script>alert(1)</script>")
    api.client.cookies.set(COOKIE, api.tokens["c1"])
    html = api.client.get("/feed").text
    assert XSS_NAME not in html and "<script>alert(1)" not in html
    assert "&lt;img src=x onerror=" in html and "Bobby &amp; Tables" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    account = api.client.get("/feed/accounts/D1")
    assert account.status_code == 200 and XSS_NAME not in account.text


def test_an_echo_says_what_it_repeats_in_the_feed_and_the_api(api: Api) -> None:
    """An insight that repeats an open one (score_parts.echo_of) says so on its card, escaped;
    the others do not."""
    api.client.cookies.set(COOKIE, api.tokens["c1"])
    html = api.client.get("/feed").text
    assert html.count('data-testid="echo"') == 1
    assert "Repeats the open usage drop in &lt;b&gt;dau&lt;/b&gt; on this account" in html
    body = api.get("c1", f"/api/insights/{ID['c']}").json()
    assert body["score_parts"]["echo_of"] == "usage_drop <b>dau</b>"


def test_feed_forms_need_the_session_and_its_csrf_value(api: Api) -> None:
    path = f"/feed/insights/{ID['a']}/action"
    form = {"action": "dismiss", "feedback": "not_relevant"}
    assert api.client.post(path, data=form).status_code == 401
    api.client.cookies.set(COOKIE, api.tokens["c1"])
    assert api.client.post(path, data={**form, "csrf": "forged"}).status_code == 403
    ok = api.client.post(
        path,
        data={**form, "csrf": csrf_token(api.tokens["c1"]), "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/feed"  # no open redirect
    assert api.store.get_insights([ID["a"]]).row(0, named=True)["status"] == "dismissed"
    login = api.client.post("/feed/login", data={"token": api.tokens["c2"]}, follow_redirects=False)
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_each_user_chooses_their_own_digest_frequency(api: Api) -> None:
    """The digest's footer sends users to the feed to choose daily, weekly or off: the API and
    the feed's form set the caller's own preference, which the digest then reads; a weekday
    goes with weekly only, and a bad choice is a 422 that changes nothing."""
    assert api.get("c1", "/api/me/digest").json() == {"frequency": "daily", "weekday": None}
    put = api.client.put(
        "/api/me/digest", headers=api.auth("c1"), json={"frequency": "weekly", "weekday": 2}
    )
    assert put.status_code == 200 and put.json() == {"frequency": "weekly", "weekday": 2}
    assert api.get("c1", "/api/me/digest").json() == {"frequency": "weekly", "weekday": 2}
    assert api.get("c2", "/api/me/digest").json()["frequency"] == "daily"  # not anyone else's
    for body, fragment in (
        ({"frequency": "daily", "weekday": 3}, "goes with weekly"),
        ({"frequency": "weekly"}, "goes with weekly"),
        ({"frequency": "weekly", "weekday": 7}, "less than or equal to 6"),
        ({"frequency": "weekly", "weekday": True}, "valid integer"),  # not Tuesday
        ({"frequency": "weekly", "weekday": "3"}, "valid integer"),
        ({"frequency": "hourly"}, "'daily', 'weekly' or 'off'"),
        ({"frequency": "off", "user_id": "c2"}, "Extra inputs are not permitted"),
    ):
        bad = api.client.put("/api/me/digest", headers=api.auth("c1"), json=body)
        assert bad.status_code == 422 and fragment in str(bad.json()["detail"]), body
    assert api.store.digest_preference("c1") == ("weekly", 2)
    assert api.client.put("/api/me/digest", json={"frequency": "off"}).status_code == 401
    # the feed: the form shows the choice and changes it, with the session's csrf value only
    api.client.cookies.set(COOKIE, api.tokens["c2"])
    html = api.client.get("/feed").text
    assert 'value="daily" selected' in html and 'data-testid="digest-settings"' in html
    form = {"frequency": "off", "weekday": "0", "next": "/feed"}
    assert api.client.post("/feed/digest", data={**form, "csrf": "forged"}).status_code == 403
    assert api.store.digest_preference("c2") == ("daily", None)
    done = api.client.post(
        "/feed/digest", data={**form, "csrf": csrf_token(api.tokens["c2"])}, follow_redirects=False
    )
    assert done.status_code == 303 and api.store.digest_preference("c2") == ("off", None)
    weekly = {**form, "frequency": "weekly", "weekday": "4", "csrf": csrf_token(api.tokens["c2"])}
    api.client.post("/feed/digest", data=weekly, follow_redirects=False)
    assert api.store.digest_preference("c2") == ("weekly", 4)
    assert 'value="4" selected' in api.client.get("/feed").text
    wrong = {**weekly, "weekday": "9"}
    assert api.client.post("/feed/digest", data=wrong).status_code == 422
    assert api.store.digest_preference("c2") == ("weekly", 4)
    assert api.store.digest_preference("c1") == ("weekly", 2)

"""Access, table-driven, on the real PostgreSQL: every API endpoint x every kind of caller.

Callers: the owning CSM (c1), another CSM (c2), the owner's manager (M1), a manager of another
team (M2), the leader (L1), and no token, a wrong secret, an expired and a revoked token. The
table states the status each gets from each operation of the published OpenAPI document (a new
endpoint fails the test until it has a row), plus the feed's pages. Writes (action, share) each
act on their own copy of an insight, so the test also checks that a refused write changed
nothing and an allowed one did. Counts: for every caller and filter (paging, account, category,
priority, type, status, dates, expired), `total` and `unread` count exactly what the rules let
the caller see - never another's insight - and shares, reads and mark-all-read move only the
counts they should. The count tests run first (file order), before the matrix's writes.
(test_api_access.py holds the rule table's scope checks on both backends; this file adds the
endpoint x caller matrix and the count oracle.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient

from insight_pipeline.api.app import create_app
from insight_pipeline.api.auth import COOKIE
from insight_pipeline.lib.store import InsightStore
from insight_pipeline_tests.api_data import (
    ID,
    SPECS,
    TEAM,
    Spec,
    empty_database,
    insights_frame,
    seed,
    tokens,
)

CALLERS = ["owner", "other_csm", "team_manager", "other_manager", "leader",
           "none", "bad", "expired", "revoked"]  # fmt: skip
USER_OF = {
    "owner": "c1",
    "other_csm": "c2",
    "team_manager": "M1",
    "other_manager": "M2",
    "leader": "L1",
}
OPS = ["action", "share"]
#: one insight per (write operation, caller), owned by c1 on account W1, so every write
#: lands on its own row
WRITES = [
    Spec(f"w_{op}_{caller}", "c1", "W1", "Write Target", "usage", "usage_drop", "low", 0.05, 1)
    for op in OPS
    for caller in CALLERS
]
ALL_SPECS = SPECS + WRITES


@dataclass
class Org:
    store: InsightStore
    client: TestClient
    headers: dict[str, dict[str, str]]
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def org(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    store = InsightStore(empty_database("postgres", request, tmp_path_factory))
    store.migrate()
    seed(store)
    extra = insights_frame().head(0)
    now, today = datetime.now(UTC), datetime.now(UTC).date()
    for spec in WRITES:
        row = insights_frame(today, now).row(0, named=True)
        row.update(
            id=ids(spec.key), customer_id=spec.customer_id, customer_name=spec.customer_name,
            user_id=spec.owner, priority=spec.priority, score=spec.score,
            partition_date=today - timedelta(days=spec.age_days),
            last_seen_date=today - timedelta(days=spec.age_days),
            fingerprint=f"{spec.customer_id}|{spec.type}|{spec.key}", title=spec.key,
        )  # fmt: skip
        extra = pl.concat([extra, pl.DataFrame([row], schema=extra.schema)])
    store.write_insights(extra, pl.DataFrame())
    toks = tokens(store)
    expired = store.create_token("c1", expires_at=now - timedelta(seconds=1))[1]
    revoked_id, revoked = store.create_token("c1")
    store.revoke_token(revoked_id)
    bad = f"ipt_{toks['c1'].split('_')[1]}_{'A' * 43}"  # c1's token id, a wrong secret
    headers = {caller: {"Authorization": f"Bearer {toks[u]}"} for caller, u in USER_OF.items()}
    headers["none"] = {}
    for caller, token in (("bad", bad), ("expired", expired), ("revoked", revoked)):
        headers[caller] = {"Authorization": f"Bearer {token}"}
    every = {**toks, "expired": expired, "revoked": revoked, "bad": bad}
    with TestClient(create_app(store=store, source="")) as client:
        yield Org(store, client, headers, every)
    store.dispose()


def ids(key: str) -> str:
    return ID.get(key) or str(uuid.uuid5(uuid.NAMESPACE_URL, f"api-test|{key}"))


# ------------------------------------------------------------------------------ the counts


def expected(user: str, *, read: set[str] = frozenset(), shared: set[str] = frozenset(),
             **filters: Any) -> tuple[int, int]:  # fmt: skip
    """(total, unread) the rules give `user` under `filters`: their scope plus shares, all new
    (nobody acted on the seeded ones), minus what they read."""
    team = TEAM[user]
    today = datetime.now(UTC).date()
    keys = []
    for s in ALL_SPECS:
        if not (team is None or s.owner in team or s.key in shared):
            continue
        if s.expired and not filters.get("include_expired"):
            continue
        day = today - timedelta(days=s.age_days)
        if any(
            [
                filters.get("customer_id") not in (None, s.customer_id),
                filters.get("category") not in (None, s.category),
                filters.get("priority") not in (None, s.priority),
                filters.get("type") not in (None, s.type),
                filters.get("status") not in (None, "new"),
                "from" in filters and day < filters["from"],
                "to" in filters and day > filters["to"],
            ]
        ):
            continue
        keys.append(s.key)
    return len(keys), len([k for k in keys if k not in read])


def counted(org: Org, user: str, **filters: Any) -> tuple[int, int]:
    params = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in filters.items()}
    auth = {"Authorization": f"Bearer {org.tokens[user]}"}
    totals = set()
    for offset in (0, 500):  # paging never changes the counts
        body = org.client.get(
            "/api/insights", params={**params, "limit": 1, "offset": offset}, headers=auth
        ).json()
        totals.add((body["total"], body["unread"]))
    assert len(totals) == 1, (user, filters, totals)
    return totals.pop()


def test_totals_and_unread_count_only_what_the_caller_may_see(org: Org) -> None:
    today = datetime.now(UTC).date()
    filters: list[dict[str, Any]] = [
        {},
        {"customer_id": "A1"},
        {"customer_id": "D1"},
        {"customer_id": "B2", "include_expired": True},
        {"category": "risk"},
        {"priority": "high"},
        {"type": "usage_drop"},
        {"status": "new", "include_expired": True},
        {"include_expired": True},
        {"from": today - timedelta(days=4), "to": today - timedelta(days=2)},
    ]
    for user in TEAM:
        for f in filters:
            assert counted(org, user, **f) == expected(user, **f), (user, f)


def test_shares_reads_and_mark_all_read_move_only_their_own_counts(org: Org) -> None:
    """c2 shares nothing it cannot see; c1 shares `a` with c3: c3 (and only c3) gains one, unread;
    c3's manager M3 does not see it (shares go to people, not their managers); c3 reading it
    moves c3's unread only; M1 marking all read leaves c1's own insights new to c1."""

    def counts(user: str) -> tuple[int, int]:
        return counted(org, user, customer_id="A1")

    before = {u: counts(u) for u in TEAM}
    auth = {u: {"Authorization": f"Bearer {org.tokens[u]}"} for u in TEAM}
    assert (
        org.client.post(
            f"/api/insights/{ID['a']}/share", json={"user_ids": ["c3"]}, headers=auth["c2"]
        ).status_code
        == 404
    )
    assert (
        org.client.post(
            f"/api/insights/{ID['a']}/share", json={"user_ids": ["c3"]}, headers=auth["c1"]
        ).status_code
        == 200
    )
    after_share = {u: counts(u) for u in TEAM}
    assert after_share["c3"] == (before["c3"][0] + 1, before["c3"][1] + 1)
    assert {u: c for u, c in after_share.items() if u != "c3"} == {
        u: c for u, c in before.items() if u != "c3"
    }
    assert org.client.get(f"/api/insights/{ID['a']}", headers=auth["c3"]).status_code == 200
    after_read = {u: counts(u) for u in TEAM}
    assert after_read["c3"] == (after_share["c3"][0], after_share["c3"][1] - 1)
    assert {u: c for u, c in after_read.items() if u != "c3"} == {
        u: c for u, c in after_share.items() if u != "c3"
    }
    marked = org.client.post("/api/insights/mark-all-read", headers=auth["M1"])
    assert marked.status_code == 200
    after_mark = {u: counts(u) for u in TEAM}
    assert after_mark["M1"][1] == 0
    assert {u: c for u, c in after_mark.items() if u != "M1"} == {
        u: c for u, c in after_read.items() if u != "M1"
    }
    assert after_mark["c1"][1] == after_read["c1"][1] > 0  # still new to their owner


# ------------------------------------------------------------------------------ the matrix

OK_ALL = dict.fromkeys(USER_OF, 200)
DENIED = {"none": 401, "bad": 401, "expired": 401, "revoked": 401}
SCOPED = {"owner": 200, "other_csm": 404, "team_manager": 200, "other_manager": 404,
          "leader": 200, **DENIED}  # fmt: skip
TEAM_ONLY = {"owner": 403, "other_csm": 403, "team_manager": 200, "other_manager": 200,
             "leader": 200, **DENIED}  # fmt: skip
TEAM_SCOPED = {**TEAM_ONLY, "other_manager": 404}

#: (method, OpenAPI path, concrete path or a function of the caller, body, expected by caller)
MATRIX: list[tuple[str, str, Any, Any, dict[str, int]]] = [
    ("GET", "/api/health", "/api/health", None, dict.fromkeys(CALLERS, 200)),
    ("GET", "/api/me", "/api/me", None, {**OK_ALL, **DENIED}),
    ("GET", "/api/me/digest", "/api/me/digest", None, {**OK_ALL, **DENIED}),
    # each caller's own preference only (no user id in the path or body to aim elsewhere)
    ("PUT", "/api/me/digest", "/api/me/digest", {"frequency": "weekly", "weekday": 1},
     {**OK_ALL, **DENIED}),
    ("GET", "/api/insights", "/api/insights?limit=5&offset=1", None, {**OK_ALL, **DENIED}),
    ("GET", "/api/insights/{insight_id}", f"/api/insights/{ID['a']}", None, SCOPED),
    ("POST", "/api/insights/{insight_id}/action",
     lambda c: f"/api/insights/{ids(f'w_action_{c}')}/action",
     {"action": "dismiss", "feedback": "not_relevant"}, SCOPED),
    ("POST", "/api/insights/{insight_id}/share",
     lambda c: f"/api/insights/{ids(f'w_share_{c}')}/share",
     {"user_ids": ["c3"], "note": "look"}, SCOPED),
    ("GET", "/api/accounts/{customer_id}/insights", "/api/accounts/A1/insights", None, SCOPED),
    ("GET", "/api/team/insights", "/api/team/insights", None, TEAM_ONLY),
    ("GET", "/api/team/rollups", "/api/team/rollups?group_by=csm", None, TEAM_ONLY),
    ("GET", "/api/team/rollups", "/api/team/rollups?group_by=total&scope=M1", None, TEAM_SCOPED),
    ("GET", "/api/team/rollups/history", "/api/team/rollups/history?days=7", None, TEAM_ONLY),
    ("GET", "/api/team/rollups/history", "/api/team/rollups/history?scope=M1", None,
     TEAM_SCOPED),
    # last: it changes statuses (the caller's own new insights become viewed)
    ("POST", "/api/insights/mark-all-read", "/api/insights/mark-all-read", None,
     {**OK_ALL, **DENIED}),
]  # fmt: skip

FEED_PAGES: list[tuple[str, dict[str, int]]] = [
    ("/feed", dict.fromkeys(USER_OF, 200)),
    (f"/feed/insights/{ID['a']}", {k: v for k, v in SCOPED.items() if k in USER_OF}),
    ("/feed/accounts/A1", {k: v for k, v in SCOPED.items() if k in USER_OF}),
    ("/feed/team", {k: v for k, v in TEAM_ONLY.items() if k in USER_OF}),
    ("/feed/leader", {k: v for k, v in TEAM_ONLY.items() if k in USER_OF}),
]


def test_the_matrix_covers_every_published_operation(org: Org) -> None:
    published = {
        (method.upper(), path)
        for path, operations in org.client.get("/openapi.json").json()["paths"].items()
        for method in operations
    }
    covered = {(method, path) for method, path, *_ in MATRIX}
    assert published == covered, {"untested": published - covered, "gone": covered - published}


def test_every_endpoint_answers_every_caller_as_the_rules_say(org: Org) -> None:
    """Runs after the count tests (file order): its writes would change their numbers."""
    before = org.store.get_insights().select("id", "status", "feedback").sort("id")
    after = before
    got: dict[tuple[str, str], int] = {}
    want: dict[tuple[str, str], int] = {}
    for method, template, path, body, expected in MATRIX:
        if template == "/api/insights/mark-all-read":
            after = org.store.get_insights().select("id", "status", "feedback").sort("id")
        for caller in CALLERS:
            url = path(caller) if callable(path) else path
            response = org.client.request(method, url, headers=org.headers[caller], json=body)
            got[(url, caller)] = response.status_code
            want[(url, caller)] = expected[caller]
            if response.status_code == 401:
                assert response.json() == {"detail": "missing, invalid, expired or revoked token"}
            if response.status_code == 404 and "{insight_id}" in template:
                assert response.json() == {"detail": "insight not found"}  # like an unknown id
    assert got == want
    # what the writes did: exactly the allowed ones changed their own row, nothing else moved
    # (the owner opening `a` made it viewed)
    changed = {
        r["id"]
        for r, s in zip(after.iter_rows(named=True), before.iter_rows(named=True), strict=True)
        if r != s
    }
    allowed = {c for c, status in SCOPED.items() if status == 200}
    assert changed == {ids(f"w_action_{c}") for c in allowed} | {ID["a"]}
    events = org.store.feedback_events()
    assert sorted(events["insight_id"]) == sorted(ids(f"w_action_{c}") for c in allowed)
    assert sorted(events["user_id"]) == sorted(USER_OF[c] for c in allowed)
    shared = org.client.get("/api/insights?customer_id=W1&limit=100", headers=headers3(org))
    assert {i["title"] for i in shared.json()["insights"]} == {f"w_share_{c}" for c in allowed}


def headers3(org: Org) -> dict[str, str]:
    return {"Authorization": f"Bearer {org.tokens['c3']}"}


def test_feed_pages_answer_every_caller_as_the_rules_say(org: Org) -> None:
    for path, expected in FEED_PAGES:
        for caller in CALLERS:
            org.client.cookies.clear()
            if caller in USER_OF:
                org.client.cookies.set(COOKIE, org.tokens[USER_OF[caller]])
            elif caller != "none":
                org.client.cookies.set(COOKIE, org.tokens[caller])
            page = org.client.get(path, follow_redirects=False)
            status = expected.get(caller, 303)  # no valid session: to the login page
            assert page.status_code == status, (path, caller, page.status_code)
            if status == 303:
                assert page.headers["location"].startswith("/feed/login")
    org.client.cookies.clear()

"""lib/team.py on frames built by hand: the binomial tail and Benjamini-Hochberg against brute
force; a planted cross-account pattern (several accounts of one industry with the same drop) is
found, with the right owner, narrative and evidence, while a matched random scatter (the same
number of events spread over the accounts at the base rate) and a standing trait are not; a range
equals day-by-day; and the rollups (open as of a day from the feedback history, ARR at risk,
expansion ARR, rates, time to action, week over week, team and segment scopes) on a small case
whose every number is worked out below."""

from __future__ import annotations

import itertools
import json
import math
import random
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insight_pipeline.defs.insights.checks import run_checks
from insight_pipeline.lib import team as team_module
from insight_pipeline.lib.digest import build_digests, digest_window
from insight_pipeline.lib.email import render_parts, subject_for
from insight_pipeline.lib.settings import RankingSettings, TeamSettings
from insight_pipeline.lib.signals import TEAM_TYPES
from insight_pipeline.lib.team import (
    ROLLUP_COLUMNS,
    benjamini_hochberg,
    binomial_sf,
    cross_account_patterns,
    hypergeometric_sf,
    open_at,
    open_on_days,
    pattern_hits,
    pattern_owner,
    rollup_frame,
)

D = date(2026, 6, 30)
INDUSTRIES = ["fintech", "retail", "media", "software", "healthcare", "logistics"]
TEAM = TeamSettings()
RANKING = RankingSettings()

USERS = pl.DataFrame(
    {
        "user_id": ["L", "M1", "M2", *(f"c{i}" for i in range(8))],
        "name": ["Lee Lead", "Mia Manager", "Max Manager", *(f"Csm {i}" for i in range(8))],
        "role": ["leader", "manager", "manager", *(["csm"] * 8)],
        "manager_id": [None, "L", "L", *(["M1"] * 4), *(["M2"] * 4)],
    }
)


def accounts(n: int = 240, seed: int = 0) -> pl.DataFrame:
    """Accounts with independently drawn attributes, so groups overlap only by chance."""
    rng = random.Random(f"accounts-{seed}")
    return pl.DataFrame(
        {
            "customer_id": [f"A{i:03d}" for i in range(n)],
            "name": [f"Account {i}" for i in range(n)],
            "industry": [INDUSTRIES[i % 6] for i in range(n)],
            "segment": [rng.choice(["smb", "mid_market", "enterprise"]) for _ in range(n)],
            "plan": [rng.choice(["starter", "pro", "business"]) for _ in range(n)],
            "region": [rng.choice(["NA", "EMEA", "APAC", "LATAM"]) for _ in range(n)],
            "csm_user_id": [f"c{rng.randrange(8)}" for _ in range(n)],
            "arr": [20_000.0 + 1_000 * (i % 50) for i in range(n)],
            "renewal_date": [D + timedelta(days=10 + 7 * (i % 60)) for i in range(n)],
            "contract_start": [date(2024, 1, 1)] * n,
            "churned_on": pl.Series([None] * n, dtype=pl.Date),
        }
    )


def background(frame: pl.DataFrame, seed: int, rate: float = 0.05) -> list[dict]:
    """Every account shows each of a few types with probability `rate` somewhere in the window
    (and in the window before, so nothing looks like a rise by itself)."""
    rng = random.Random(f"background-{seed}")
    rows = []
    for cid in frame["customer_id"]:
        for kind, subjects in (
            ("usage_drop", ["dau", "logins", "api_calls", "reports"]),
            ("going_dark", [""]),
            ("support_surge", [""]),
        ):
            for lag in (0, TEAM.window_days):
                if rng.random() < rate:
                    day = D - timedelta(days=lag + rng.randrange(TEAM.window_days))
                    rows.append(candidate(cid, kind, rng.choice(subjects), day))
    return rows


def candidate(customer_id: str, kind: str, subject: str, day: date) -> dict:
    return {"customer_id": customer_id, "type": kind, "subject": subject, "partition_date": day}


def frame_of(rows: list[dict]) -> pl.DataFrame:
    schema = {"customer_id": pl.String, "type": pl.String, "subject": pl.String}
    return pl.DataFrame(rows, schema={**schema, "partition_date": pl.Date})


def planted_world(seed: int, planted: bool, k: int = 8) -> tuple[pl.DataFrame, list[str]]:
    """Background plus k usage drops on `reports` in the last 10 days: on k fintech accounts
    (planted) or on k accounts drawn from all of them (the matched random scatter)."""
    frame = accounts(seed=seed)
    rng = random.Random(f"plant-{seed}")  # a stream of its own, independent of the attributes
    pool = (frame.filter(pl.col("industry") == "fintech") if planted else frame)[
        "customer_id"
    ].to_list()
    chosen = sorted(rng.sample(pool, k))
    rows = background(frame, seed) + [
        candidate(c, "usage_drop", "reports", D - timedelta(days=rng.randrange(10))) for c in chosen
    ]
    return frame_of(rows), chosen


# ---------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("x", "n", "p"),
    [(0, 10, 0.1), (1, 10, 0.1), (3, 10, 0.1), (6, 40, 0.02), (10, 10, 0.5), (2, 300, 0.001)],
)
def test_binomial_tail_equals_brute_force(x: int, n: int, p: float) -> None:
    exact = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x, n + 1))
    got = binomial_sf(np.array([x]), np.array([n]), np.array([p]))[0]
    assert got == pytest.approx(exact, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    ("x", "n", "k", "total"),
    [(8, 40, 11, 240), (0, 40, 11, 240), (3, 5, 5, 10), (3, 50, 3, 100), (2, 95, 10, 100)],
)
def test_hypergeometric_tail_equals_brute_force(x: int, n: int, k: int, total: int) -> None:
    top = min(k, n)
    exact = sum(math.comb(k, i) * math.comb(total - k, n - i) for i in range(x, top + 1))
    got = hypergeometric_sf(np.array([x]), np.array([n]), np.array([k]), total)[0]
    assert got == pytest.approx(exact / math.comb(total, n), rel=1e-9)


def test_repeated_tests_get_the_p_value_of_each_alone() -> None:
    """hypergeometric_sf sums each distinct (x, n, k, total) once: a repeated test gets the bits
    it gets on its own, in any order, also where the four do not fit one integer key."""
    rng = np.random.default_rng(5)
    total = rng.integers(60, 90, 500)
    k, n = rng.integers(0, 60, 500), rng.integers(0, 60, 500)
    x = rng.integers(-1, 12, 500)
    picks = rng.integers(0, 500, 4000)
    many = hypergeometric_sf(x[picks], n[picks], k[picks], total[picks])
    alone = np.array(
        [
            hypergeometric_sf(x[i : i + 1], n[i : i + 1], k[i : i + 1], total[i : i + 1])[0]
            for i in picks
        ]
    )
    assert np.array_equal(many.view(np.int64), alone.view(np.int64))
    huge = np.array([3, 1 << 40, 3, 1 << 40, 5], dtype=np.int64)
    columns = [huge, huge[::-1].copy(), np.array([1, 2, 1, 2, 1]), huge]
    (a, b, c, d), of_row = team_module._distinct_rows(*columns)
    assert a.size == 4 and of_row[1] == of_row[3]
    for got, column in zip((a, b, c, d), columns, strict=True):
        assert np.array_equal(got[of_row], column)


def test_tails_in_many_chunks_on_threads_equal_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tails of many tests, laid out in chunks of a few terms (so several threads each take
    many chunks, and a tail longer than a chunk gets one of its own), give the same numbers to
    the bit as one chunk, and each matches its own brute-force sum."""
    rng = np.random.default_rng(3)
    total = 400
    k = rng.integers(1, 120, 3000)
    n = rng.integers(3, 200, 3000)
    x = rng.integers(0, 40, 3000)
    p = k / total
    whole = hypergeometric_sf(x, n, k, total), binomial_sf(x, n, p)
    monkeypatch.setattr(team_module, "TAIL_TERMS_PER_CHUNK", 7)
    chunked = hypergeometric_sf(x, n, k, total), binomial_sf(x, n, p)
    assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])
    for i in range(0, 3000, 97):
        top = min(k[i], n[i])
        exact = sum(
            math.comb(int(k[i]), j) * math.comb(total - int(k[i]), int(n[i]) - j)
            for j in range(int(x[i]), int(top) + 1)
        ) / math.comb(total, int(n[i]))
        assert chunked[0][i] == pytest.approx(exact, rel=1e-9, abs=1e-300), i


def test_p_values_are_rounded_to_six_significant_digits_down_to_subnormals() -> None:
    """A pattern so strong that its p-value is subnormal (1e-310) stays a number: it once
    became NaN (an overflowing scale) and so never passed the significance test."""
    p = np.array([0.123456789, 1.23456789e-200, 1e-310, 5e-324, 0.0, 1.0])
    rounded = team_module._round_sig(p)
    assert not np.isnan(rounded).any()
    assert rounded[0] == 0.123457 and rounded[1] == pytest.approx(1.23457e-200, rel=1e-12)
    assert rounded[2:].tolist() == [1e-310, 5e-324, 0.0, 1.0]
    q = benjamini_hochberg(rounded, 10)
    assert not np.isnan(q).any() and q[2] == pytest.approx(1e-309)


def test_benjamini_hochberg_matches_the_textbook_procedure() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    m = 10  # six more tests with p = 1 were run
    q = benjamini_hochberg(p, m)
    ranked = np.sort(p)
    expected_sorted = np.minimum.accumulate((ranked * m / np.arange(1, 5))[::-1])[::-1]
    assert np.allclose(np.sort(q), expected_sorted)
    assert q[3] == pytest.approx(0.005 * 10 / 1)


# ---------------------------------------------------------------------------- patterns


def run(candidates: pl.DataFrame, frame: pl.DataFrame, first: date = D, last: date = D):
    return cross_account_patterns(candidates, frame, USERS, first, last, TEAM, RANKING)


def test_a_planted_pattern_is_found_with_its_accounts() -> None:
    """Eight of the forty fintech accounts with the same drop, against ~1.5% elsewhere: found
    on (nearly) every draw of the background, with every planted account among its members."""
    missed = []
    for seed in range(20):
        candidates, chosen = planted_world(seed, planted=True)
        raised, _tested = run(candidates, accounts(seed=seed))
        fintech = raised.filter(
            (pl.col("dimension") == "industry") & (pl.col("group_value") == "fintech")
        )
        if fintech.height == 0:
            missed.append(seed)
            continue
        best = fintech.sort("q_value").row(0, named=True)
        assert best["pattern_type"] == "usage_drop"
        assert set(chosen) <= set(best["members"])
        assert best["q_value"] <= TEAM.fdr and best["lift"] >= TEAM.min_lift
    assert len(missed) <= 1, missed


def test_a_matched_random_scatter_is_not_a_pattern() -> None:
    """The same events spread over all accounts: the day's BH at 5%, the minimum count, lift
    and rise keep false patterns rare - at most one draw in thirty raises anything."""
    found = []
    for seed in range(30):
        candidates, _chosen = planted_world(seed, planted=False)
        raised, tested = run(candidates, accounts(seed=seed))
        assert tested.height > 0
        if raised.height:
            found.append(seed)
    assert len(found) <= 1, found


def test_the_planted_pattern_is_a_complete_team_insight() -> None:
    candidates, chosen = planted_world(0, planted=True)
    frame = accounts(seed=0)
    raised, _ = run(candidates, frame)
    row = raised.filter(
        (pl.col("group_value") == "fintech") & (pl.col("pattern_subject") == "reports")
    ).row(0, named=True)
    assert row["customer_id"] is None and row["category"] == "team"
    assert row["type"] == "cross_account_pattern"
    assert row["fingerprint"] == "team|cross_account_pattern|usage_drop|reports|industry=fintech"
    count = len(row["members"])
    assert row["title"] == f"{count} fintech accounts saw reports drop"
    assert row["summary"].startswith(f"{count} of 40 fintech accounts saw reports drop in the")
    for text in (row["title"], row["summary"], row["so_what"]):
        assert "None" not in text and "{" not in text and "nan" not in text
    evidence = json.loads(row["evidence"])
    members = [e for e in evidence if e["metric"] == "member_arr"]
    assert sorted(e["comparison"].split("(")[1].split(")")[0] for e in members) == row["members"]
    assert set(chosen) <= set(row["members"])
    assert json.loads(row["recommended_action"])["description"].startswith("Review Account")
    # for the lowest manager above all the members' CSMs; the sink's checks pass
    csms = set(frame.filter(pl.col("customer_id").is_in(row["members"]))["csm_user_id"])
    teams = {"M1" if int(c[1:]) < 4 else "M2" for c in csms}
    assert row["user_id"] == (teams.pop() if len(teams) == 1 else "L")
    plan = raised.with_columns(pl.lit("insert").alias("action"))
    assert all(r.passed for r in run_checks(plan, TEAM_TYPES))
    assert not all(r.passed for r in run_checks(plan))  # never in an account plan


def test_a_standing_trait_is_not_news() -> None:
    """Six fintech accounts with reports drops in this window AND the window before: the group
    is like that, nothing rose."""
    frame = accounts(seed=2)
    fintech = frame.filter(pl.col("industry") == "fintech")["customer_id"].to_list()[:6]
    before = [candidate(c, "usage_drop", "reports", D - timedelta(days=20)) for c in fintech]
    now = [candidate(c, "usage_drop", "reports", D - timedelta(days=3)) for c in fintech]
    rising, _ = run(frame_of(background(frame, 2) + now), frame)
    standing, _ = run(frame_of(background(frame, 2) + before + now), frame)
    assert rising.filter(pl.col("group_value") == "fintech").height >= 1
    assert standing.filter(pl.col("group_value") == "fintech").height == 0


def test_overlapping_groups_raise_one_insight() -> None:
    """When the business plan is exactly the fintech industry, the same accounts are one story:
    both groups test significant, one insight is raised."""
    frame = accounts(seed=0).with_columns(
        pl.when(pl.col("industry") == "fintech")
        .then(pl.lit("business"))
        .otherwise(pl.lit("pro"))
        .alias("plan")
    )
    candidates, _ = planted_world(0, planted=True)
    raised, tested = run(candidates, frame)
    same = (pl.col("group_value") == "fintech") | (pl.col("group_value") == "business")
    assert tested.filter(same & pl.col("significant")).height >= 2
    assert raised.filter(same & (pl.col("pattern_subject") == "reports")).height == 1


@pytest.mark.parametrize(
    ("csms", "owner"),
    [(["c0"], "M1"), (["c0", "c3"], "M1"), (["c5", "c7"], "M2"), (["c0", "c5"], "L")],
)
def test_the_owner_is_the_lowest_manager_above_every_csm(csms: list[str], owner: str) -> None:
    assert pattern_owner(csms, USERS) == owner


def test_a_range_equals_day_by_day() -> None:
    frame = accounts(seed=4)
    rng = random.Random(4)
    fintech = frame.filter(pl.col("industry") == "fintech")["customer_id"].to_list()
    rows = background(frame, 4) + [
        candidate(c, "usage_drop", "reports", D - timedelta(days=rng.randrange(6)))
        for c in rng.sample(fintech, 7)
    ]
    candidates = frame_of(rows)
    first = D - timedelta(days=5)
    ranged, _ = run(candidates, frame, first, D)
    daily = pl.concat(
        [
            run(candidates, frame, first + timedelta(days=i), first + timedelta(days=i))[0]
            for i in range(6)
        ],
        how="vertical_relaxed",
    )
    key = ["partition_date", "fingerprint"]
    assert ranged.height > 0
    assert ranged.sort(key).equals(daily.sort(key))


def test_no_candidates_no_patterns() -> None:
    raised, tested = run(frame_of([]), accounts())
    assert raised.height == 0 and tested.height == 0


# ---------------------------------------------------------------------------- rollups

T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)
R_USERS = pl.DataFrame(
    {
        "user_id": ["L", "M", "S", "c1", "c2", "c3"],
        "name": ["Lee", "Mia", "Sub", "One", "Two", "Three"],
        "role": ["leader", "manager", "manager", "csm", "csm", "csm"],
        # M <- S <- c2: M's team is transitive; c3 reports to the leader directly
        "manager_id": [None, "L", "M", "M", "S", "L"],
    }
)
R_ACCOUNTS = pl.DataFrame(
    {
        "customer_id": ["A", "B", "C", "E"],
        "csm_user_id": ["c1", "c2", "c3", "c1"],
        "segment": ["smb", "smb", "enterprise", "enterprise"],
        "arr": [100_000.0, 50_000.0, 200_000.0, 10_000.0],
        "contract_start": [date(2024, 1, 1)] * 4,
        "churned_on": pl.Series([None] * 4, dtype=pl.Date),
    }
)


def insight(
    key: str,
    customer: str,
    owner: str,
    category: str,
    kind: str,
    priority: str,
    score: float,
    raised: date,
    expires: date | None = None,
    actioned_at: datetime | None = None,
) -> dict:
    return {
        "id": key,
        "customer_id": customer,
        "user_id": owner,
        "category": category,
        "type": kind,
        "priority": priority,
        "score": score,
        "partition_date": raised,
        "expires_at": datetime(expires.year, expires.month, expires.day, tzinfo=UTC)
        if expires
        else None,
        "created_at": datetime(raised.year, raised.month, raised.day, 6, tzinfo=UTC),
        "actioned_at": actioned_at,
    }


DAY = date(2026, 6, 10)
INSIGHTS = pl.DataFrame(
    [
        # open risk on A (c1): ARR 100k x 0.8
        insight("i1", "A", "c1", "risk", "champion_left", "high", 0.8, date(2026, 6, 5)),
        # a weaker open risk on A: the account counts once, at its highest score
        insight("i2", "A", "c1", "usage", "usage_drop", "medium", 0.5, date(2026, 6, 8)),
        # dismissed on 6-09: closed on DAY
        insight("i3", "B", "c2", "risk", "health_drop", "high", 0.9, date(2026, 6, 2)),
        # snoozed on 6-04 until 6-20: not open on DAY
        insight("i4", "C", "c3", "risk", "silent_account", "high", 0.7, date(2026, 6, 3)),
        # snoozed on 6-04 until 6-08: open again on DAY; an opportunity of C
        insight("i5", "C", "c3", "opportunity", "entitlement_limit", "low", 0.3, date(2026, 6, 1)),
        # expired at the start of 6-10 (midnight): not open at its end
        insight(
            "i6",
            "E",
            "c1",
            "risk",
            "support_surge",
            "low",
            0.2,
            date(2026, 5, 20),
            expires=date(2026, 6, 10),
        ),
        # actioned on 6-07 after 25 hours
        insight(
            "i7",
            "E",
            "c1",
            "timing",
            "qbr_due",
            "medium",
            0.6,
            date(2026, 6, 6),
            actioned_at=datetime(2026, 6, 7, 7, tzinfo=UTC),
        ),
        # raised after DAY: not counted
        insight("i8", "B", "c2", "risk", "going_dark", "high", 0.9, date(2026, 6, 11)),
        # raised before DAY, dismissed only after DAY: open on DAY
        insight(
            "i9", "B", "c2", "opportunity", "referral_candidate", "medium", 0.5, date(2026, 6, 9)
        ),
    ]
).with_columns(pl.col("expires_at", "actioned_at").cast(pl.Datetime("us", "UTC")))


def event(
    key: str,
    insight_id: str,
    action: str,
    at: datetime,
    feedback: str | None = None,
    until: datetime | None = None,
) -> dict:
    return {
        "id": key,
        "insight_id": insight_id,
        "user_id": "x",
        "action": action,
        "feedback": feedback,
        "snoozed_until": until,
        "insight_type": "t",
        "category": "c",
        "customer_id": None,
        "created_at": at,
    }


EVENTS = pl.DataFrame(
    [
        event("e1", "i3", "dismiss", datetime(2026, 6, 9, 12, tzinfo=UTC), "not_relevant"),
        event(
            "e2",
            "i4",
            "snooze",
            datetime(2026, 6, 4, tzinfo=UTC),
            until=datetime(2026, 6, 20, tzinfo=UTC),
        ),
        event(
            "e3",
            "i5",
            "snooze",
            datetime(2026, 6, 4, tzinfo=UTC),
            until=datetime(2026, 6, 8, tzinfo=UTC),
        ),
        event("e4", "i7", "actioned", datetime(2026, 6, 7, 7, tzinfo=UTC), "took_action"),
        event("e5", "i9", "dismiss", datetime(2026, 6, 12, tzinfo=UTC), "already_knew"),
    ]
).with_columns(pl.col("snoozed_until", "created_at").cast(pl.Datetime("us", "UTC")))


def test_open_as_of_a_day_follows_the_feedback_history() -> None:
    opened = open_at(INSIGHTS, EVENTS, DAY)
    assert sorted(opened["id"]) == ["i1", "i2", "i5", "i9"]
    # on 6-03: i3 not yet dismissed, i6 not yet expired; i4 and i5 were snoozed at midnight,
    # the very instant the day is judged at (an action at the boundary counts for that day)
    assert sorted(open_at(INSIGHTS, EVENTS, date(2026, 6, 3))["id"]) == ["i3", "i6"]


def test_a_range_counts_each_insight_open_until_the_last_day_ending_before_its_expiry() -> None:
    """Day D is judged at midnight after it: open while expires_at is later than that instant,
    to the microsecond, whatever the range (a range expands each insight only to its expiry)."""
    first, last = date(2026, 6, 1), date(2026, 6, 12)
    midnight = datetime(2026, 6, 5, tzinfo=UTC)
    expiries = {
        "at_midnight": midnight,  # 6-05 00:00: open through 6-03
        "just_after_midnight": midnight + timedelta(microseconds=1),  # open through 6-04
        "just_before_midnight": midnight - timedelta(microseconds=1),  # open through 6-03
        "mid_day": midnight + timedelta(hours=13),  # open through 6-04
        "after_the_range": datetime(2026, 7, 1, tzinfo=UTC),  # open through 6-12
        "never": None,  # open through 6-12
        "before_raised": datetime(2026, 6, 2, tzinfo=UTC),  # raised 6-03: never open
    }
    raised = {"before_raised": date(2026, 6, 3)}
    frame = pl.DataFrame(
        [
            insight(
                k, "A", "c1", "risk", "going_dark", "high", 0.9, raised.get(k, date(2026, 5, 20))
            )
            | {"expires_at": at}
            for k, at in expiries.items()
        ]
    ).with_columns(pl.col("expires_at", "actioned_at").cast(pl.Datetime("us", "UTC")))
    opened = open_on_days(frame, EVENTS.clear(), first, last)
    expected = {
        (key, first + timedelta(days=d))
        for key, at in expiries.items()
        for d in range((last - first).days + 1)
        if raised.get(key, date(2026, 5, 20)) <= first + timedelta(days=d)
        and (at is None or at > datetime.combine(first + timedelta(days=d + 1), time(), UTC))
    }
    assert set(opened.select("id", "rollup_date").iter_rows()) == expected
    assert opened.height == len(expected)
    assert max(d for k, d in expected if k == "just_after_midnight") == date(2026, 6, 4)


def rollups(day: date = DAY) -> pl.DataFrame:
    return rollup_frame(INSIGHTS, EVENTS, R_ACCOUNTS, R_USERS, day, day, TEAM)


def row(frame: pl.DataFrame, group_by: str, key: str, scope: str = "*") -> dict:
    found = frame.filter(
        (pl.col("group_by") == group_by)
        & (pl.col("group_key") == key)
        & (pl.col("scope_id") == scope)
    )
    assert found.height == 1, (group_by, key, scope)
    return found.row(0, named=True)


def test_rollup_totals_are_worked_out_by_hand() -> None:
    frame = rollups()
    assert frame.schema == pl.Schema(ROLLUP_COLUMNS)
    total = row(frame, "total", "*")
    assert total["open_insights"] == 4  # i1 i2 i5 i9
    assert (total["open_high"], total["open_medium"], total["open_low"]) == (1, 2, 1)
    assert json.loads(total["open_by_category"]) == {
        "opportunity": {"low": 1, "medium": 1},
        "risk": {"high": 1},
        "usage": {"medium": 1},
    }
    assert total["risk_accounts"] == 1  # A (i1, i2); C's risk is snoozed
    assert total["arr_at_risk"] == pytest.approx(100_000 * 0.8)
    assert total["arr_with_open_risk"] == pytest.approx(100_000)
    assert total["opportunity_accounts"] == 2  # C (i5) and B (i9)
    assert total["expansion_arr"] == pytest.approx(200_000 + 50_000)
    # feedback of the 28 days ending DAY: i3 not relevant, i4 and i5 snoozed, i7 actioned
    assert (total["acted"], total["relevant"], total["actioned"]) == (4, 3, 1)
    assert total["relevance_rate"] == 0.75 and total["action_rate"] == 0.25
    assert total["actions_timed"] == 1 and total["median_hours_to_action"] == 25.0
    assert total["raised_7d"] == 4  # raised 6-04..6-10: i1 i2 i7 i9
    assert total["accounts"] == 4 and total["arr_total"] == 360_000


def test_week_over_week_is_the_same_count_seven_days_earlier() -> None:
    now, before = rollups(), rollups(DAY - timedelta(days=7))
    for group_by, key in (("total", "*"), ("csm", "c1"), ("manager", "M")):
        assert (
            row(now, group_by, key)["open_insights_prev"]
            == row(before, group_by, key)["open_insights"]
        )
        assert (
            row(now, group_by, key)["arr_at_risk_prev"] == row(before, group_by, key)["arr_at_risk"]
        )


def test_teams_are_transitive_and_segments_are_scoped_to_them() -> None:
    frame = rollups()
    assert row(frame, "csm", "c1")["open_insights"] == 2  # i1 i2
    assert row(frame, "csm", "c2")["open_insights"] == 1  # i9
    # M's team: M, S, c1 and (through S) c2 - not c3
    m = row(frame, "manager", "M")
    assert m["open_insights"] == 3 and m["accounts"] == 3  # A, B, E
    assert row(frame, "manager", "S")["open_insights"] == 1
    assert row(frame, "manager", "L")["open_insights"] == 4
    assert "c1" not in frame.filter(pl.col("group_by") == "manager")["group_key"].to_list()
    # segments: over everyone, and within M's team only (C is c3's, outside it)
    assert row(frame, "segment", "enterprise")["open_insights"] == 1  # i5 on C
    assert row(frame, "segment", "enterprise", scope="M")["open_insights"] == 0
    assert row(frame, "segment", "enterprise", scope="M")["accounts"] == 1  # E
    assert row(frame, "segment", "smb", scope="M")["arr_at_risk"] == pytest.approx(80_000)
    assert frame.filter(pl.col("scope_id") == "c1").height == 0  # CSMs have no scope


def test_a_range_in_several_passes_matches_day_by_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long range is rolled up in blocks of days; block edges (and the week-before rows
    they need) change nothing: the range equals the days one by one."""
    monkeypatch.setattr(team_module, "ROLLUP_CELLS_PER_PASS", 3 * R_ACCOUNTS.height)  # 3 days
    first, last = date(2026, 5, 28), date(2026, 6, 14)
    ranged = rollup_frame(INSIGHTS, EVENTS, R_ACCOUNTS, R_USERS, first, last, TEAM)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    one_by_one = pl.concat([rollups(day) for day in days])
    assert ranged.equals(one_by_one)
    assert ranged["rollup_date"].n_unique() == len(days)
    assert ranged["open_insights"].sum() > 0 and ranged["open_insights_prev"].sum() > 0


def test_accounts_that_start_or_churn_within_a_range_count_only_on_their_active_days() -> None:
    """Accounts active throughout a range are summed once, the others day by day: an account
    starting and one churning mid-range count (and carry ARR) only on their active days, and
    the range still equals the days one by one."""
    first, last = date(2026, 6, 1), date(2026, 6, 14)
    accounts = R_ACCOUNTS.with_columns(
        pl.when(pl.col("customer_id") == "B")
        .then(pl.lit(date(2026, 6, 5)))
        .otherwise(pl.col("contract_start"))
        .alias("contract_start"),
        pl.when(pl.col("customer_id") == "E")
        .then(pl.lit(date(2026, 6, 10)))
        .otherwise(pl.col("churned_on"))
        .alias("churned_on"),
    )
    ranged = rollup_frame(INSIGHTS, EVENTS, accounts, R_USERS, first, last, TEAM)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    one_by_one = pl.concat(
        [rollup_frame(INSIGHTS, EVENTS, accounts, R_USERS, d, d, TEAM) for d in days]
    )
    assert ranged.equals(one_by_one)
    total = ranged.filter(pl.col("group_by") == "total").sort("rollup_date")
    expected = [  # A, C always; B from June 5; E until June 9
        (
            "A",
            "C",
            *(["B"] if d >= date(2026, 6, 5) else []),
            *(["E"] if d < date(2026, 6, 10) else []),
        )
        for d in days
    ]
    assert total["accounts"].to_list() == [len(e) for e in expected]
    arr = dict(zip(accounts["customer_id"], accounts["arr"], strict=True))
    assert total["arr_total"].to_list() == [sum(arr[c] for c in e) for e in expected]
    assert row(ranged.filter(pl.col("rollup_date") == last), "csm", "c1")["accounts"] == 1


def test_a_quiet_csm_still_has_a_row() -> None:
    quiet = rollup_frame(INSIGHTS.clear(), EVENTS.clear(), R_ACCOUNTS, R_USERS, DAY, DAY, TEAM)
    assert row(quiet, "csm", "c3")["open_insights"] == 0
    assert row(quiet, "csm", "c3")["accounts"] == 1
    assert row(quiet, "total", "*")["relevance_rate"] is None


# ---------------------------------------------------------------------------- digest


def test_digests_of_managers_and_leaders_carry_the_patterns_of_their_teams() -> None:
    """A cross-account pattern for M1 goes to the team section of M1's digest and of the
    leader's above, never to a CSM, never as a line of anyone's own groups."""
    users = USERS.with_columns((pl.col("user_id") + "@example.com").alias("email"))
    base = {
        "last_seen_date": D,
        "partition_date": D,
        "summary": "s",
        "status": "new",
        "recommended_action": json.dumps({"description": "Review them together"}),
    }
    rows = [
        {
            **base,
            "id": "p1",
            "customer_id": None,
            "customer_name": "Fintech accounts",
            "user_id": "M1",
            "category": "team",
            "type": "cross_account_pattern",
            "priority": "high",
            "score": 0.8,
            "title": "6 fintech accounts saw reports drop",
        },
        {
            **base,
            "id": "a1",
            "customer_id": "A001",
            "customer_name": "Account 1",
            "user_id": "c0",
            "category": "usage",
            "type": "usage_drop",
            "priority": "medium",
            "score": 0.5,
            "title": "Usage down",
        },
    ]
    schema = {
        "id": pl.String, "customer_id": pl.String, "customer_name": pl.String,
        "user_id": pl.String, "partition_date": pl.Date, "last_seen_date": pl.Date,
        "category": pl.String, "type": pl.String, "priority": pl.String, "score": pl.Float64,
        "title": pl.String, "summary": pl.String, "recommended_action": pl.String,
        "status": pl.String,
    }  # fmt: skip
    digests = build_digests(
        digest_window("daily", D), users, pl.DataFrame(rows, schema=schema),
        ["L", "M1", "M2", "c0"], cap=10,
    )  # fmt: skip
    by_user = {d.user_id: d for d in digests}
    assert set(by_user) == {"L", "M1", "c0"}  # M2's team is quiet
    for manager in ("L", "M1"):
        team = by_user[manager].team
        assert team is not None and [i.id for i in team.patterns] == ["p1"]
        assert "p1" not in [i.id for g in by_user[manager].groups for i in g.items]
        assert team.totals["total"] == 1  # c0's usage drop; the pattern is not a CSM's line
        text, html = render_parts(by_user[manager], feed_url="http://feed.test/feed")
        assert "Across accounts" in text and "6 fintech accounts saw reports drop" in text
        assert "6 fintech accounts saw reports drop" in html
    assert by_user["c0"].team is None
    # a manager whose only news is a pattern still gets a digest that says so
    (alone,) = build_digests(
        digest_window("daily", D), users, pl.DataFrame(rows[:1], schema=schema), ["M1"], cap=10
    )
    assert alone.team is not None and not alone.team.members and alone.item_count == 1
    assert "1 cross-account pattern" in subject_for(alone)


def test_the_window_before_a_day_is_the_window_of_the_day_one_window_earlier() -> None:
    """cross_account_patterns computes the hits once and shifts them for the window before."""
    rng = np.random.default_rng(3)
    n = 600
    candidates = pl.DataFrame(
        {
            "customer_id": [f"c{i}" for i in rng.integers(0, 40, n)],
            "type": rng.choice(["usage_drop", "going_dark", "feature_discovery"], n).tolist(),
            "subject": rng.choice(["", "dau", "reports"], n).tolist(),
            "partition_date": [D - timedelta(days=int(d)) for d in rng.integers(0, 90, n)],
        }
    )
    first, last = D - timedelta(days=20), D
    lag = timedelta(days=TEAM.window_days)
    direct = pattern_hits(candidates, first, last, TEAM, windows_back=1)
    once = pattern_hits(candidates, first - lag, last, TEAM)
    shifted = once.filter(pl.col("partition_date") <= last - lag).with_columns(
        pl.col("partition_date") + lag
    )
    assert direct.height > 100
    assert shifted.equals(direct)
    # one row per (day, account, pattern): tested_patterns counts rows, without deduplicating
    keys = ["partition_date", "customer_id", "pattern_type", "pattern_subject"]
    for hits in (direct, once):
        assert not hits.select(keys).is_duplicated().any()


def test_a_type_and_its_subjects_are_patterns_of_their_own_when_every_candidate_has_one() -> None:
    """The sightings are keyed by integer codes of their texts, the type on any subject ("")
    before each subject: with no candidate without a subject, the first subject must not take
    the code of "" (its sightings would merge with the type's)."""
    candidates = pl.DataFrame(
        {
            "customer_id": ["c1", "c1", "c2"],
            "type": ["usage_drop", "usage_drop", "going_dark"],
            "subject": ["dau", "reports", "theirs"],
            "partition_date": [D, D - timedelta(days=1), D],
        }
    )
    hits = pattern_hits(candidates, D, D, TEAM)
    assert hits.select("customer_id", "pattern_type", "pattern_subject").rows() == [
        ("c2", "going_dark", ""),
        ("c1", "usage_drop", ""),
        ("c1", "usage_drop", "dau"),
        ("c1", "usage_drop", "reports"),
    ]
    assert hits["first_seen"].to_list() == [D, D - timedelta(days=1), D, D - timedelta(days=1)]


def test_an_account_listed_twice_is_counted_once_among_a_patterns_accounts() -> None:
    """The tests count rows per (day, pattern, group); an accounts frame that repeats an id
    (each of its rows joins every hit of the account) must not count that account twice."""
    candidates, chosen = planted_world(0, planted=True)
    frame = accounts(seed=0)
    nameless = frame.head(1).with_columns(pl.lit(None, pl.String).alias("customer_id"))
    # every planted account twice; or one of them twice and a row without an id (as many rows
    # as distinct ids, null included: it must not hide the repeat)
    for extra in (
        [frame.filter(pl.col("customer_id").is_in(chosen))],
        [frame.filter(pl.col("customer_id") == chosen[0]), nameless],
    ):
        repeated = pl.concat([frame, *extra])
        _raised, tested = run(candidates, repeated)
        listed = tested.filter(pl.col("members").is_not_null())
        assert listed.height > 0 and set(chosen) <= set(listed["members"].explode().to_list())
        assert listed["accounts"].to_list() == listed["members"].list.len().to_list()


def test_money_in_rollups_does_not_depend_on_the_order_of_the_accounts() -> None:
    """A float sum depends on the order of its terms (0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1), and a
    parallel group-by adds in varying order: ARR at risk once rounded to .29 on one run and .30
    on the next. Summed in whole cents it is the same in every order."""
    orders = list(itertools.permutations([0.1, 0.2, 0.3, 0.7, 1234.565]))
    assert len({sum(o) for o in orders}) > 1  # the hazard is real for these terms
    in_cents = {
        pl.DataFrame({"x": o}).select(team_module._sum_in_cents(pl.col("x"))).item() for o in orders
    }
    assert in_cents == {1235.86}  # 1234.565 is 1234.56499... as a float


@given(
    st.dictionaries(
        st.tuples(
            st.integers(0, 3),  # day
            st.integers(0, 3),  # rollup cell
            st.sampled_from(["risk", "usage", "opportunity", 'we"ird\\name']),
            st.sampled_from(["high", "low", "medium"]),
        ),
        st.integers(1, 500),
        max_size=40,
    )
)
@settings(max_examples=60, deadline=None)
def test_open_by_category_text_is_the_sorted_json_of_each_days_counts(
    counts: dict[tuple[int, int, str, str], int],
) -> None:
    """The per-row JSON text is built from columns, not per row in Python; it must read back
    as exactly the nested counts of its day and cell, keys sorted as json.dumps writes them."""
    day0 = date(2026, 1, 1)
    pairs = sorted({(cat, pri) for (_d, _c, cat, pri) in counts})
    cells = sorted({(d, c) for (d, c, _cat, _pri) in counts})
    sums = pl.DataFrame(  # one column per (category, priority) pair, 0 where none
        [
            {
                "rollup_date": day0 + timedelta(days=d),
                "_cell": c,
                **{f"_n{i}": counts.get((d, c, *pair), 0) for i, pair in enumerate(pairs)},
            }
            for d, c in cells
        ],
        schema={
            "rollup_date": pl.Date,
            "_cell": pl.Int64,
            **{f"_n{i}": pl.UInt32 for i in range(len(pairs))},
        },
    )
    expected: dict[tuple[date, int], dict[str, dict[str, int]]] = {}
    for (d, c, cat, pri), n in counts.items():
        expected.setdefault((day0 + timedelta(days=d), c), {}).setdefault(cat, {})[pri] = n
    got = team_module._open_by_category(sums, pairs)
    assert got.height == len(expected)
    for day, cell, text in got.iter_rows():
        assert text == json.dumps(expected[(day, cell)], sort_keys=True)


def test_an_account_with_insights_of_two_owners_counts_once_per_rollup_row() -> None:
    """A (c1's account) also has an open risk raised under c2 (its CSM changed): each CSM's row
    counts A at their own highest score, every row above both counts A once, at its highest."""
    frame = rollup_frame(
        pl.concat(
            [
                INSIGHTS,
                pl.DataFrame(
                    [
                        insight(
                            "i10", "A", "c2", "risk", "health_drop", "high", 0.9, date(2026, 6, 9)
                        )
                    ]
                ).with_columns(pl.col("expires_at", "actioned_at").cast(pl.Datetime("us", "UTC"))),
            ]
        ),
        EVENTS,
        R_ACCOUNTS,
        R_USERS,
        DAY,
        DAY,
        TEAM,
    )
    expected = {  # (group_by, key): (risk_accounts, arr_at_risk)
        ("total", "*"): (1, 90_000.0),
        ("manager", "M"): (1, 90_000.0),  # c1 and (through S) c2
        ("manager", "S"): (1, 90_000.0),  # c2 only
        ("csm", "c1"): (1, 80_000.0),
        ("csm", "c2"): (1, 90_000.0),
    }
    for (group_by, key), (accounts_at_risk, arr) in expected.items():
        found = row(frame, group_by, key)
        assert (found["risk_accounts"], found["arr_at_risk"]) == (accounts_at_risk, arr), key
        assert found["arr_with_open_risk"] == 100_000.0
    assert row(frame, "segment", "smb")["risk_accounts"] == 1

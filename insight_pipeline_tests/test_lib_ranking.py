"""Ranking, pure functions: the scoring model (monotonic in severity, ARR, renewal proximity and
preference; critical risks floored), learned preferences (cold start = team prior, the right
direction after feedback, already_knew counting half, the category fallback, no look-ahead, a
range equal to its days), novelty of a pattern back soon, the per-CSM daily cap, the quality
metrics, the simulation's critical recall, and the feedback loop's trend on a small in-memory
team (relevance rises; critical risks survive a CSM's dismissals)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from insight_pipeline.lib.ranking.episodes import plan_episodes, rank_for_push
from insight_pipeline.lib.ranking.preferences import attach_preferences, learn_preferences
from insight_pipeline.lib.ranking.quality import quality_metrics
from insight_pipeline.lib.ranking.scoring import score_insights
from insight_pipeline.lib.settings import RankingSettings
from insight_pipeline.lib.signals import CATEGORY_OF_TYPE
from insight_pipeline.lib.simulation import critical_recall, make_team, react, weekly_quality
from insight_pipeline.lib.store import FEEDBACK_SCHEMA

S = RankingSettings()
D0 = date(2026, 3, 2)


def candidate(**values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "customer_id": "C1",
        "user_id": "u1",
        "type": "usage_drop",
        "category": "usage",
        "partition_date": D0,
        "severity": 0.5,
        "confidence": 0.6,
        "arr_percentile": 0.5,
        "days_to_renewal": 200,
    }
    row.update(values)
    return row


def scored(rows: list[dict[str, object]], settings: RankingSettings = S) -> pl.DataFrame:
    return score_insights(pl.DataFrame(rows), settings)


def event(
    user: str,
    insight_type: str,
    action: str,
    feedback: str | None,
    day: date,
    *,
    insight: str | None = None,
) -> dict[str, object]:
    return {
        "id": str(uuid.uuid4()),
        "insight_id": insight or str(uuid.uuid4()),
        "user_id": user,
        "action": action,
        "feedback": feedback,
        "snoozed_until": None,
        "insight_type": insight_type,
        "category": CATEGORY_OF_TYPE[insight_type],
        "customer_id": "C1",
        "created_at": datetime(day.year, day.month, day.day, 15, tzinfo=UTC),
    }


def events(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=FEEDBACK_SCHEMA)


def preference(prefs: pl.DataFrame, day: date, user: str | None, insight_type: str) -> float:
    user_match = pl.col("user_id").is_null() if user is None else pl.col("user_id") == user
    row = prefs.filter(
        (pl.col("partition_date") == day) & user_match & (pl.col("type") == insight_type)
    )
    assert row.height == 1, (day, user, insight_type)
    return float(row["preference"][0])


# ------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("preference", [0.1, 0.5, 0.9])
@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("severity", [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]),  # a bigger drop
        ("arr_percentile", [0.0, 0.2, 0.5, 0.8, 1.0]),  # a bigger account
        ("confidence", [0.2, 0.5, 0.9]),
        ("days_to_renewal", [400, 300, 200, 90, 30, 5, 0]),  # renewal closer
    ],
)
def test_score_never_falls_when_the_evidence_grows(
    column: str, values: list[float], preference: float
) -> None:
    frame = scored([candidate(**{column: v, "preference": preference}) for v in values])
    scores = frame["score"].to_list()
    assert scores == sorted(scores), (column, scores)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_score_rises_with_preference_and_is_the_base_when_neutral() -> None:
    prefs = [0.05, 0.2, 0.5, 0.8, 0.95]
    frame = scored([candidate(preference=p) for p in prefs])
    assert frame["score"].to_list() == sorted(frame["score"].to_list())
    neutral = scored([candidate()])  # no preference column: neutral
    assert neutral["score"][0] == pytest.approx(frame["score"][2])
    parts = json.loads(frame["score_parts"][0])
    assert {"severity", "impact", "confidence", "novelty", "preference", "critical"} <= set(parts)


@pytest.mark.parametrize(
    ("values", "critical"),
    [
        ({"type": "champion_left", "category": "risk", "severity": 0.8}, True),
        ({"type": "silent_account", "category": "risk", "severity": 0.6}, True),
        ({"type": "health_drop", "category": "risk", "severity": 0.75}, True),
        ({"type": "health_drop", "category": "risk", "severity": 0.5}, False),
        ({"type": "usage_drop", "category": "usage", "severity": 0.66}, True),  # to 40%
        ({"type": "usage_drop", "category": "usage", "severity": 0.4}, False),
        ({"type": "underperforming", "category": "benchmark", "severity": 0.9}, False),
    ],
)
def test_critical_risks_keep_at_least_their_neutral_score(
    values: dict[str, object], critical: bool
) -> None:
    disliked = scored([candidate(**values, preference=0.05)])
    neutral = scored([candidate(**values, preference=0.5)])
    assert disliked["critical"][0] is critical
    if critical:
        assert disliked["preference"][0] == S.critical_preference_floor
        assert disliked["score"][0] == pytest.approx(neutral["score"][0])
    else:
        assert disliked["score"][0] < neutral["score"][0]


# -------------------------------------------------------------------------------- preferences


def test_no_feedback_means_neutral_everywhere() -> None:
    prefs = learn_preferences(events([]), D0, D0 + timedelta(days=2), S)
    assert prefs["preference"].unique().to_list() == [0.5]
    assert prefs["user_id"].is_null().all()  # team rows only
    cands = attach_preferences(pl.DataFrame([candidate()]), prefs)
    assert cands["preference"][0] == 0.5


def test_feedback_moves_preferences_the_right_way_from_the_next_day() -> None:
    fb = events(
        [event("u1", "underperforming", "dismiss", "not_relevant", D0) for _ in range(4)]
        + [event("u1", "qbr_due", "actioned", "took_action", D0) for _ in range(4)]
    )
    prefs = learn_preferences(fb, D0, D0 + timedelta(days=1), S)
    # no look-ahead: feedback of D0 is not used on D0 ...
    assert prefs.filter(pl.col("partition_date") == D0)["preference"].unique().to_list() == [0.5]
    # ... and is the next day
    day = D0 + timedelta(days=1)
    assert (
        preference(prefs, day, "u1", "underperforming")
        < preference(prefs, day, None, "underperforming")
        < 0.5
    )
    assert preference(prefs, day, "u1", "qbr_due") > preference(prefs, day, None, "qbr_due") > 0.5
    # the category fallback: a benchmark type u1 never judged is already down for u1
    assert preference(prefs, day, "u1", "outperforming") < preference(
        prefs, day, None, "outperforming"
    )
    # a type nobody judged stays neutral
    assert preference(prefs, day, "u1", "champion_left") == pytest.approx(0.5)


def test_cold_start_is_the_team_prior() -> None:
    fb = events(
        [event(u, "outreach_window", "dismiss", "not_relevant", D0) for u in ("u1", "u2", "u3")]
    )
    day = D0 + timedelta(days=1)
    prefs = learn_preferences(fb, day, day, S)
    team = preference(prefs, day, None, "outreach_window")
    assert team < 0.5
    newcomer = attach_preferences(
        pl.DataFrame([candidate(user_id="u9", type="outreach_window", partition_date=day)]), prefs
    )
    assert newcomer["preference"][0] == pytest.approx(team)


def test_already_knew_counts_half_and_snoozes_count_nothing() -> None:
    day = D0 + timedelta(days=1)

    def after(action: str, feedback: str | None) -> float:
        fb = events([event("u1", "going_dark", action, feedback, D0) for _ in range(3)])
        return preference(learn_preferences(fb, day, day, S), day, "u1", "going_dark")

    not_relevant = after("dismiss", "not_relevant")
    already_knew = after("dismiss", "already_knew")
    assert not_relevant < already_knew < 0.5
    fb = events([event("u1", "going_dark", "snooze", None, D0)])
    prefs = learn_preferences(fb, day, day, S)
    assert prefs.filter(pl.col("user_id").is_not_null()).height == 0  # nothing learned


def test_the_same_judgement_repeated_on_one_insight_counts_once() -> None:
    day = D0 + timedelta(days=1)
    once = events([event("u1", "going_dark", "dismiss", "not_relevant", D0, insight="i1")])
    twice = events(
        [event("u1", "going_dark", "dismiss", "not_relevant", D0, insight="i1") for _ in range(2)]
    )
    assert preference(learn_preferences(once, day, day, S), day, "u1", "going_dark") == (
        preference(learn_preferences(twice, day, day, S), day, "u1", "going_dark")
    )


def test_a_range_learns_exactly_what_its_days_learn() -> None:
    rng = np.random.default_rng(3)
    types = list(CATEGORY_OF_TYPE)
    choices = [("dismiss", "not_relevant"), ("actioned", "took_action"), ("dismiss", None)]
    rows = []
    for _ in range(200):
        action, feedback = choices[int(rng.integers(3))]
        day = D0 + timedelta(days=int(rng.integers(0, 20)))
        rows.append(
            event(
                f"u{rng.integers(4)}", types[int(rng.integers(len(types)))], action, feedback, day
            )
        )
    fb = events(rows)
    first, last = D0 + timedelta(days=5), D0 + timedelta(days=15)
    ranged = learn_preferences(fb, first, last, S)
    for offset in range(11):
        day = first + timedelta(days=offset)
        single = learn_preferences(fb, day, day, S)
        assert ranged.filter(pl.col("partition_date") == day).equals(single)


# --------------------------------------------------------------------------------- daily cap


def test_daily_cap_pushes_the_best_and_critical_first() -> None:
    rows = [
        candidate(
            customer_id=f"C{i}",
            type="usage_spike",
            severity=0.3 + 0.04 * i,
            preference=0.5,
            id=f"id{i:02d}",
        )
        for i in range(15)
    ]
    rows.append(
        candidate(
            customer_id="CX",
            type="champion_left",
            category="risk",
            severity=0.8,
            arr_percentile=0.0,
            preference=0.05,
            id="critical",
        )
    )
    rows += [
        candidate(
            user_id="u2",
            customer_id="D1",
            severity=0.1,
            confidence=0.2,
            arr_percentile=0.0,
            days_to_renewal=None,
            preference=0.5,
            id="weak",
        )
    ]
    ranked = rank_for_push(score_insights(pl.DataFrame(rows), S), S)
    u1 = ranked.filter(pl.col("user_id") == "u1").sort("rank_in_day")
    assert u1["id"][0] == "critical"
    assert u1["pushed"].sum() == S.daily_cap
    ordinary = u1.filter(~pl.col("critical"))
    assert (
        ordinary.filter("pushed")["score"].min()
        >= ordinary.filter(~pl.col("pushed"))["score"].max()
    )
    assert u1["rank_in_day"].to_list() == list(range(1, 17))
    weak = ranked.filter(pl.col("id") == "weak")
    assert weak["score"][0] < S.push_min_score and not weak["pushed"][0]  # kept, not pushed


def test_cap_is_per_csm_and_day() -> None:
    rows = [
        candidate(
            user_id=u, partition_date=D0 + timedelta(days=d), customer_id=f"C{i}", id=f"{u}{d}{i}"
        )
        for u in ("u1", "u2")
        for d in range(2)
        for i in range(12)
    ]
    ranked = rank_for_push(score_insights(pl.DataFrame(rows), S), S)
    per = ranked.group_by("user_id", "partition_date").agg(pl.col("pushed").sum())
    assert per["pushed"].to_list() == [S.daily_cap] * 4


def test_a_pattern_back_soon_is_less_new_in_a_range_as_day_by_day() -> None:
    def day_frame(offsets: list[int]) -> pl.DataFrame:
        rows = [
            candidate(partition_date=D0 + timedelta(days=o), preference=0.5, subject="dau")
            for o in offsets
        ]
        return score_insights(
            pl.DataFrame(rows).with_columns(pl.lit("C1|usage_drop|dau").alias("fingerprint")), S
        )

    empty = pl.DataFrame(
        schema={
            "id": pl.String,
            "fingerprint": pl.String,
            "partition_date": pl.Date,
            "last_seen_date": pl.Date,
            "status": pl.String,
        }
    )
    # seen on day 0, silent past the usage TTL (14 days), back on day 20, then on day 70
    ranged, _ = plan_episodes(day_frame([0, 20, 70]), empty, S)
    assert ranged.sort("partition_date")["novelty"].to_list() == pytest.approx(
        [1.0, 0.5 * (1 + 20 / 30), 1.0]
    )
    first = ranged.sort("partition_date")
    assert first["score"][1] < first["score"][0]
    # day by day: the store holds the earlier episodes
    existing = empty
    daily = []
    for offset in (0, 20, 70):
        new, _ = plan_episodes(day_frame([offset]), existing, S)
        daily.append(new)
        existing = pl.concat(
            [
                existing,
                new.select(list(existing.columns[:-1])).with_columns(pl.lit("new").alias("status")),
            ]
        )
    assert (
        pl.concat(daily)
        .sort("id")
        .select("id", "novelty", "score")
        .equals(ranged.sort("id").select("id", "novelty", "score"))
    )


# ------------------------------------------------------------------------------------ quality


def test_quality_rates_per_day_and_rolling_window() -> None:
    fb = events(
        [
            event("u1", "qbr_due", "actioned", "took_action", D0, insight="a"),
            event("u1", "underperforming", "dismiss", "not_relevant", D0, insight="b"),
            event("u2", "qbr_due", "snooze", None, D0, insight="c"),
            event("u2", "qbr_due", "dismiss", "already_knew", D0 + timedelta(days=1), insight="d"),
            # snoozed, then found not relevant: the latest action decides
            event("u2", "going_dark", "snooze", None, D0, insight="e"),
            event(
                "u2", "going_dark", "dismiss", "not_relevant", D0 + timedelta(days=1), insight="e"
            ),
        ]
    )
    q = quality_metrics(fb, D0, D0 + timedelta(days=1), windows=(1, 28))

    def row(day: date, window: int, scope: str, key: str = "") -> dict[str, object]:
        found = q.filter(
            (pl.col("quality_date") == day)
            & (pl.col("window_days") == window)
            & (pl.col("scope") == scope)
            & (pl.col("scope_key") == key)
        )
        assert found.height == 1
        return found.row(0, named=True)

    first_day = row(D0, 1, "overall")
    assert (first_day["acted"], first_day["relevant"], first_day["actioned"]) == (4, 4 - 1, 1)
    rolling = row(D0 + timedelta(days=1), 28, "overall")
    assert rolling["acted"] == 5  # a, b, c, d, e: each insight once
    assert rolling["relevance_rate"] == pytest.approx(3 / 5)  # b and e not relevant
    assert rolling["action_rate"] == pytest.approx(1 / 5)
    assert row(D0 + timedelta(days=1), 28, "user", "u1")["relevance_rate"] == pytest.approx(0.5)
    assert row(D0 + timedelta(days=1), 28, "type", "qbr_due")["relevance_rate"] == 1.0
    empty = quality_metrics(events([]), D0, D0)
    assert empty.filter(pl.col("scope") == "overall")["relevance_rate"].is_null().all()


# --------------------------------------------------------------------- the loop, in memory


def test_feedback_loop_raises_relevance_and_keeps_critical_risks() -> None:
    """Two CSMs with opposite tastes get the same mix every day; they react through the
    simulation's model; the loop runs learn -> attach -> score -> cap as the assets do."""
    team = make_team(["u1", "u2"], seed=1)
    # fix the tastes: u1 dismisses benchmarks and timing, u2 dismisses usage and opportunity
    likes = {"u1": {"risk", "usage", "opportunity"}, "u2": {"risk", "benchmark", "timing"}}
    team = team.with_columns(
        pl.struct("user_id", "type")
        .map_elements(
            lambda r: 0.9 if CATEGORY_OF_TYPE[r["type"]] in likes[r["user_id"]] else 0.1,
            return_dtype=pl.Float64,
        )
        .alias("relevance")
    )
    mix = [
        ("usage_pattern_change", "usage", 0.5),
        ("underperforming", "benchmark", 0.5),
        ("qbr_due", "timing", 0.5),
        ("entitlement_limit", "opportunity", 0.5),
        ("outperforming", "benchmark", 0.5),
        ("outreach_window", "timing", 0.5),
    ]
    rng = np.random.default_rng(5)
    history: list[dict[str, object]] = []
    pushed_critical = []
    first, days = D0, 42
    for offset in range(days):
        day = first + timedelta(days=offset)
        rows = [
            candidate(
                user_id=u,
                customer_id=f"{u}-{t}",
                type=t,
                category=c,
                severity=s,
                partition_date=day,
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{u}{t}{day}")),
            )
            for u in ("u1", "u2")
            for t, c, s in mix
        ]
        if offset % 7 == 3:  # a champion leaves at one of u1's accounts every week
            rows.append(
                candidate(
                    user_id="u1",
                    customer_id="risky",
                    type="champion_left",
                    category="risk",
                    severity=0.8,
                    partition_date=day,
                    id=f"champion-{offset}",
                )
            )
        prefs = learn_preferences(events(history), day, day, S)
        cands = score_insights(attach_preferences(pl.DataFrame(rows), prefs), S)
        plan = rank_for_push(cands, S)
        pushed = plan.filter("pushed").with_columns(
            pl.lit("new").alias("status"), pl.col("score_parts")
        )
        pushed_critical += pushed.filter(pl.col("type") == "champion_left")["id"].to_list()
        for r in react(pushed, team, day, rng):
            row = plan.filter(pl.col("id") == r.insight_id).row(0, named=True)
            history.append(
                {
                    **event(
                        r.user_id, row["type"], r.action, r.feedback, day, insight=r.insight_id
                    ),
                    "created_at": r.at,
                }
            )
    weekly = weekly_quality(events(history), first, first + timedelta(days=days - 1))
    assert weekly["relevance"][-1] > weekly["relevance"][0] + 0.15
    assert weekly["relevance"][-1] > 0.7
    assert len(pushed_critical) == 6  # every weekly champion_left, despite u1's dismissals


def test_critical_risks_survive_a_csm_dismissing_risk_and_benchmark_noise() -> None:
    dismissed = ["detractor_nps", "support_surge", "health_drop", "underperforming"]
    history = events(
        [event("u1", t, "dismiss", "not_relevant", D0) for t in dismissed for _ in range(5)]
    )
    day = D0 + timedelta(days=1)
    prefs = learn_preferences(history, day, day, S)
    assert preference(prefs, day, "u1", "champion_left") < 0.3  # the category lean carries over
    rows = [
        candidate(type="champion_left", category="risk", severity=0.8, id="champion"),
        candidate(type="usage_drop", severity=0.7, id="drop"),
        candidate(type="detractor_nps", category="risk", severity=0.5, id="detractor"),
        candidate(type="outperforming", category="benchmark", severity=0.6, id="peers"),
    ]
    plan = rank_for_push(
        score_insights(
            attach_preferences(
                pl.DataFrame(rows).with_columns(pl.lit(day).alias("partition_date")), prefs
            ),
            S,
        ),
        S,
    )
    pushed = set(plan.filter("pushed")["id"])
    assert {"champion", "drop"} <= pushed
    assert not {"detractor", "peers"} & pushed  # the noise this CSM dismisses is not pushed
    critical = plan.filter(pl.col("critical"))
    assert critical["preference"].to_list() == [0.5, 0.5]


def test_critical_recall_matches_planted_risks_to_pushes() -> None:
    truth = pl.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3", "C4", "C5"],
            "type": ["champion_left", "usage_drop", "usage_drop", "silent_account", "going_dark"],
            "subject": ["K1", "dau", "logins", None, None],
            "start_date": [D0, D0, D0, D0, D0],
            "magnitude": [1.0, 0.3, 0.7, 30.0, 40.0],
        }
    )
    pushed = pl.DataFrame(
        {
            "customer_id": ["C1", "C2", "C4"],
            "type": ["champion_left", "usage_drop", "silent_account"],
            "subject": ["K1", "events", ""],  # C2 pushed for another metric: not a hit
            "day": [D0 + timedelta(days=1), D0 + timedelta(days=2), D0 + timedelta(days=16)],
        }
    )
    recall, planted, hits = critical_recall(
        truth, pushed, D0 - timedelta(days=10), D0 + timedelta(days=40), silent_days=14
    )
    assert (planted, hits) == (3, 2)  # the 0.7 drop and going_dark are not critical
    assert recall == pytest.approx(2 / 3)


@pytest.mark.parametrize("repeat", [False, True])
def test_formulate_keeps_the_strongest_row_per_fingerprint_and_day(repeat: bool) -> None:
    """One candidate per fingerprint and day, the strongest, in (fingerprint, day) order, with
    each row's own evidence: the same rows whether or not a detector repeated itself (the
    fast path of unique keys, or the sort of every row)."""
    from insight_pipeline.lib.insights.formulate import formulate
    from insight_pipeline.lib.signals import SIGNAL_SCHEMA, conform, evidence_item

    rng = np.random.default_rng(7)
    n = 400
    signals = pl.DataFrame(
        {
            "customer_id": rng.choice(["C1", "C10", "C2", "C3", "Cx"], n).tolist(),
            "type": rng.choice(["usage_drop", "qbr_due", "health_drop"], n).tolist(),
            "subject": rng.choice(["a", "a|b", "", None], n).tolist(),
            "partition_date": [D0 + timedelta(days=int(d)) for d in rng.integers(0, 40, n)],
            "severity": rng.random(n).round(3),
            "confidence": rng.random(n),
        }
    ).with_columns(
        pl.concat_list(
            evidence_item(pl.col("type"), pl.col("severity"), pl.col("customer_id"), "t")
        ).alias("evidence"),
        pl.format("{}", pl.col("severity")).alias("facts"),
    )
    # no subject and an empty one make the same fingerprint
    key = ["customer_id", "type", pl.col("subject").fill_null(""), "partition_date"]
    signals = signals.filter(pl.struct(key).is_first_distinct())
    if repeat:  # a detector repeating itself: a second, weaker row of one key
        weaker = signals.filter(pl.col("customer_id") == "C1").head(1)
        signals = pl.concat([signals, weaker.with_columns(pl.col("severity") - 0.1)])
    # two chunks, as the detectors' concat gives
    signals = pl.concat([conform(signals.head(150)), conform(signals.tail(-150))], rechunk=False)
    accounts = pl.DataFrame(
        {
            "customer_id": ["C1", "C10", "C2", "C3"],
            "name": ["A", "B", "C", "D"],
            "csm_user_id": ["u1", "u2", None, "u1"],
            "arr": [1.0, 2.0, 3.0, 4.0],
            "segment": ["smb"] * 4,
            "industry": ["x"] * 4,
            "renewal_date": [D0 + timedelta(days=90)] * 4,
            "churned_on": [None, D0 + timedelta(days=20), None, None],
        },
        schema_overrides={"churned_on": pl.Date},
    )
    frame = formulate(signals, accounts, S)

    kept = (
        signals.join(accounts.filter(pl.col("csm_user_id").is_not_null()), on="customer_id")
        .filter(pl.col("churned_on").is_null() | (pl.col("churned_on") > pl.col("partition_date")))
        .with_columns(
            pl.concat_str(
                ["customer_id", "type", pl.col("subject").fill_null("")], separator="|"
            ).alias("fingerprint")
        )
        .sort(["fingerprint", "partition_date", "severity"], descending=[False, False, True])
        .unique(["fingerprint", "partition_date"], keep="first", maintain_order=True)
    )
    assert frame.columns[: len(SIGNAL_SCHEMA)] == list(SIGNAL_SCHEMA)
    assert frame.select(*SIGNAL_SCHEMA, "fingerprint").equals(
        kept.select(*SIGNAL_SCHEMA, "fingerprint")
    )

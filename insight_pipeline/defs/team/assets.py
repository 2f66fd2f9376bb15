"""Team assets: cross-account patterns raised as team insights, and daily team rollups.

- `cross_account_patterns`: from the account-level candidates of the last 14 days, the insight
  types (or metric/feature subjects) rising across the accounts of one segment, industry, plan,
  region or CSM book beyond what chance explains (binomial test against the base rate of the
  accounts, Benjamini-Hochberg over every pattern x group tested, at least 3 accounts, a
  1.5x lift, and rising against the 14 days before; lib/team.py). Checked like the insights
  plan, blocking the sink.
- `team_insights_table`: those patterns written to the insights table as team insights
  (customer_id null, category team, for the manager of the accounts' CSMs or the leader),
  through the same episode logic as account insights: a persisting pattern extends its open
  insight, a dismissed one stays folded for the cooldown, re-runs update in place.
- `team_rollups`: per CSM, per manager's team, per segment and overall, as of the end of each
  day: open insights by category and priority, ARR at risk, expansion ARR, relevance and action
  rates, median time to action, week-over-week; written to the store's team_rollups table for
  the API (GET /api/team/rollups) and the leader view.

Look-back: day D's patterns need the candidates of D-27..D (its 14-day window and the one
before, to tell a rise from a standing trait), so `insight_candidates` comes in
through a time-window partition mapping; the IO manager stitches those days from whichever runs
stored them (defs/resources.py), and days never materialised - before the first run - are
simply empty. A range run and day-by-day runs therefore see the same candidates for every day.
"""

from datetime import timedelta

import dagster as dg
import polars as pl

from insight_pipeline.defs.insights.checks import check_specs, run_checks
from insight_pipeline.defs.metadata import counts_by, markdown_preview, partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource, StoreResource
from insight_pipeline.lib.access import directory_from_source
from insight_pipeline.lib.paths import default_source
from insight_pipeline.lib.ranking.episodes import earliest_relevant_day, plan_episodes
from insight_pipeline.lib.settings import TeamSettings
from insight_pipeline.lib.sharding import day_spans
from insight_pipeline.lib.signals import TEAM_TYPES
from insight_pipeline.lib.store import UPSERT_SCHEMA
from insight_pipeline.lib.team import TEAM_INSIGHT_COLUMNS, rollup_frame
from insight_pipeline.lib.team import cross_account_patterns as find_patterns

GROUP = "team"
#: Days before D whose candidates D needs: its window and the window before it, to tell a rise
#: from a standing trait (the mapping is fixed when the definitions load; `window_days` may
#: shorten the window per run, never lengthen it).
LOOKBACK_DAYS = 2 * TeamSettings().window_days - 1
TEAM_FINGERPRINT_PREFIX = "team|"
CANDIDATE_COLUMNS = ["customer_id", "type", "subject", "partition_date"]
PREVIEW = ["partition_date", "priority", "score", "customer_name", "title", "user_id"]
ROLLUP_PREVIEW = [
    "label",
    "accounts",
    "open_insights",
    "open_high",
    "arr_at_risk",
    "expansion_arr",
    "relevance_rate",
    "action_rate",
    "median_hours_to_action",
    "open_insights_prev",
]


def _users(source: SourceResource) -> pl.DataFrame:
    """The directory (user_id, name, role, manager_id) from the source, validated: the same
    reporting lines team_directory syncs into the store, so owners and scopes agree."""
    users, _validation = directory_from_source(source.location or default_source())
    return users


def _candidates(frame: pl.LazyFrame) -> pl.DataFrame:
    """The candidate columns patterns need, read from the stored candidates (a year of 100k
    accounts holds ~18M candidates with their evidence); an empty stitched window may have no
    columns."""
    if not set(CANDIDATE_COLUMNS) <= set(frame.collect_schema().names()):
        return pl.DataFrame(
            schema={
                "customer_id": pl.String,
                "type": pl.String,
                "subject": pl.String,
                "partition_date": pl.Date,
            }
        )
    return frame.select(CANDIDATE_COLUMNS).collect()


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars"},
    ins={
        "insight_candidates": dg.AssetIn(
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-LOOKBACK_DAYS, allow_nonexistent_upstream_partitions=True
            ),
            metadata={"allow_missing_partitions": True},
        )
    },
    check_specs=check_specs("cross_account_patterns"),
)
def cross_account_patterns(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    source: SourceResource,
    insight_candidates: pl.LazyFrame,
    accounts: pl.DataFrame,
):
    """Team insight candidates, one row per pattern and day: an insight type (or the same type
    on one metric or feature) shown by significantly more accounts of a segment, industry, plan,
    region or CSM book in the last 14 days than the base rate across all accounts predicts
    (one-sided binomial, Benjamini-Hochberg over the day's tests, >= 3 accounts, >= 1.5x lift)
    and rising (>= 1.5x the group's count in the 14 days before, plus one), with its member
    accounts as evidence and a narrative. Checked before the sink writes."""
    first, last = partition_days(context)
    all_settings = settings.settings()
    team = all_settings.team
    if 2 * team.window_days - 1 > LOOKBACK_DAYS:
        raise ValueError(
            f"team.window_days={team.window_days} needs {2 * team.window_days - 1} days of "
            f"candidates before each day; the asset maps {LOOKBACK_DAYS} (change LOOKBACK_DAYS)"
        )
    candidates = _candidates(insight_candidates)
    users = _users(source)
    # Each day's patterns depend only on the candidates of its look-back (a range run equals
    # day-by-day runs, tested), so a long run over many accounts goes a span of days at a time:
    # the tests of a year of 100k accounts would not fit in memory at once.
    spans = day_spans(first, last, accounts.height)
    found = [
        find_patterns(
            candidates.filter(
                pl.col("partition_date").is_between(start - timedelta(days=LOOKBACK_DAYS), end)
            )
            if len(spans) > 1
            else candidates,
            accounts,
            users,
            start,
            end,
            team,
            all_settings.ranking,
        )
        for start, end in spans
    ]
    raised = pl.concat([f[0] for f in found]) if len(found) > 1 else found[0][0]
    tested = pl.concat([f[1] for f in found]) if len(found) > 1 else found[0][1]
    plan = raised.with_columns(pl.lit("insert").alias("action"))
    yield dg.Output(
        raised,
        metadata={
            "patterns": raised.height,
            "tests": int(tested.unique("partition_date")["tests"].sum()) if tested.height else 0,
            "significant_before_overlap": int(tested["significant"].sum()) if tested.height else 0,
            "by_pattern_type": counts_by(raised, "pattern_type"),
            "by_dimension": counts_by(raised, "dimension"),
            "by_priority": counts_by(raised, "priority"),
            "candidate_days_read": candidates["partition_date"].n_unique(),
            "day_spans": len(spans),
            "top_patterns": markdown_preview(raised.sort("score", descending=True), PREVIEW),
        },
    )
    yield from run_checks(plan, TEAM_TYPES)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"duckdb", "postgres"},
)
def team_insights_table(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    store: StoreResource,
    cross_account_patterns: pl.DataFrame,
) -> dg.MaterializeResult:
    """Writes the cross-account patterns to the insights table as team insights, in one
    transaction: a pattern seen again while its insight is open extends it (last_seen_date,
    expires_at), a new one is inserted (or updated in place on a re-run, user columns kept)."""
    first, _last = partition_days(context)
    ranking = settings.settings().ranking
    candidates = cross_account_patterns.select(
        [c for c in ("partition_date", *TEAM_INSIGHT_COLUMNS) if c != "id"]
    )
    with store.session() as db:
        existing = db.load_episodes(since=earliest_relevant_day(first, ranking))
    existing = existing.filter(pl.col("fingerprint").str.starts_with(TEAM_FINGERPRINT_PREFIX))
    new, extensions = plan_episodes(candidates, existing, ranking)
    columns = [c for c in (*UPSERT_SCHEMA, "pushed", "rank_in_day") if c in new.columns]
    with store.session() as db:
        written = db.write_insights(new.select(columns), extensions)
    return dg.MaterializeResult(
        metadata={
            **{k: int(v) for k, v in written.items()},
            "new_team_insights": new.height,
            "continued_team_insights": extensions.height,
            "by_priority": counts_by(new, "priority"),
            "top_team_insights": markdown_preview(new.sort("score", descending=True), PREVIEW),
        }
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"polars", "duckdb", "postgres"},
    deps=[dg.AssetDep("insights_table"), dg.AssetDep("team_directory")],
)
def team_rollups(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    source: SourceResource,
    store: StoreResource,
    accounts: pl.DataFrame,
) -> dg.MaterializeResult:
    """Per CSM, per manager's team (transitively), per segment (overall and within each
    manager's team) and overall, as of the end of each day: open insights by category and
    priority, ARR at risk (ARR x the highest open risk score of each account), expansion ARR,
    relevance and action rates over the last 28 days of feedback, median hours to action and
    the same day a week before. The day range's rows are replaced in one transaction."""
    first, last = partition_days(context)
    team = settings.settings().team
    with store.session() as db:
        insights = db.rollup_insights(first, last, lookback_days=7 + team.rollup_window_days)
        # all of it: an old dismissal still decides whether an unexpired insight is open
        events = db.feedback_events()
    frame = rollup_frame(insights, events, accounts, _users(source), first, last, team)
    with store.session() as db:
        written = db.write_team_rollups(frame, first, last)
    latest = frame.filter(pl.col("rollup_date") == last)
    total = latest.filter(pl.col("group_by") == "total")
    return dg.MaterializeResult(
        metadata={
            "rows": written,
            "days": (last - first).days + 1,
            "insights_read": insights.height,
            "feedback_events_read": events.height,
            "open_insights": int(total["open_insights"][0]) if total.height else 0,
            "arr_at_risk": float(total["arr_at_risk"][0]) if total.height else 0.0,
            "expansion_arr": float(total["expansion_arr"][0]) if total.height else 0.0,
            "by_csm": markdown_preview(
                latest.filter(pl.col("group_by") == "csm").sort("arr_at_risk", descending=True),
                ROLLUP_PREVIEW,
                rows=20,
            ),
            "by_segment": markdown_preview(
                latest.filter((pl.col("group_by") == "segment") & (pl.col("scope_id") == "*")),
                ROLLUP_PREVIEW,
            ),
        }
    )

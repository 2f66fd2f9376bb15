"""Detector assets for engagement, risk, opportunity, timing and feature adoption.

Each asset calls pure detectors from `lib/detectors/` and reports which ran and which were skipped
because their optional table is absent (a missing optional table is reported, not an error).

A long run over many accounts (100k accounts over a year hold ~110M feature-usage and ~150M usage
rows) takes its accounts one part at a time (`by_account_parts`): every detector here is per
account, so the parts' signals together are the whole run's. A daily run is one part.
"""

from collections.abc import Callable, Sequence
from datetime import date, timedelta
from functools import partial
from typing import Any

import dagster as dg
import polars as pl

from insight_pipeline.defs.detectors.assets import GROUP
from insight_pipeline.defs.metadata import partition_days, signal_metadata
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource
from insight_pipeline.defs.sharding import run_shard
from insight_pipeline.defs.sources.activity import activity_tables, history_days
from insight_pipeline.defs.sources.assets import sample_from_source, sample_usage
from insight_pipeline.lib.detectors import engagement, opportunity, risk, timing
from insight_pipeline.lib.detectors.features import detect_feature_discovery
from insight_pipeline.lib.detectors.usage import series_starts
from insight_pipeline.lib.settings import RiskSettings, Settings
from insight_pipeline.lib.sharding import account_part_count, in_part, in_sample
from insight_pipeline.lib.signals import conform, empty_signals

Detect = Callable[[pl.DataFrame, dict[str, Any]], tuple[pl.DataFrame, dict]]
"""A family's detectors over (accounts, their tables) -> (signals, metadata of `_run`)."""


def _run(
    detectors: dict[str, tuple[list[pl.DataFrame | int], object]],
) -> tuple[pl.DataFrame, dict]:
    """detector name -> (required frames or row counts, thunk). A detector whose inputs are
    empty is skipped."""
    frames, ran, skipped = [], [], []
    for name, (required, thunk) in detectors.items():
        if any((f if isinstance(f, int) else f.height) == 0 for f in required):
            skipped.append(name)
            continue
        frames.append(conform(thunk()))  # type: ignore[operator]
        ran.append(name)
    signals = pl.concat(frames) if frames else empty_signals()
    return signals, {"detectors_run": ran, "detectors_skipped_missing_data": skipped}


def rows_of(frame: pl.LazyFrame) -> int:
    """Row count of a stored frame (from the Parquet footer: nothing is read)."""
    return int(frame.select(pl.len()).collect().item())


def by_account_parts(
    detect: Detect,
    accounts: pl.DataFrame,
    tables: dict[str, pl.LazyFrame],
    first: date,
    last: date,
    lazy: Sequence[str] = (),
) -> tuple[pl.DataFrame, dict]:
    """`detect` over each part of the accounts (as many as a run over [first, last] takes:
    lib/sharding.py) with its rows of `tables` (scans), the signals concatenated and the
    metadata merged. Tables are collected per part (the `lazy` ones stay
    scans, filtered to the part); a table without customer_id (meeting attendees) is read whole
    once and given to every part, as the detectors join it to their part's meetings or contacts.
    """
    parts = account_part_count(accounts.height, (last - first).days + 1)
    whole = {
        key: scan.collect()
        for key, scan in tables.items()
        if key not in lazy and "customer_id" not in scan.collect_schema().names()
    }
    signals, ran, skipped = [], [], []
    for index in range(parts):
        keep = in_part(index, parts)

        def part(scan: pl.LazyFrame, keep: pl.Expr = keep) -> pl.LazyFrame:
            return scan if parts == 1 else scan.filter(keep)

        frames: dict[str, Any] = {
            key: whole[key] if key in whole else part(scan) if key in lazy else part(scan).collect()
            for key, scan in tables.items()
        }
        part_signals, meta = detect(accounts if parts == 1 else accounts.filter(keep), frames)
        del frames
        signals.append(part_signals)
        ran += meta["detectors_run"]
        skipped += meta["detectors_skipped_missing_data"]
    ran = list(dict.fromkeys(ran))
    return pl.concat(signals) if len(signals) > 1 else signals[0], {
        "detectors_run": ran,
        "detectors_skipped_missing_data": [n for n in dict.fromkeys(skipped) if n not in ran],
        "account_parts": parts,
    }


def _asset(**kwargs):
    return dg.asset(
        group_name=GROUP,
        partitions_def=daily_partitions,
        backfill_policy=backfill_policy,
        kinds={"polars"},
        **kwargs,
    )


ENGAGEMENT_TABLES = ("meetings", "communications", "contacts", "meeting_attendees")


def first_day(tables: dict[str, pl.LazyFrame], columns: dict[str, str]) -> date | None:
    """The first day of any row of these tables (table -> its date or timestamp column), read
    once per run over all accounts: where the source's record of them begins."""
    days = [
        tables[name].select(pl.col(column).min().cast(pl.Date)).collect().item()
        for name, column in columns.items()
    ]
    return min((d for d in days if d is not None), default=None)


def sample_activity(
    context: dg.AssetExecutionContext,
    source: SourceResource,
    activity_window: dict[str, pl.LazyFrame],
    accounts: pl.DataFrame,
    cfg: Settings,
    tables: dict[str, str],
) -> tuple[list[pl.DataFrame], pl.DataFrame, date]:
    """The rows of these activity tables (bundle key -> source table) of the fixed sample of all
    accounts the usage population is measured on, the sampled accounts, and where the tables'
    reading begins: from the run's own window, or in a run of one account shard from the source
    (`sample_from_source`), so that every shard measures on the accounts the unsharded run
    measures on."""
    first, _last = partition_days(context)
    size = cfg.usage.population_sample
    window_start = first - timedelta(days=max(history_days(t, cfg) for t in tables.values()))
    _shard, shards = run_shard(context)
    if shards > 1:
        frames, sampled = sample_from_source(
            context, source, tuple(tables.values()), size, window_start
        )
        return frames, sampled, window_start
    keep = in_sample(accounts.height, size)
    frames = [activity_window[key].filter(keep).collect() for key in tables]
    return frames, accounts.filter(keep), window_start


def contact_population(
    context: dg.AssetExecutionContext,
    source: SourceResource,
    activity_window: dict[str, pl.LazyFrame],
    accounts: pl.DataFrame,
    cfg: Settings,
) -> pl.DataFrame:
    """`engagement.contact_population` of the fixed sample's meetings and communications."""
    tables = {"meetings": "meetings", "communications": "communications"}
    (meetings, communications), sampled, window_start = sample_activity(
        context, source, activity_window, accounts, cfg, tables
    )
    events = engagement.two_way_events(meetings, communications)
    _first, last = partition_days(context)
    return engagement.contact_population(
        events, sampled, window_start, last, cfg.engagement, cfg.usage.population_cohorts
    )


def detect_engagement(
    first: date,
    last: date,
    cfg: Settings,
    since: date | None,
    population: pl.DataFrame,
    accounts: pl.DataFrame,
    act: dict[str, Any],
) -> tuple[pl.DataFrame, dict]:
    """`since`: the first day of the meetings and communications on record (`first_day`);
    `population`: the fixed sample's contact (`contact_population`)."""
    s = cfg.engagement
    events = engagement.two_way_events(act["meetings"], act["communications"])
    return _run(
        {
            "going_dark": (
                [events],
                lambda: engagement.detect_going_dark(events, accounts, first, last, s, population),
            ),
            "increased_activity": (
                [events],
                lambda: engagement.detect_increased_activity(
                    events, accounts, first, last, s, since
                ),
            ),
            "stakeholder_shift": (
                [act["contacts"]],
                lambda: engagement.detect_stakeholder_shift(
                    act["contacts"],
                    act["meeting_attendees"],
                    act["meetings"],
                    accounts,
                    first,
                    last,
                    s,
                ),
            ),
        }
    )


@_asset(ins={"activity_window": activity_tables(*ENGAGEMENT_TABLES, scanned=ENGAGEMENT_TABLES)})
def engagement_signals(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    source: SourceResource,
    accounts: pl.DataFrame,
    activity_window: dict[str, pl.LazyFrame],
) -> pl.DataFrame:
    """going_dark (silence beyond the account's own cadence and everyone's quiet),
    increased_activity (inbound and meetings well above its own rate), stakeholder_shift (a new
    senior contact)."""
    first, last = partition_days(context)
    cfg = settings.settings()
    since = first_day(activity_window, {"meetings": "start_at", "communications": "sent_at"})
    population = contact_population(context, source, activity_window, accounts, cfg)
    signals, meta = by_account_parts(
        partial(detect_engagement, first, last, cfg, since, population),
        accounts,
        activity_window,
        first,
        last,
    )
    context.add_output_metadata(signal_metadata(signals) | meta)
    return signals


RISK_TABLES = (
    "communications",
    "meetings",
    "contacts",
    "meeting_attendees",
    "health",
    "support_tickets",
    "nps",
)


def _silent_accounts(
    first: date, last: date, s: RiskSettings, accounts: pl.DataFrame, act: dict[str, Any]
) -> pl.DataFrame:
    """silent_account over the run's days, each judged without the metrics that are levels on
    that day (the named ones and those `level_days` found): the days are grouped by their set of
    level metrics (one group but where a metric changed its nature), so a range run judges each
    day as a run of that day alone would.

    Each account's last active day before the run and its active days within it: the latest
    used day before (one row per account) and the run's used days (one row per account and
    day, not per metric), aggregated while scanning the (large) usage window instead of holding
    every active day."""
    days = pl.DataFrame({"date": pl.date_range(first, last, eager=True)})
    levels = (
        days.join(act["level_days"], on="date", how="left")
        .group_by("date")
        .agg(pl.col("metric").drop_nulls().unique().sort())
        .with_columns(pl.col("metric").list.concat(pl.lit(list(s.level_metrics))).list.unique())
        .with_columns(pl.col("metric").list.sort())
    )
    found = []
    for (excluded,), group in levels.group_by("metric", maintain_order=True):
        used = act["usage"].filter((pl.col("value") > 0) & ~pl.col("metric").is_in(excluded))
        active_days = pl.concat(
            [
                used.filter(pl.col("date") < first)
                .group_by("customer_id")
                .agg(pl.col("date").max()),
                # each customer's distinct days: a group-by of the ids alone is cheaper than a
                # unique of (id, day) pairs, and the pairs are the same (their order and
                # repeats change nothing to `detect_silent_account`)
                used.filter(pl.col("date") >= first)
                .group_by("customer_id")
                .agg(pl.col("date").unique())
                .explode("date"),
            ]
        ).collect()
        signals = risk.detect_silent_account(
            active_days, act["communications"], act["meetings"], accounts, first, last, s
        )
        found.append(signals.filter(pl.col("partition_date").is_in(group["date"].implode())))
    return pl.concat(found) if len(found) > 1 else found[0]


def detect_risk(
    first: date, last: date, cfg: Settings, accounts: pl.DataFrame, act: dict[str, Any]
) -> tuple[pl.DataFrame, dict]:
    """`act` holds the risk tables, the usage window as a scan ("usage"), and what is measured
    once per run: the level metrics of each run day ("level_days":
    `risk.level_metrics_by_day`), the tickets' first day on record ("tickets_since") and
    everyone's tickets ("ticket_population": `risk.ticket_population`)."""
    s = cfg.risk
    return _run(
        {
            "silent_account": (
                [act["usage_rows"]],
                lambda: _silent_accounts(first, last, s, accounts, act),
            ),
            "champion_left": (
                [act["contacts"]],
                lambda: risk.detect_champion_left(
                    act["contacts"],
                    act["meeting_attendees"],
                    act["meetings"],
                    accounts,
                    first,
                    last,
                    s,
                    cfg.engagement.history_days,
                ),
            ),
            "health_drop": (
                [act["health"]],
                lambda: risk.detect_health_drop(act["health"], accounts, first, last, s),
            ),
            "support_surge": (
                [act["support_tickets"]],
                lambda: risk.detect_support_surge(
                    act["support_tickets"],
                    accounts,
                    first,
                    last,
                    s,
                    act["tickets_since"],
                    act["ticket_population"],
                ),
            ),
            "detractor_nps": (
                [act["nps"]],
                lambda: risk.detect_detractor_nps(
                    act["nps"], act["contacts"], accounts, first, last, s
                ),
            ),
        }
    )


@_asset(ins={"activity_window": activity_tables(*RISK_TABLES, scanned=RISK_TABLES)})
def risk_signals(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    source: SourceResource,
    accounts: pl.DataFrame,
    activity_window: dict[str, pl.LazyFrame],
    usage_window: pl.LazyFrame,
) -> pl.DataFrame:
    """silent_account (no usage but of level metrics, no meeting, no inbound message),
    champion_left, health_drop, support_surge, detractor_nps."""
    first, last = partition_days(context)
    cfg = settings.settings()
    usage_rows = rows_of(usage_window)
    # which metrics are levels (seats, storage) is measured once for the run, on a fixed sample
    # of all accounts (the same in every account shard)
    sample, _sampled = sample_usage(
        context, source, usage_window, accounts, cfg.usage.population_sample, cfg.lookback_days
    )
    level_days = risk.level_metrics_by_day(sample, first, last, cfg.risk)
    # everyone's tickets, on the same sample
    (tickets,), sampled, window_start = sample_activity(
        context, source, activity_window, accounts, cfg, {"support_tickets": "support_tickets"}
    )
    once = {
        "usage_rows": usage_rows,
        "level_days": level_days,
        "tickets_since": first_day(activity_window, {"support_tickets": "opened_at"}),
        "ticket_population": risk.ticket_population(tickets, sampled, window_start, last, cfg.risk),
    }
    signals, meta = by_account_parts(
        lambda accounts, act: detect_risk(first, last, cfg, accounts, act | once),
        accounts,
        activity_window | {"usage": usage_window},
        first,
        last,
        lazy=("usage",),
    )
    levels = sorted(set(level_days["metric"]) | set(cfg.risk.level_metrics))
    context.add_output_metadata(
        signal_metadata(signals) | meta | {"level_metrics_not_usage": levels}
    )
    return signals


OPPORTUNITY_TABLES = ("entitlements", "nps", "health", "meetings", "feature_usage")


def detect_opportunity(
    first: date, last: date, cfg: Settings, accounts: pl.DataFrame, act: dict[str, Any]
) -> tuple[pl.DataFrame, dict]:
    """`act` holds the opportunity tables, feature usage and the usage window ("usage") as
    scans, the row counts of both ("feature_rows", "usage_rows") and where the feature usage on
    record begins ("features_since")."""
    s = cfg.opportunity
    usage = act["usage"]
    # Each detector reads only its rows of the (large) usage window from the scan: the
    # entitled metrics, and the promoters' accounts (a few hundred).
    return _run(
        {
            "entitlement_limit": (
                [act["entitlements"], act["usage_rows"]],
                lambda: opportunity.detect_entitlement_limit(
                    usage, act["entitlements"], accounts, first, last, s, act["usage_starts"]
                ),
            ),
            "case_study_and_referral": (
                [act["nps"]],
                lambda: opportunity.detect_advocacy(
                    act["nps"], usage, act["health"], act["meetings"], accounts, first, last, s
                ),
            ),
            "feature_discovery": (
                [act["feature_rows"]],  # a scan: only its last weeks are read
                lambda: detect_feature_discovery(
                    act["feature_usage"], accounts, first, last, act["features_since"]
                ),
            ),
        }
    )


@_asset(ins={"activity_window": activity_tables(*OPPORTUNITY_TABLES, scanned=OPPORTUNITY_TABLES)})
def opportunity_signals(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    accounts: pl.DataFrame,
    activity_window: dict[str, pl.LazyFrame],
    usage_window: pl.LazyFrame,
) -> pl.DataFrame:
    """entitlement_limit (at 90% or on course to exceed before renewal), case_study_candidate,
    referral_candidate (promoters with healthy, growing usage), feature_discovery."""
    first, last = partition_days(context)
    rows = {
        "usage_rows": rows_of(usage_window),
        "feature_rows": rows_of(activity_window["feature_usage"]),
        # where the feature usage on record begins (of all accounts, once)
        "features_since": first_day(activity_window, {"feature_usage": "date"}),
    }
    # A run of several account parts learns when each entitled metric's series began in one
    # pass, not one per part (see `rows_since`).
    rows["usage_starts"] = None
    if account_part_count(accounts.height, (last - first).days + 1) > 1:
        entitled = activity_window["entitlements"].select("metric").unique().collect()["metric"]
        if entitled.len():
            entitled_usage = usage_window.filter(pl.col("metric").is_in(entitled.implode()))
            rows["usage_starts"] = series_starts(entitled_usage)
    signals, meta = by_account_parts(
        lambda accounts, act: detect_opportunity(
            first, last, settings.settings(), accounts, act | rows
        ),
        accounts,
        activity_window | {"usage": usage_window},
        first,
        last,
        lazy=("usage", "feature_usage"),
    )
    meta["detectors_not_applicable"] = ["power_users (needs per-person usage; not in the contract)"]
    context.add_output_metadata(signal_metadata(signals) | meta)
    return signals


TIMING_TABLES = ("meetings", "nps")


def detect_timing(
    first: date,
    last: date,
    cfg: Settings,
    meetings_since: date | None,
    accounts: pl.DataFrame,
    act: dict[str, Any],
) -> tuple[pl.DataFrame, dict]:
    """`meetings_since`: the first meeting day in the window read (of all accounts)."""
    s = cfg.timing
    return _run(
        {
            "qbr_due": (
                [act["meetings"]],
                lambda: timing.detect_qbr_due(
                    act["meetings"], accounts, first, last, s, meetings_since
                ),
            ),
            "outreach_window": (
                [accounts],
                lambda: timing.detect_outreach_window(act["nps"], accounts, first, last, s),
            ),
        }
    )


@_asset(ins={"activity_window": activity_tables(*TIMING_TABLES, scanned=TIMING_TABLES)})
def timing_signals(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    accounts: pl.DataFrame,
    activity_window: dict[str, pl.LazyFrame],
) -> pl.DataFrame:
    """qbr_due (renewal within 120 days, no QBR in 90) and outreach_window (after a promoter
    response, or just before the renewal window opens)."""
    first, last = partition_days(context)
    # how far back the meetings go (of all accounts, once): a QBR before that is not on record
    since = first_day(activity_window, {"meetings": "start_at"})
    signals, meta = by_account_parts(
        partial(detect_timing, first, last, settings.settings(), since),
        accounts,
        activity_window,
        first,
        last,
    )
    context.add_output_metadata(signal_metadata(signals) | meta)
    return signals

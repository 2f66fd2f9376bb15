"""Detector assets for engagement, risk, opportunity, timing and feature adoption.

Each asset calls pure detectors from `lib/detectors/` and reports which ran and which were skipped
because their optional table is absent (a missing optional table is reported, not an error).
"""

from typing import Any

import dagster as dg
import polars as pl

from insight_pipeline.defs.detectors.assets import GROUP, signal_metadata
from insight_pipeline.defs.metadata import partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource
from insight_pipeline.defs.sources.activity import activity_tables
from insight_pipeline.lib.detectors import engagement, opportunity, risk, timing
from insight_pipeline.lib.detectors.features import detect_feature_discovery
from insight_pipeline.lib.signals import conform, empty_signals


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


def _asset(**kwargs):
    return dg.asset(
        group_name=GROUP,
        partitions_def=daily_partitions,
        backfill_policy=backfill_policy,
        kinds={"polars"},
        **kwargs,
    )


@_asset(
    ins={
        "activity_window": activity_tables(
            "meetings", "communications", "contacts", "meeting_attendees"
        )
    }
)
def engagement_signals(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    accounts: pl.DataFrame,
    activity_window: dict[str, pl.DataFrame],
) -> pl.DataFrame:
    """going_dark (silence beyond the account's own cadence), increased_activity (inbound and
    meetings well above its own rate), stakeholder_shift (a new senior contact)."""
    first, last = partition_days(context)
    act = activity_window
    s = settings.settings().engagement
    events = engagement.two_way_events(act["meetings"], act["communications"])
    signals, meta = _run(
        {
            "going_dark": (
                [events],
                lambda: engagement.detect_going_dark(events, accounts, first, last, s),
            ),
            "increased_activity": (
                [events],
                lambda: engagement.detect_increased_activity(events, accounts, first, last, s),
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
    context.add_output_metadata(signal_metadata(signals) | meta)
    return signals


@_asset(
    ins={
        "activity_window": activity_tables(
            "communications", "contacts", "meeting_attendees", "health", "support_tickets", "nps"
        )
    }
)
def risk_signals(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    accounts: pl.DataFrame,
    activity_window: dict[str, pl.DataFrame],
    usage_window: pl.LazyFrame,
) -> pl.DataFrame:
    """silent_account, champion_left, health_drop, support_surge, detractor_nps."""
    first, last = partition_days(context)
    act = activity_window
    s = settings.settings().risk
    # Silent accounts look at each account's last active day before the run and its active
    # days within it: the latest used day before (one row per account) and the run's used
    # days (one row per account and day, not per metric), aggregated while scanning the (large)
    # usage window instead of holding every active day.
    used = usage_window.filter(pl.col("value") > 0)
    active_days = pl.concat(
        [
            used.filter(pl.col("date") < first).group_by("customer_id").agg(pl.col("date").max()),
            used.filter(pl.col("date") >= first).select("customer_id", "date").unique(),
        ]
    ).collect()
    signals, meta = _run(
        {
            "silent_account": (
                [rows_of(usage_window)],
                lambda: risk.detect_silent_account(
                    active_days, act["communications"], accounts, first, last, s
                ),
            ),
            "champion_left": (
                [act["contacts"]],
                lambda: risk.detect_champion_left(
                    act["contacts"],
                    act["meeting_attendees"],
                    accounts,
                    first,
                    last,
                    s,
                ),
            ),
            "health_drop": (
                [act["health"]],
                lambda: risk.detect_health_drop(act["health"], accounts, first, last, s),
            ),
            "support_surge": (
                [act["support_tickets"]],
                lambda: risk.detect_support_surge(act["support_tickets"], accounts, first, last, s),
            ),
            "detractor_nps": (
                [act["nps"]],
                lambda: risk.detect_detractor_nps(
                    act["nps"], act["contacts"], accounts, first, last, s
                ),
            ),
        }
    )
    context.add_output_metadata(signal_metadata(signals) | meta)
    return signals


@_asset(
    ins={
        "activity_window": activity_tables(
            "entitlements", "nps", "health", "meetings", "feature_usage", scanned=("feature_usage",)
        )
    }
)
def opportunity_signals(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    accounts: pl.DataFrame,
    activity_window: dict[str, Any],  # frames, and feature_usage as a scan (a lazy frame)
    usage_window: pl.LazyFrame,
) -> pl.DataFrame:
    """entitlement_limit (at 90% or on course to exceed before renewal), case_study_candidate,
    referral_candidate (promoters with healthy, growing usage), feature_discovery."""
    first, last = partition_days(context)
    act = activity_window
    cfg = settings.settings()
    s = cfg.opportunity
    # Each detector reads only its rows of the (large) usage window from the scan: the
    # entitled metrics, and the promoters' accounts (a few hundred).
    signals, meta = _run(
        {
            "entitlement_limit": (
                [act["entitlements"], rows_of(usage_window)],
                lambda: opportunity.detect_entitlement_limit(
                    usage_window, act["entitlements"], accounts, first, last, s
                ),
            ),
            "case_study_and_referral": (
                [act["nps"]],
                lambda: opportunity.detect_advocacy(
                    act["nps"],
                    usage_window,
                    act["health"],
                    act["meetings"],
                    accounts,
                    first,
                    last,
                    s,
                ),
            ),
            "feature_discovery": (
                [rows_of(act["feature_usage"])],  # a scan: only its last weeks are read
                lambda: detect_feature_discovery(
                    act["feature_usage"], accounts, first, last, cfg.lookback_days
                ),
            ),
        }
    )
    meta["detectors_not_applicable"] = ["power_users (needs per-person usage; not in the contract)"]
    context.add_output_metadata(signal_metadata(signals) | meta)
    return signals


@_asset(ins={"activity_window": activity_tables("meetings", "nps")})
def timing_signals(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    accounts: pl.DataFrame,
    activity_window: dict[str, pl.DataFrame],
) -> pl.DataFrame:
    """qbr_due (renewal within 120 days, no QBR in 90) and outreach_window (after a promoter
    response, or just before the renewal window opens)."""
    first, last = partition_days(context)
    act = activity_window
    s = settings.settings().timing
    signals, meta = _run(
        {
            "qbr_due": (
                [act["meetings"]],
                lambda: timing.detect_qbr_due(act["meetings"], accounts, first, last, s),
            ),
            "outreach_window": (
                [accounts],
                lambda: timing.detect_outreach_window(act["nps"], accounts, first, last, s),
            ),
        }
    )
    context.add_output_metadata(signal_metadata(signals) | meta)
    return signals

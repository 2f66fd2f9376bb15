"""The daily digest: each user's top insights of a day, emailed once, after the sink has run.

`deliver_days` is the one code path for the asset and for `insight-pipeline digest --date D`;
idempotency lives in the store's digest ledger (see lib/email.py), so materialising a partition
again - by the sensor, a backfill or by hand - never sends a sent digest twice and retries the
failed ones.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl

from insight_pipeline.defs.digest.resources import DigestResource, EmailResource
from insight_pipeline.defs.metadata import partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource, StoreResource
from insight_pipeline.defs.sink import assets as sink
from insight_pipeline.defs.sink import directory
from insight_pipeline.lib.access import directory_from_source
from insight_pipeline.lib.digest import (
    KINDS,
    USER_COLUMNS,
    build_digests,
    digest_window,
    due_users,
    resolve_preferences,
)
from insight_pipeline.lib.email import DeliveryReport, deliver_digests
from insight_pipeline.lib.paths import default_source
from insight_pipeline.lib.store import InsightStore

GROUP = "digest"
DIGESTS_DELIVERED = "digests_delivered"


@dataclass
class DigestRun:
    """What one delivery run did, per day, for metadata and the command line."""

    report: DeliveryReport = field(default_factory=DeliveryReport)
    stale_days: list[date] = field(default_factory=list)
    nothing_to_send: int = 0
    """Users due a digest whose digest would have been empty (or who have no address)."""
    by_day: dict[date, dict[str, int]] = field(default_factory=dict)
    directory: str = ""
    transport: str = ""


def load_directory(db: InsightStore, source: SourceResource) -> tuple[pl.DataFrame, str]:
    """The users to write to: the store's directory (active users), the one the API and
    `team_directory` keep, or - before that asset ever ran, e.g. the command line on a fresh
    store - the source's users table, validated the same way."""
    synced = db.list_users()
    if synced.height:
        active = synced.filter(pl.col("active").fill_null(True))
        return active.select(USER_COLUMNS), "store users table"
    users, _validation = directory_from_source(source.location or default_source())
    return users.select(USER_COLUMNS), "source users table"


def deliver_days(
    first: date,
    last: date,
    *,
    store: StoreResource,
    source: SourceResource,
    settings: SettingsResource,
    email: EmailResource,
    digest: DigestResource,
    max_age_days: int | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    log: Callable[[str], None] = lambda _msg: None,
) -> DigestRun:
    """Build and deliver the digests of every day in [first, last], each day's exactly once.

    Days older than `max_age_days` before today are skipped as stale (None: never stale - a
    person asking for a day by hand means it).
    """
    run = DigestRun()
    cap = settings.settings().ranking.daily_cap
    transport = email.transport()
    run.transport = transport.describe()
    db = store.open()
    try:
        with db.session():  # the two reads on one connection
            users, run.directory = load_directory(db, source)
            preferences = resolve_preferences(users, db.digest_preferences())
        today = clock().astimezone(UTC).date()
        day = first
        while day <= last:
            if max_age_days is not None and (today - day).days > max_age_days:
                run.stale_days.append(day)
                day += timedelta(days=1)
                continue
            counts = {"due": 0, "digests": 0}
            for kind in KINDS:
                recipients = due_users(preferences, kind, day)
                if not recipients:
                    continue
                window = digest_window(kind, day)
                candidates = db.digest_insights(
                    window.day, open_after=window.open_after, as_of=window.as_of
                )
                digests = build_digests(
                    window, users, candidates, recipients, cap=cap, team_top=digest.team_top
                )
                report = deliver_digests(
                    db,
                    transport,
                    digests,
                    sender=email.from_address(),
                    feed_url=digest.feed(),
                    max_attempts=email.max_attempts,
                    backoff_seconds=email.backoff_seconds,
                    clock=clock,
                )
                run.report.extend(report)
                run.nothing_to_send += len(recipients) - len(digests)
                counts["due"] += len(recipients)
                counts["digests"] += len(digests)
                for status, n in report.counts().items():
                    counts[status] = counts.get(status, 0) + n
            run.by_day[day] = counts
            log(f"digests of {day}: {counts}")
            day += timedelta(days=1)
    finally:
        transport.close()
        db.dispose()
    return run


def _metadata(run: DigestRun) -> dict[str, object]:
    counts = run.report.counts()
    rows = ["| day | due | digests | sent | already sent | failed |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {day} | {c['due']} | {c['digests']} | {c.get('sent', 0)} | "
        f"{c.get('already_sent', 0)} | {c.get('failed', 0)} |"
        for day, c in sorted(run.by_day.items())
    ]
    failed = ["| day | kind | user | attempts | error |", "|---|---|---|---|---|"]
    failed += [
        f"| {d.day} | {d.kind} | {d.user_id} | {d.attempts} | "
        f"{(d.error or '').replace('|', '/').replace(chr(10), ' ')[:120]} |"
        for d in run.report.failed
    ]
    return {
        **counts,
        "nothing_to_send": run.nothing_to_send,
        "stale_days_skipped": [str(d) for d in run.stale_days],
        "delivery": run.transport,
        "directory": run.directory,
        "by_day": dg.MetadataValue.md("\n".join(rows)),
        "failures": dg.MetadataValue.md("\n".join(failed) if run.report.failed else "_none_"),
    }


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    # modules, not the assets themselves: load_assets_from_modules would collect them twice
    deps=[sink.insights_table, directory.team_directory],
    kinds={"email"},
    check_specs=[
        dg.AssetCheckSpec(
            DIGESTS_DELIVERED,
            asset="daily_digest",
            description="Every digest this run attempted was sent (failures are retried by the "
            "next run of the partition).",
        )
    ],
)
def daily_digest(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    source: SourceResource,
    settings: SettingsResource,
    email: EmailResource,
    digest: DigestResource,
) -> dg.MaterializeResult:
    """Each user's digest of the day's top insights, emailed once per user, day and kind.

    Daily users get the day's top open insights (priority, then score; capped per CSM), grouped
    as high priority, opportunities and trends; weekly users get the week's on their weekday;
    managers also get a team section. Sent over SMTP or written to the outbox, recorded in the
    digests ledger: a re-run sends nothing twice and retries failures. Failed sends do not fail
    the run: they are counted here and flagged by the `digests_delivered` check.
    """
    first, last = partition_days(context)
    run = deliver_days(
        first,
        last,
        store=store,
        source=source,
        settings=settings,
        email=email,
        digest=digest,
        max_age_days=digest.max_age_days,
        log=context.log.info,
    )
    failed = run.report.failed
    if failed:
        context.log.warning(
            f"{len(failed)} digest(s) failed after retries via {run.transport}; materialise "
            "the partition again (or `insight-pipeline digest --date D`) to retry them"
        )
    return dg.MaterializeResult(
        metadata=_metadata(run),
        check_results=[
            dg.AssetCheckResult(
                check_name=DIGESTS_DELIVERED,
                passed=not failed,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"failed": len(failed), "sent": run.report.counts()["sent"]},
            )
        ],
    )

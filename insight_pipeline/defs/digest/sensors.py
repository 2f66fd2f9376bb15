"""`daily_digest_sensor`: requests day D's digest once D's insights are in the store and it is
past the send hour of the morning after.

Why a plain sensor over a small, state-based cursor rather than `@asset_sensor` or a
multi-asset sensor: each tick asks "which recent days are due, have their `insights_table`
partition materialised, and were not requested yet?". That never skips a partition (an
`@asset_sensor` sees only the latest materialisation since its cursor), holds a day that is
materialised but not yet due without bookkeeping of unconsumed events, and bounds the first tick:
only the last `max_age_days` days are ever considered, so turning the sensor on never requests
the whole history. The cursor lists the days already requested within that window (older ones
fall out, as they can never be due again), and each request also carries a run key, which the
daemon deduplicates as a second guard.
"""

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

import dagster as dg

from insight_pipeline.defs.digest.resources import DigestResource
from insight_pipeline.defs.partitions import daily_partitions

WATCHED = dg.AssetKey("insights_table")
TARGET = dg.AssetKey("daily_digest")


def send_time(day: date, send_hour_utc: int) -> datetime:
    """The earliest moment day D's digest may be requested: the send hour of D + 1 (UTC)."""
    return datetime.combine(day + timedelta(days=1), time(send_hour_utc), tzinfo=UTC)


def due_days(now: datetime, send_hour_utc: int, max_age_days: int) -> list[date]:
    """The days whose digest may be requested at `now`, oldest first: within the last
    `max_age_days` days and past their send time."""
    today = now.astimezone(UTC).date()
    days = [today - timedelta(days=age) for age in range(max_age_days, 0, -1)]
    return [d for d in days if now >= send_time(d, send_hour_utc)]


def _materialized(instance: dg.DagsterInstance, keys: list[str]) -> set[str]:
    """Which of these partition keys of insights_table have a materialisation.

    One indexed lookup per key (a handful: the window is `max_age_days` long), so a partition
    re-materialised many times can never crowd another out of a shared result limit.
    """
    return {
        key
        for key in keys
        if instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=WATCHED, asset_partitions=[key]), limit=1
        ).records
    }


def build_daily_digest_sensor(
    clock: Callable[[], datetime] | None = None, name: str = "daily_digest_sensor"
) -> dg.SensorDefinition:
    """The sensor; `clock` (default: now, UTC) lets tests evaluate it at chosen instants."""

    @dg.sensor(
        name=name,
        asset_selection=dg.AssetSelection.assets(TARGET),
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            "Requests the daily_digest partition of day D once insights_table has materialised "
            "D and it is past the send hour (DigestResource.send_hour_utc, default 06:00 UTC) of "
            "D + 1; each day once, and only days within DigestResource.max_age_days."
        ),
    )
    def daily_digest_sensor(
        context: dg.SensorEvaluationContext, digest: DigestResource
    ) -> dg.SensorResult:
        now = clock() if clock else datetime.now(UTC)
        state = json.loads(context.cursor) if context.cursor else {}
        requested = set(state.get("requested", []))
        first_partition = daily_partitions.start.date()
        days = [
            d
            for d in due_days(now, digest.send_hour_utc, digest.max_age_days)
            if d >= first_partition
        ]
        pending = [d.isoformat() for d in days if d.isoformat() not in requested]
        ready = sorted(_materialized(context.instance, pending))
        requested |= set(ready)
        oldest = (now.astimezone(UTC).date() - timedelta(days=digest.max_age_days)).isoformat()
        cursor = json.dumps({"requested": sorted(k for k in requested if k >= oldest)})
        runs = [dg.RunRequest(run_key=f"daily_digest:{key}", partition_key=key) for key in ready]
        waiting = sorted(set(pending) - set(ready))
        skip = None
        if not runs:
            skip = (
                f"waiting for insights_table of {', '.join(waiting)}"
                if waiting
                else f"nothing due at {now:%Y-%m-%d %H:%M} UTC"
            )
        return dg.SensorResult(run_requests=runs, cursor=cursor, skip_reason=skip)

    return daily_digest_sensor


daily_digest_sensor = build_daily_digest_sensor()

"""Evidence charts for the feed: a usage metric over recent weeks against its baseline band.

Choice: the chart is recomputed from the source when a page is rendered (`lib.contract.Source`
+ `lib.detectors.usage.usage_baselines`, default usage settings) rather than stored with the
insight. The insights table then stays the contract's, the chart always agrees with the
detector's own baseline code, and a chart can show how the metric went on after the insight
was raised. Costs: one windowed read of usage_daily per page that needs charts (all cards
batched), cached per (customer, metric, day) for ten minutes; a missing or broken source only
loses the charts, never the page.

Geometry is computed here as plain numbers; the SVG itself is a Jinja template (autoescaped).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import polars as pl

from insight_pipeline.lib.contract import Source
from insight_pipeline.lib.detectors.usage import usage_baselines
from insight_pipeline.lib.settings import Settings

log = logging.getLogger(__name__)

#: Insight types whose subject is a usage_daily metric.
CHART_TYPES = frozenset(
    {
        "usage_spike",
        "usage_drop",
        "usage_pattern_change",
        "adoption_trend",
        "declining_usage",
        "entitlement_limit",
    }
)
WIDTH, HEIGHT, PAD = 340.0, 88.0, 4.0


@dataclass(frozen=True)
class UsageChart:
    """What the SVG template draws (coordinates in a WIDTH x HEIGHT box)."""

    metric: str
    first_day: date
    last_day: date
    line: str
    """Daily values as polyline points."""
    band: str
    """The expected range (baseline band) as a closed polygon."""
    expected: str
    """The baseline as polyline points."""
    raised_x: float | None
    """Where the insight was first raised, when inside the window."""
    last_value: float
    last_expected: float | None
    y_max: float
    width: float = WIDTH
    height: float = HEIGHT


class ChartSource:
    """Builds `UsageChart`s for feed rows from the source, batched and cached."""

    def __init__(
        self,
        location: str | None,
        *,
        days: int = 56,
        settings: Settings | None = None,
        ttl_seconds: float = 600.0,
    ) -> None:
        self.location = location
        self.days = days
        self.settings = settings or Settings()
        self.ttl = ttl_seconds
        self._cache: dict[tuple[str, str, date], tuple[float, pl.DataFrame | None]] = {}
        self._lock = threading.Lock()

    def charts(self, rows: list[dict[str, Any]]) -> dict[str, UsageChart]:
        """Charts by insight id for the rows that have one (others are simply absent)."""
        wanted = {
            r["id"]: (str(r["customer_id"]), str(r["subject"]), r["last_seen_date"])
            for r in rows
            if r.get("type") in CHART_TYPES and r.get("subject") and r.get("customer_id")
        }
        if not wanted or not self.location:
            return {}
        series = self._series(set(wanted.values()))
        out: dict[str, UsageChart] = {}
        for row in rows:
            key = wanted.get(row["id"])
            frame = series.get(key) if key else None
            if frame is not None and frame.height >= 7:
                out[row["id"]] = _geometry(frame, key[1], row.get("partition_date"))
        return out

    def _series(self, keys: set[tuple[str, str, date]]) -> dict[Any, pl.DataFrame | None]:
        now = time.monotonic()
        with self._lock:
            found = {k: v[1] for k in keys if (v := self._cache.get(k)) and now - v[0] < self.ttl}
        missing = keys - set(found)
        if missing:
            try:
                fresh = self._compute(missing)
            except Exception:
                log.warning("usage charts unavailable (source %s)", self.location, exc_info=True)
                fresh = dict.fromkeys(missing)
            with self._lock:
                for k, v in fresh.items():
                    self._cache[k] = (now, v)
                if len(self._cache) > 5000:
                    self._cache.clear()
            found.update(fresh)
        return found

    def _compute(self, keys: set[tuple[str, str, date]]) -> dict[Any, pl.DataFrame | None]:
        ends = [k[2] for k in keys]
        start = min(ends) - timedelta(days=self.days - 1)
        end = max(ends)
        source = Source(str(self.location))
        try:
            usage = source.read(
                "usage_daily",
                date_from=start - timedelta(days=self.settings.lookback_days),
                date_to=end,
            )
        finally:
            source.dispose()
        pairs = pl.DataFrame(
            {"customer_id": [k[0] for k in keys], "metric": [k[1] for k in keys]},
            schema={"customer_id": pl.String, "metric": pl.String},
        ).unique()
        assert usage is not None  # usage_daily is a required table
        usage = usage.join(pairs, on=["customer_id", "metric"], how="semi")
        if usage.height == 0:
            return dict.fromkeys(keys)
        # each day's band as the pipeline drew it: from that day's own look-back
        baselines = usage_baselines(
            usage, start, end, self.settings.usage, lookback_days=self.settings.lookback_days
        ).select("customer_id", "metric", "partition_date", "value", "expected", "lower", "upper")
        out: dict[Any, pl.DataFrame | None] = {}
        for customer_id, metric, last in keys:
            out[(customer_id, metric, last)] = baselines.filter(
                (pl.col("customer_id") == customer_id)
                & (pl.col("metric") == metric)
                & pl.col("partition_date").is_between(last - timedelta(days=self.days - 1), last)
            ).sort("partition_date")
        return out


def _geometry(frame: pl.DataFrame, metric: str, raised: date | None) -> UsageChart:
    days = frame["partition_date"].to_list()
    values = [float(v) for v in frame["value"].fill_null(0.0)]
    lower = frame["lower"].to_list()
    upper = frame["upper"].to_list()
    expected = frame["expected"].to_list()
    top = max([*values, *(u for u in upper if u is not None), 1.0]) * 1.08
    n = len(days)

    def x(i: int) -> float:
        return round(PAD + (WIDTH - 2 * PAD) * i / max(n - 1, 1), 1)

    def y(v: float) -> float:
        return round(HEIGHT - PAD - (HEIGHT - 2 * PAD) * max(v, 0.0) / top, 1)

    def points(seq: list[tuple[int, float]]) -> str:
        return " ".join(f"{x(i)},{y(v)}" for i, v in seq)

    banded = [(i, lo, up) for i, (lo, up) in enumerate(zip(lower, upper, strict=True))]
    banded = [(i, lo, up) for i, lo, up in banded if lo is not None and up is not None]
    band = ""
    if banded:
        band = (
            points([(i, up) for i, _, up in banded])
            + " "
            + points([(i, lo) for i, lo, _ in reversed(banded)])
        )
    raised_x = x(days.index(raised)) if raised in days else None
    return UsageChart(
        metric=metric,
        first_day=days[0],
        last_day=days[-1],
        line=points(list(enumerate(values))),
        band=band,
        expected=points([(i, e) for i, e in enumerate(expected) if e is not None]),
        raised_x=raised_x,
        last_value=values[-1],
        last_expected=expected[-1],
        y_max=top,
    )

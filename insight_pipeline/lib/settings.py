"""Every threshold of the pipeline in one typed object with its documented default.

Detectors take a `Settings` as an argument; Dagster passes it as run config (see
`defs/resources.py`), so an analyst can backfill with other thresholds without touching code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class UsageSettings:
    """Usage baselines and anomalies (spike/drop) and weekly trends."""

    baseline_weeks: int = 8
    """Same-weekday history used for the expected value (8 weeks = 8 values per weekday)."""
    scale_days: int = 28
    """Days of out-of-sample residuals behind the robust scale (MAD)."""
    z_threshold: float = 2.0
    """Robust standard deviations a day must deviate (the contract's default)."""
    persistence_days: int = 3
    """Consecutive deviating days needed for a drop or a sustained spike (controls false alarms)."""
    single_day_z: float = 5.0
    """A single day this far out is a spike on its own (Bonferroni-like over metrics x days)."""
    min_effect: float = 0.30
    """Minimum relative change from baseline (effect size) for a drop or sustained spike."""
    min_spike_effect: float = 1.0
    """Minimum relative increase for a short spike (1.0 = doubled): one day beyond
    `single_day_z`, or two consecutive days beyond `z_threshold`."""
    min_expected: float = 3.0
    """Minimum expected daily value: below it the metric is too small to judge."""
    min_history_days: int = 42
    """Days of history a customer x metric needs before it is judged at all."""
    trend_weeks: int = 6
    """Weeks in the trend window (week sums ending on the partition day)."""
    trend_consecutive_weeks: int = 3
    """Consecutive week-over-week rises (or falls) needed (the contract's default)."""
    min_trend_change: float = 0.25
    """Minimum total relative change across the consecutive weeks."""
    trend_t: float = 3.0
    """Minimum |t| of the log-linear weekly slope over the trend window."""
    trend_z: float = 3.0
    """Minimum size of the run's total log change in units of the account's own robust
    week-over-week variability (MAD of past weekly log changes): growth a noisy account shows
    every other month is not a trend."""
    min_weekly_volume: float = 20.0
    """Minimum weekly volume for a trend to be judged."""


@dataclass(frozen=True)
class RankingSettings:
    """Scoring, priorities and noise control."""

    high_cutoff: float = 0.65
    medium_cutoff: float = 0.40
    weight_severity: float = 0.45
    weight_impact: float = 0.30
    weight_confidence: float = 0.15
    weight_novelty: float = 0.10
    dismiss_cooldown_days: int = 30
    """After a dismissal, the same pattern stays folded into the dismissed insight this long."""
    ttl_days: dict[str, int] = field(
        default_factory=lambda: {
            "usage": 14,
            "engagement": 21,
            "risk": 30,
            "opportunity": 30,
            "benchmark": 30,
            "timing": 30,
        }
    )
    """Days after its pattern was last seen that an insight expires, per category. While open,
    a re-detection continues the insight (one open insight per fingerprint)."""
    daily_cap: int = 10
    """Insights pushed per CSM per day (the rest are kept, not pushed)."""


@dataclass(frozen=True)
class Settings:
    """All thresholds. `Settings.from_dict` reads the nested dict of Dagster run config."""

    lookback_days: int = 112
    """Source history read before the first partition day: enough for every rolling window
    (8 weeks of same-weekday medians + 28 days of residuals; 6 trend weeks + 8 weeks of weekly
    variability), so a day's result never depends on how long the run's range is."""
    usage: UsageSettings = field(default_factory=UsageSettings)
    ranking: RankingSettings = field(default_factory=RankingSettings)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Settings:
        """Build from nested overrides, failing loudly on unknown keys."""
        raw = dict(raw or {})
        nested = {"usage": UsageSettings, "ranking": RankingSettings}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for key, value in raw.items():
            if key not in known:
                raise ValueError(f"unknown setting {key!r}; known: {sorted(known)}")
            if key in nested:
                sub_known = {f.name for f in fields(nested[key])}
                unknown = set(value) - sub_known
                if unknown:
                    raise ValueError(f"unknown setting(s) {sorted(unknown)} in {key!r}")
                kwargs[key] = replace(nested[key](), **value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

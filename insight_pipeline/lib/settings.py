"""Every threshold of the pipeline in one typed object with its documented default.

Detectors take a `Settings` as an argument; Dagster passes it as run config (see
`defs/resources.py`), so an analyst can backfill with other thresholds without touching code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from insight_pipeline.lib.detectors.common import mann_kendall_threshold

COHORT_COLUMNS = frozenset({"industry", "segment", "region", "plan"})
"""The customers' columns whose values group accounts (`UsageSettings.population_cohorts`)."""


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
    """Days of history a customer x metric needs before its days are judged against their
    baseline (the expected value needs 4 same-weekday weeks, its scale 14 residuals after them).
    A younger series is judged by its weeks instead (`young_drop`)."""
    young_drop: float = 0.5
    """A series younger than `min_history_days` (a new account onboarding, a metric first used,
    a source that began recently) - and `scale_days` more, until its daily scale stands on days
    the daily rule judged - is a usage_drop when its last 7 days fall this far below its best
    week so far (0.5: to half or less) and half as far below its typical (median) earlier week
    (the weeks after a one-week spike are no fall), and the same weekdays' last 3 days as far
    below theirs in the best week: without a baseline, only a fall far larger than a young
    series' week-to-week wander is told apart - its ramp-up only rises. Needs 3 weeks of the
    series, `min_expected` a day in its best week, and `trend_z` of its own weekly noise and
    of counting noise; not read through days its population moved down (a holiday). 0 turns
    it off."""
    min_day_coverage: float = 0.1
    """A run day whose usage rows number less than this share of the same weekday's usual
    count (the median of the 4 weeks before) is taken as not yet delivered, and the run fails
    naming it: a late export would otherwise read as every account going idle. 0 turns the
    check off."""
    population_shift: float = 0.15
    """A day on which a metric's median account moved this far from its own baseline (15% down
    or up, in log terms) is a day of the whole population - a holiday, a partial export, the
    product's outage - and each account is judged on its move beyond it. Half the minimum
    effect: the median of hundreds of accounts' residuals moves a few percent on an ordinary day,
    of a dozen more, hence the sign test (`population_alpha`)."""
    min_population_series: int = 10
    """Accounts of a metric judged on a day needed to measure its population's move (fewer
    cannot pass the sign test below at 0.001 even when every one of them moved)."""
    population_alpha: float = 0.001
    """A population's move must also be shared: the accounts moving its way are more than a
    fair coin would give with this probability (one-sided sign test). In a book of 14 accounts
    13 must have moved; in one of 500 the median's move alone already says as much."""
    population_cohorts: tuple[str, ...] = ("industry", "region")
    """Columns of the customers table whose values are cohorts that can move together as the
    whole population does (`population_shifts`): an industry's season (schools in summer,
    retail in December), a region's holiday. A cohort needs `min_population_series` accounts
    of the sample (`population_sample`) to be measured. Empty: the whole book only."""
    population_sample: int = 500
    """Accounts (a fixed hash sample) the population's move, and which metrics are levels
    (`RiskSettings.level_change`), are measured on: the median of 500 accounts' residuals moves
    ~2% by chance, far below `population_shift`; ~0.1 s of a run (10k accounts: 5% of them)."""
    trend_weeks: int = 6
    """Weeks in the adoption trend's window (week sums ending on the partition day)."""
    trend_consecutive_weeks: int = 3
    """Consecutive week-over-week rises needed for adoption_trend (the contract's default)."""
    min_trend_change: float = 0.25
    """Minimum total relative change of a trend (across the consecutive rises of an adoption
    trend; from the first two to the last two weeks of a declining_usage's window)."""
    trend_t: float = 3.0
    """Minimum t of the log-linear weekly slope over the adoption trend's window."""
    trend_z: float = 3.0
    """Minimum size of a trend's total log change in units of the account's own robust
    week-over-week variability (MAD of past weekly log changes): growth a noisy account shows
    every other month is not a trend."""
    trend_test_weeks: int = 8
    """Weekly totals (ending on the partition day) both trends are tested over (Mann-Kendall):
    the contract asks for a sustained trend across weeks. A decline is judged on this window
    alone (noise seldom lets usage fall week after week, however steadily it declines), and
    measured from its first two weeks to its last two; a rise needs the contract's consecutive
    rises too, and this test keeps a dip's recovery and a last week's burst from passing for
    adoption."""
    trend_alpha: float = 0.01
    """One-sided significance of the Mann-Kendall test across the `trend_test_weeks` weekly
    totals (8 weeks: at least 24 of the 28 week pairs lower (higher) later, ties aside)."""
    decline_z: float = 3.0
    """Minimum fall of a declining_usage's last two weeks below its first two, in units of the
    account's own robust week-over-week variability (log scale): a slow wander of a noisy
    account that happens to order its weeks is not a decline."""
    min_shape_shift: float = 0.12
    """Absolute change in the weekend share of weekly usage that counts as a new weekly shape."""
    shape_z: float = 5.0
    """...and the change in share must be this many binomial standard errors."""
    min_weekly_volume: float = 20.0
    """Minimum weekly volume for a trend to be judged."""

    def __post_init__(self) -> None:
        unknown = set(self.population_cohorts) - COHORT_COLUMNS
        if unknown:
            raise ValueError(
                f"usage.population_cohorts={list(self.population_cohorts)}: "
                f"{sorted(unknown)} not among the customers' columns {sorted(COHORT_COLUMNS)}"
            )
        if not 0 <= self.young_drop < 1:
            raise ValueError(
                f"usage.young_drop={self.young_drop}: a share of the best week in [0, 1) "
                "(0 turns the young series' rule off)"
            )
        if self.trend_weeks < 3:
            raise ValueError(
                f"usage.trend_weeks={self.trend_weeks}: at least 3 weeks are needed (a new "
                "pattern compares the last three weeks; the trend's slope needs a standard error)"
            )
        if not 4 <= self.trend_test_weeks <= 16:
            raise ValueError(
                f"usage.trend_test_weeks={self.trend_test_weeks}: between 4 (a trend test needs "
                "more pairs of weeks than that) and 16 (with a look-back of 16 weeks and more)"
            )
        if not 0 < self.trend_alpha < 0.5:
            raise ValueError(f"usage.trend_alpha={self.trend_alpha}: a significance in (0, 0.5)")
        pairs = self.trend_test_weeks * (self.trend_test_weeks - 1) // 2
        if mann_kendall_threshold(self.trend_test_weeks, self.trend_alpha) > pairs:
            raise ValueError(
                f"usage.trend_test_weeks={self.trend_test_weeks}: too few weeks for any trend to "
                f"be significant at usage.trend_alpha={self.trend_alpha}"
            )


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
            "timing": 7,
        }
    )
    """Days after its pattern was last seen that an insight expires, per category. While open,
    a re-detection continues the insight (one open insight per fingerprint). A timing insight
    is a moment that lasts while its rule holds (a QBR due until the renewal or the QBR, a
    promoter's two weeks): its week bridges a missed daily run, not a month past the renewal."""
    novelty_days: int = 30
    """A pattern raised again within this many days of its previous episode's end is less new
    (novelty 0.5 at once, rising linearly to 1 at this many days)."""
    daily_cap: int = 10
    """Insights pushed per CSM per day (the rest are kept, not pushed)."""
    push_min_score: float = 0.40
    """Only insights scoring at least this (medium priority and up) are pushed; the rest stay in
    the feed. This is where learned preferences cut noise: a type a CSM keeps dismissing falls
    below it. Critical risks are pushed whatever their score."""
    critical_types: tuple[str, ...] = ("champion_left", "silent_account")
    """Types that are always critical: personalisation never suppresses them."""
    critical_severity: float = 0.7
    """Any risk-category insight at or above this severity is critical."""
    critical_drop_severity: float = 0.6
    """A usage_drop at or above this severity is critical: the value fell to about 44% of its
    expected level or less (severity 1 = a quarter)."""
    critical_preference_floor: float = 0.5
    """Critical insights never get a preference below this (neutral): feedback may raise them,
    never bury them."""
    preference_strength: float = 5.0
    """Pseudo-events of the prior behind a CSM's preference: after about this many judgements
    of a type, the CSM's own feedback weighs as much as the team's."""
    team_prior_strength: float = 10.0
    """Pseudo-events shrinking the team's rate for one type or category toward the team's rate
    over all types (so a type with little feedback is not judged on a handful of clicks)."""
    already_knew_weight: float = 0.5
    """A dismissal as already_knew (or without a reason) counts as this much of a negative:
    right, but not news."""
    quality_window_days: int = 28
    """The rolling window of the quality metrics (relevance and action rates)."""
    echo_factor: float = 0.5
    """An echo (a new insight repeating what an open insight on the same account says, see
    lib/ranking/echoes.py) scores this share of its score: kept and shown, ranked below news.
    1 turns echoes off."""

    def __post_init__(self) -> None:
        if not 0 < self.echo_factor <= 1:
            raise ValueError(f"ranking.echo_factor={self.echo_factor}: a share in (0, 1]")


@dataclass(frozen=True)
class EngagementSettings:
    """going_dark, increased_activity, stakeholder_shift (meetings, communications, contacts)."""

    history_days: int = 365
    """Meetings and communications read before the first partition day."""
    cadence_days: int = 180
    """Window of past gaps between two-way contacts that defines the account's own cadence."""
    min_gaps: int = 4
    """Gaps needed before an account's cadence is trusted."""
    dark_multiplier: float = 3.0
    """Silence longer than this many times the account's median gap is 'going dark'."""
    long_gap_multiplier: float = 1.5
    """...and longer than this many times the account's own long gaps (95th percentile)."""
    min_dark_days: int = 21
    """...and never shorter than this (three weeks without any two-way contact)."""
    dark_alpha: float = 0.005
    """...and rarer than this for contact at the account's own rate, as a Poisson process
    (silence of ln(1/alpha) mean gaps: 4.6 at 1%). The 95th percentile of a dozen gaps is
    seldom their true 95th; their mean is steadier, so this keeps a chance silence of an
    account in touch at random from reading as going dark."""
    thread_gap_days: int = 2
    """Contact days at most this far apart are one conversation (a thread of messages, a meeting
    and its follow-up): the rare-silence term of going_dark reads the waits between
    conversations, so contact in threads is not judged by the day-to-day gaps inside them."""
    population_sds: float = 2.0
    """Everyone's quiet shortens a silence (`contact_population`: a holiday season, a table that
    stopped arriving) only beyond chance: the fixed sample's contacts since the last contact,
    this many Poisson sds above their count, still below the count their usual pace expects."""
    activity_window_days: int = 14
    activity_baseline_days: int = 180
    activity_ratio: float = 3.0
    """Recent inbound + meeting rate must be this many times the account's own baseline rate."""
    activity_g: float = 10.83
    """Poisson likelihood-ratio statistic (chi-square, 1 df): 10.83 is p = 0.001."""
    min_baseline_days: int = 60
    """Days of the baseline on record (after the source's first day and the contract start)
    an account needs before its activity is compared with it."""
    min_activity_events: int = 5
    stakeholder_window_days: int = 14
    """A new senior contact stays a stakeholder shift for this many days."""
    onboarding_days: int = 45
    """Contacts that start within this many days of contract_start are onboarding, not a shift."""
    senior_roles: tuple[str, ...] = ("executive_sponsor", "decision_maker", "champion")

    def __post_init__(self) -> None:
        if not 0 < self.dark_alpha < 1:
            raise ValueError(f"engagement.dark_alpha={self.dark_alpha}: a probability in (0, 1)")


@dataclass(frozen=True)
class RiskSettings:
    """silent_account, champion_left, health_drop, support_surge, detractor_nps."""

    silent_days: int = 14
    """No usage and no two-way contact (a meeting held, an inbound message) for this many days:
    a CSM's own unanswered emails are not the account's activity."""
    level_metrics: tuple[str, ...] = ("seats_used",)
    """Usage metrics that measure a level held (seats in use, storage), not activity: above 0
    every day while nobody uses the product, so they do not count against silence. The
    contract's `seats_used` always; others are recognised by their behaviour (`level_change`)
    or named here in the run config (`storage_gb`)."""
    level_change: float = 0.02
    """A metric whose median account moves less than this from day to day (mean absolute change
    of log1p(value) over 28 days, ~2%) is a level, not activity: seats and storage change by a
    seat or a file now and then, while activity counts move 10% or more daily. 0 = only
    `level_metrics`."""
    min_level_accounts: int = 20
    """Accounts with usage of a metric needed to judge whether it is a level."""
    champion_window_days: int = 14
    champion_roles: tuple[str, ...] = ("champion", "executive_sponsor")
    health_baseline_days: int = 28
    health_gap_days: int = 7
    """The baseline ends this many days before D, so a drop within the week is compared with
    the level before it."""
    health_drop_points: float = 15.0
    health_noise_k: float = 3.0
    """The drop must also exceed this many robust sds of the account's own health noise."""
    support_window_days: int = 14
    support_baseline_days: int = 180
    support_ratio: float = 3.0
    support_g: float = 10.83
    min_support_weight: float = 4.0
    min_support_baseline_days: int = 60
    """Days of the ticket baseline on record (after the source's first day and the contract
    start) an account needs before a surge is judged against it."""
    population_sds: float = 2.0
    """Everyone's tickets (`ticket_population`: a fixed sample of all accounts) raise an
    account's expected count only beyond chance: this many Poisson sds below their count, still
    above the count their usual expects."""
    min_support_tickets: int = 3
    """The likelihood-ratio test runs on ticket counts (weights would fake precision); at least
    this many tickets in the window."""
    priority_weights: dict[str, float] = field(
        default_factory=lambda: {"low": 0.5, "normal": 1.0, "high": 2.0, "urgent": 4.0}
    )
    urgent_window_days: int = 3
    """An urgent ticket opened this recently is a surge on its own (an escalation)..."""
    urgent_alpha: float = 0.05
    """...when that many urgent tickets in the window would be rarer than this at the account's
    own urgent rate over the baseline days (Poisson tail): one is an escalation for an account
    that files a few a year, not for one that files one every few weeks."""
    nps_window_days: int = 14
    detractor_max_score: float = 6.0
    role_weights: dict[str, float] = field(
        default_factory=lambda: {
            "executive_sponsor": 1.0,
            "decision_maker": 0.9,
            "champion": 0.9,
            "admin": 0.6,
            "user": 0.4,
        }
    )


@dataclass(frozen=True)
class OpportunitySettings:
    """entitlement_limit, case_study_candidate, referral_candidate."""

    entitlement_ratio: float = 0.9
    limit_days: int = 3
    """Days of the last 7 the metric must reach entitlement_ratio of its entitlement on (the
    3rd-highest day of the week): one busy day is not a limit reached, and a weekday-only
    account that hits it every working day reaches it on 5."""
    projection_weeks: int = 8
    """Weeks of history behind the 'on course to exceed before renewal' projection."""
    min_projection_ratio: float = 0.8
    """Only accounts already at this share of their entitlement are projected."""
    projection_horizon_days: int = 90
    """...and only a crossing projected within this many days (and before renewal) counts."""
    promoter_min_score: float = 9.0
    promoter_window_days: int = 14
    growth_weeks: int = 12
    """Usage growth compares the last 4 weeks with the 4 weeks ending this many weeks ago."""
    case_study_min_growth: float = 0.08
    case_study_min_health: float = 75.0
    case_study_min_sentiment: float = 0.4
    referral_min_growth: float = -0.05
    referral_min_health: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.limit_days <= 7:
            raise ValueError(f"opportunity.limit_days={self.limit_days}: days of a week, 1 to 7")


@dataclass(frozen=True)
class BenchmarkSettings:
    """outperforming / underperforming against a peer cohort."""

    cohort: tuple[str, ...] = ("segment", "industry")
    min_cohort: int = 10
    """Smaller cohorts fall back to the segment alone; smaller still, no benchmark."""
    top_quantile: float = 0.9
    bottom_quantile: float = 0.1
    min_effect: float = 0.25
    """...and the account's value must be this far from the peer median (top: 1.25x or more;
    bottom: 1/1.25 = 0.8x or less). A decile always holds a tenth of a cohort: in a cohort of
    similar accounts its edge is a few percent from the median, no gap a CSM could act on."""
    window_days: int = 28
    onboarding_days: int = 45
    """Days after contract_start an account is still ramping up (as for stakeholder shifts):
    not benchmarked, and no one's peer."""
    metric: str = "dau"
    """Normalised per entitled seat (or per seat used where no entitlement exists)."""


@dataclass(frozen=True)
class TimingSettings:
    """qbr_due and outreach_window."""

    qbr_renewal_days: int = 120
    qbr_lookback_days: int = 90
    pre_renewal_from_days: int = 120
    pre_renewal_to_days: int = 150
    promoter_window_days: int = 7


@dataclass(frozen=True)
class OutcomeSettings:
    """Historical base rates behind each insight's 'so what'."""

    history_months: int = 18
    horizon_days: int = 90
    min_accounts: int = 10
    """Below this many comparable accounts the so-what says the sample is too small."""


@dataclass(frozen=True)
class TeamSettings:
    """Cross-account patterns (lib/team.py): one insight type rising across the accounts of one
    segment, industry, plan, region or CSM book, judged against how often it happens by chance."""

    window_days: int = 14
    """An account shows a pattern when its type (and subject) was detected on any of the last
    this many days: "this fortnight", long enough for accounts hit by one cause to line up."""
    dimensions: tuple[str, ...] = ("segment", "industry", "plan", "region", "csm_user_id")
    """Account attributes that define the groups tested (csm_user_id = a CSM's book)."""
    min_accounts: int = 3
    """A pattern needs at least this many accounts: two can be a coincidence however rare."""
    min_lift: float = 1.5
    """...and at least this many times the accounts expected at the base rate: in a group of
    thousands a tiny excess is "significant" without being worth a leader's time."""
    min_rise: float = 1.5
    """...and at least this many times (1 + the group's accounts showing it in the window
    before): a standing trait of a group (small accounts always open more tickets) is its base
    rate, not news; a rise is."""
    test: str = "hypergeometric"
    """How a group's count is judged against the base rate k / N across all N accounts:
    "hypergeometric" (exact: of the k accounts showing the pattern, how likely are x or more
    to fall in a group of n by chance - Fisher's one-sided test) or "binomial" (X ~ Bin(n, k/N),
    its approximation, conservative: the planted pattern's own accounts raise p). On the
    tests' generated accounts (8 of 40 fintech accounts with the same drop against ~1.5%
    elsewhere) the binomial missed 29 plants in 100, the exact test 2; neither raised anything
    on 100 matched random scatters."""
    fdr: float = 0.05
    """Benjamini-Hochberg false discovery rate over every (pattern, group) tested on a day."""
    min_group_accounts: int = 5
    """Groups smaller than this are not tested (a book of 3 accounts says nothing)."""
    overlap: float = 0.6
    """A pattern with at least this share of its accounts in a stronger pattern raised the same
    day is left out: "smb" and "starter plan" are often the same accounts."""
    excluded_types: tuple[str, ...] = ("qbr_due", "outreach_window")
    """Calendar-driven types: many renewals in one segment is a schedule, not a pattern."""
    rollup_window_days: int = 28
    """Trailing days of feedback and actions behind the rollups' relevance and action rates and
    median time to action (the ranking's quality window)."""
    renewal_horizon_days: int = 90
    """Member accounts renewing within this many days are named in the narrative."""


LOOKBACK_MARGIN_DAYS = 7
"""Days the look-back holds beyond the usage statistics' reach (`usage_reach_days`): a day's
history then begins where a range's does unless the series had no row for longer than that
(a pause), which a range run judges as that day's run does (`_LookBackCut`), at a cost."""


@dataclass(frozen=True)
class Settings:
    """All thresholds. `Settings.from_dict` reads the nested dict of Dagster run config."""

    lookback_days: int = 112
    """Source history read before the first partition day: enough for every rolling window
    (8 weeks of same-weekday medians + 28 days of residuals; 6 trend weeks + 8 weeks of weekly
    variability), so a day's result never depends on how long the run's range is."""
    usage: UsageSettings = field(default_factory=UsageSettings)
    engagement: EngagementSettings = field(default_factory=EngagementSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    opportunity: OpportunitySettings = field(default_factory=OpportunitySettings)
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    timing: TimingSettings = field(default_factory=TimingSettings)
    outcomes: OutcomeSettings = field(default_factory=OutcomeSettings)
    ranking: RankingSettings = field(default_factory=RankingSettings)
    team: TeamSettings = field(default_factory=TeamSettings)

    def __post_init__(self) -> None:
        from insight_pipeline.lib.detectors.usage import usage_reach_days  # (imports settings)

        growth = 7 * self.opportunity.growth_weeks
        if not 28 <= growth <= self.lookback_days:
            raise ValueError(
                f"opportunity.growth_weeks={self.opportunity.growth_weeks}: from 4 (the weeks "
                "compared must not lie after the day) to lookback_days / 7 "
                f"({self.lookback_days // 7}: a day's look-back must hold them)"
            )
        reach = usage_reach_days(self.usage)
        if self.lookback_days < reach + LOOKBACK_MARGIN_DAYS:
            raise ValueError(
                f"lookback_days={self.lookback_days}: the usage settings read {reach} days "
                "before a partition day (usage.baseline_weeks, scale_days, persistence_days, "
                "trend_weeks, trend_test_weeks), and the look-back must hold a week more, so "
                "that a weekend or a week without rows never moves where a day's history "
                f"begins. Set lookback_days to {reach + LOOKBACK_MARGIN_DAYS} or more."
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Settings:
        """Build from nested overrides, failing loudly on unknown keys."""
        raw = dict(raw or {})
        nested = {
            "usage": UsageSettings,
            "engagement": EngagementSettings,
            "risk": RiskSettings,
            "opportunity": OpportunitySettings,
            "benchmark": BenchmarkSettings,
            "timing": TimingSettings,
            "outcomes": OutcomeSettings,
            "ranking": RankingSettings,
            "team": TeamSettings,
        }
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
